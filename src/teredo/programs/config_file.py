"""Reading a configuration file: its text, checked, and the role it is read for.

What `teredo checkconf` needs of `teredo.programs.loading`, without what a daemon needs
besides (the loaded configuration's record, logging, reloads): no dataclasses nor typing,
which were a quarter of the command's time.
"""

from __future__ import annotations

from teredo.core.config import (
    MAX_CONFIG_BYTES,
    Config,
    detect_role,
    parse_config,
    tokenize_config,
)
from teredo.core.errors import UsageError
from teredo.programs.bounded_file import read_bounded

TYPE_CHECKING = False  # typing's flag without importing typing (ms a one-shot command pays)
if TYPE_CHECKING:
    from teredo.core.config import Role


def read_config_text(path: str) -> str:
    """The text of a configuration file; every failure is one `UsageError` sentence."""
    data = read_bounded(
        path,
        MAX_CONFIG_BYTES,
        name=path,
        too_large=f"{path} is larger than 1 MiB, so it is not a Teredo configuration file",
    )
    if b"\0" in data:
        raise UsageError(f"{path} contains NUL bytes, so it is not a Teredo configuration file")
    # Miredo reads bytes: non-UTF-8 bytes (a Latin-1 comment) must not stop a file from loading.
    return data.decode("utf-8", "surrogateescape")


def load_config(path: str, role: Role | None = None) -> Config:
    """Read and parse the file at `path` (`teredo checkconf`) for the role it configures, or
    as `teredo ROLE` would read it (`role_for`)."""
    text = read_config_text(path)
    return parse_config(text, None if role is None else role_for(role, text, path), path)


def role_for(kind: Role, text: str, source: str) -> Role:
    """The role `teredo client` or `teredo relay` runs on `text`: the file's RelayType when it
    has one (as miredo does), else `kind`. A server file keeps `kind`: parsing it then says why
    it does not fit."""
    if kind == "server" or not any(line.key == "relaytype" for line in tokenize_config(text)):
        return kind
    role = detect_role(text, source)
    return kind if role == "server" else role


__all__ = ["load_config", "read_config_text", "role_for"]
