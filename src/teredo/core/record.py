"""`record`: what ``dataclass(frozen=True, slots=True)`` gives a class, without dataclasses.

Importing dataclasses costs a command inspect, ast, dis and tokenize (~8 ms here), and each
class it builds compiles its methods from generated source (~0.36 ms and ~11 KiB each). The
configuration (`teredo.core.config`) and the small records on the daemons' start path (netlink
answers, the data path's settings, the service options...) are records instead: fields by
position or keyword, value equality and hash, a repr (leaving out the names in a class's
``__hidden__``, e.g. a secret), equality and hash leaving out those in ``__uncompared__``
(dataclasses' ``compare=False``), ``FrozenInstanceError`` on assignment, pickling, and `replace`
as `dataclasses.replace`. The protocol core's parsed structures are records too (`wire`,
`trailers`, `qualification`...); the generic ``__init__`` costs ~3 times dataclasses' generated
one, so those built per datagram (`wire.TeredoPacket`...) write their own, which a record keeps.
mypy reads `record` as a dataclass (`dataclass_transform`); typing's
names are for mypy only. Fields are not inherited: a record's fields are its own annotations.
"""

from __future__ import annotations

from operator import attrgetter

TYPE_CHECKING = False  # typing's flag without importing typing (ms a one-shot command pays)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar, dataclass_transform

    R = TypeVar("R")
else:

    def dataclass_transform(**_: object) -> object:
        return lambda function: function


__all__ = ["record", "replace"]

_MISSING = object()


@dataclass_transform(frozen_default=True)
def record(cls: type[R]) -> type[R]:
    """`cls` as a frozen, slotted record of its annotated fields (no inheritance of fields)."""
    names = tuple(cls.__dict__.get("__annotations__", {}))  # noqa: RUF063 (no inspect)
    hidden = frozenset(cls.__dict__.get("__hidden__", ()))
    uncompared = frozenset(cls.__dict__.get("__uncompared__", ()))  # dataclasses' compare=False
    compared = tuple(name for name in names if name not in uncompared)
    defaults = {name: cls.__dict__[name] for name in names if name in cls.__dict__}
    namespace = {
        key: value
        for key, value in cls.__dict__.items()
        if key not in defaults and key not in ("__dict__", "__weakref__")
    }
    required = [name for name in names if name not in defaults]
    if any(names.index(name) > names.index(first) for first in defaults for name in required):
        raise TypeError(f"{cls.__name__}: a field without a default follows one with a default")

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if len(args) > len(names):
            raise TypeError(f"{cls.__name__}() takes {len(names)} positional arguments")
        values = dict(zip(names, args, strict=False))
        for name, value in kwargs.items():
            if name not in names:
                raise TypeError(f"{cls.__name__}() got an unexpected keyword argument {name!r}")
            if name in values:
                raise TypeError(f"{cls.__name__}() got multiple values for argument {name!r}")
            values[name] = value
        for name in names:
            value = values.get(name, _MISSING)
            if value is _MISSING:
                value = defaults.get(name, _MISSING)
                if value is _MISSING:
                    raise TypeError(f"{cls.__name__}() missing required argument: {name!r}")
            object.__setattr__(self, name, value)

    def getter(fields: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
        if len(fields) > 1:
            return attrgetter(*fields)  # a tuple of the fields, in C
        return lambda self: tuple(getattr(self, name) for name in fields)

    _values, _compared = getter(names), getter(compared)

    def __repr__(self: Any) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in names if name not in hidden)
        return f"{type(self).__qualname__}({shown})"

    def __eq__(self: Any, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return bool(_compared(self) == _compared(other))

    def __hash__(self: Any) -> int:
        return hash(_compared(self))

    def __setattr__(self: Any, name: str, value: object) -> None:
        _refuse(name)

    def __delattr__(self: Any, name: str) -> None:
        _refuse(name)

    def __reduce__(self: Any) -> tuple[Any, ...]:
        return (type(self), _values(self))

    namespace.update(__slots__=names, __match_args__=names, __record_fields__=names)
    methods = {
        "__init__": __init__,
        "__repr__": __repr__,
        "__eq__": __eq__,
        "__hash__": __hash__,
        "__setattr__": __setattr__,
        "__delattr__": __delattr__,
        "__reduce__": __reduce__,
    }
    for method, function in methods.items():
        if method not in namespace:  # the class's own (a repr hiding a secret) stays
            function.__qualname__ = f"{cls.__qualname__}.{method}"
            namespace[method] = function
    metaclass: Any = type(cls)
    made: type[R] = metaclass(cls.__name__, cls.__bases__, namespace)
    made.__qualname__ = cls.__qualname__
    return made


def _refuse(name: str) -> None:
    from dataclasses import FrozenInstanceError  # only on a bug: assigning to a record

    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def replace(obj: R, **changes: Any) -> R:
    """A copy of the record `obj` (a configuration, a line...) with `changes`, as
    `dataclasses.replace` does."""
    names: tuple[str, ...] = type(obj).__record_fields__  # type: ignore[attr-defined]
    values = {name: getattr(obj, name) for name in names}
    values.update(changes)
    return type(obj)(**values)
