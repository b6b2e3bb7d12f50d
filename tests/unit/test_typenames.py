"""teredo.core.typenames: typing's run-time names without typing, and what they do there."""

from __future__ import annotations

from typing import Any

from teredo.core import typenames
from teredo.core.record import record
from testsupport import imported_after

names: Any = typenames  # the run-time stand-ins, which mypy reads as typing's own


def test_the_stand_ins_do_what_the_interpreter_needs() -> None:
    T = names.TypeVar("T")

    class Box(names.Generic[T]):  # type: ignore[misc]
        pass

    class Shape(names.Protocol):  # type: ignore[misc]
        pass

    @record
    class Item(names.Generic[T]):  # type: ignore[misc]
        value: int

    assert Box[int] is Box and isinstance(Box(), Box)  # type: ignore[misc]
    assert Item(3) == Item(value=3) and Item[str] is Item  # type: ignore[misc]
    assert isinstance(Shape(), Shape)
    assert names.cast(int, "x") == "x"
    function = lambda: 1  # noqa: E731
    assert names.overload(function) is function


def test_importing_them_imports_no_typing() -> None:
    assert "typing" not in imported_after("import teredo.core.typenames, teredo.core.peers")
