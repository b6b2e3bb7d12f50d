"""Reading a small file a person named (a configuration file, a key file): its bytes, at most
a bound of them, every failure one `UsageError` sentence that names the file."""

from __future__ import annotations

from teredo.core.errors import UsageError


def read_bounded(path: str, limit: int, *, name: str, too_large: str) -> bytes:
    """The bytes of the file at `path`; `name` says which file in the sentence when it cannot
    be read, `too_large` is the sentence when it holds more than `limit` bytes (it is read no
    further)."""
    try:
        with open(path, "rb") as file:
            data = file.read(limit + 1)
    except OSError as error:
        reason = error.strerror or str(error)
        raise UsageError(f"cannot read {name}: {reason}") from None
    if len(data) > limit:
        raise UsageError(too_large)
    return data


__all__ = ["read_bounded"]
