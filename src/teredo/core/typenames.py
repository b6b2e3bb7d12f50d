"""typing's names that a module needs at run time, without importing typing.

Importing typing costs a start ~1.5-3 ms (the client's launch, `teredo checkconf`), for names
that mean nothing once mypy has checked the code: a class that is generic (``Generic[T]``) or
a protocol, a `cast`, an `overload`. For mypy these are typing's own (the ``TYPE_CHECKING``
branch); at run time they are stand-ins that do what the interpreter needs of them and no
more: ``Generic[T]`` and ``Protocol`` are plain base classes, `TypeVar` gives its name, `cast`
its value, `overload` the function (the implementation, defined last, replaces it as with
typing's). A protocol is not checkable with isinstance here (typing's needs
``@runtime_checkable`` for that too). Modules whose typing names are all in annotations import
typing under ``TYPE_CHECKING`` instead.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing's flag without importing typing
if TYPE_CHECKING:
    from typing import Any, Generic, Protocol, TypeVar, cast, overload
else:

    class Generic:
        """``Generic[T]`` as a base class: subscripting gives the class itself."""

        __slots__ = ()

        def __class_getitem__(cls, _parameters: object) -> type:
            return cls

    class Protocol:
        """A protocol's base class: a plain one (the structure is mypy's to check)."""

        __slots__ = ()

    Any = object

    def TypeVar(name: str, *_constraints: object, **_options: object) -> str:
        return name

    def cast(_type: object, value: object) -> object:
        return value

    def overload(function: object) -> object:
        return function


__all__ = ["Any", "Generic", "Protocol", "TypeVar", "cast", "overload"]
