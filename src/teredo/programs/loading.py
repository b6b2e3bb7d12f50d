"""Loading a daemon's configuration: the file, the command-line override, and what SIGHUP keeps.

Every daemon reads its file the same way (Miredo's files, unchanged, parsed by
`teredo.core.config`): the file from ``-c FILE`` or the role's default path; when there is no
default file and the command line names the server (client) or the address (server), the
defaults plus that argument; otherwise one sentence saying what to give. Logging goes to syslog
only when the file sets ``SyslogFacility`` (else stderr). On SIGHUP the daemon loads again and
keeps the settings that need a restart (`keep_restart_only`, which says so in the log).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Generic, TypeVar

from teredo.core.config import MAX_CONFIG_BYTES, Config, parse_config, tokenize_config
from teredo.core.errors import UsageError

if TYPE_CHECKING:
    import logging


def _log() -> logging.Logger:
    """This module's logger, imported on first use: `teredo checkconf` needs no logging."""
    import logging

    return logging.getLogger(__name__)


NO_FILE: Final = "<command line>"  # the source named in messages when no file was read

ConfigT = TypeVar("ConfigT", bound=Config)


@dataclass(frozen=True, slots=True)
class Loaded(Generic[ConfigT]):
    """A parsed configuration and how it was obtained."""

    config: ConfigT
    path: str | None  # None: no file, the defaults plus the command-line argument
    syslog: str | None  # the facility when the file sets SyslogFacility, else None (stderr)
    argument: str | None  # the command line's SERVER or ADDRESS, kept for reloads


def read_config_text(path: str) -> str:
    """The text of a configuration file; every failure is one `UsageError` sentence."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as error:
        reason = error.strerror or str(error)
        raise UsageError(f"cannot read {path}: {reason}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise UsageError(f"{path} is larger than 1 MiB, so it is not a Teredo configuration file")
    if b"\0" in data:
        raise UsageError(f"{path} contains NUL bytes, so it is not a Teredo configuration file")
    # Miredo reads bytes: non-UTF-8 bytes (a Latin-1 comment) must not stop a file from loading.
    return data.decode("utf-8", "surrogateescape")


def load_config(path: str) -> Config:
    """Read and parse the file at `path` for the role it configures (`teredo checkconf`)."""
    return parse_config(read_config_text(path), None, path)


def load(
    config_path: str | None,
    argument: str | None,
    *,
    default_path: str,
    parse: Callable[[str, str, str | None], ConfigT],
    missing: str,
) -> Loaded[ConfigT]:
    """Read the configuration the way `teredo ROLE [-c FILE] [ARGUMENT]` does.

    Without ``-c`` the default file is read; when it does not exist and `argument` is given,
    the defaults plus the argument are used (Miredo needs a file; this spares one for a quick
    start); with neither, `UsageError(missing)`. `parse(text, source, argument)` parses.
    """
    path: str | None = config_path or default_path
    if config_path is None and not os.path.exists(default_path):
        if argument is None:
            raise UsageError(missing)
        path = None
    text = read_config_text(path) if path is not None else ""
    config = parse(text, path or NO_FILE, argument)
    explicit = {line.key for line in tokenize_config(text)}
    syslog = config.syslog_facility if "syslogfacility" in explicit else None
    return Loaded(config, path, syslog, argument)


def start_logging(loaded: Loaded[ConfigT]) -> None:
    """A daemon's first words: logging where the file asks (syslog with SyslogFacility, else
    stderr), then the file's warnings."""
    from teredo.adapters.daemon import setup_logging

    setup_logging(0, syslog_facility=loaded.syslog)
    for warning in loaded.config.warnings:
        _log().warning("%s", warning)


def reload_config(
    current: Loaded[ConfigT],
    load_again: Callable[[str | None, str | None], Loaded[ConfigT]],
    restart_only: Mapping[str, str],
) -> Loaded[ConfigT]:
    """SIGHUP: the configuration read again (its warnings logged), with the settings in
    `restart_only` kept from `current` (`keep_restart_only`), and logging moved to syslog or
    stderr if the file's SyslogFacility changed. The daemon applies the rest."""
    from teredo.adapters.daemon import setup_logging

    loaded = load_again(current.path, current.argument)
    for warning in loaded.config.warnings:
        _log().warning("%s", warning)
    kept = keep_restart_only(current.config, loaded.config, restart_only)
    if loaded.syslog != current.syslog:
        setup_logging(0, syslog_facility=loaded.syslog)
    return dataclasses.replace(loaded, config=kept)


def keep_restart_only(old: ConfigT, new: ConfigT, restart_only: Mapping[str, str]) -> ConfigT:
    """For a SIGHUP reload: `new`, with the settings that need a restart kept from `old`.

    `restart_only` maps config attributes to their directive names; each one that changed is
    logged once ("takes effect at the next restart") rather than silently ignored.
    """
    kept = {}
    for attribute, directive in restart_only.items():
        before, after = getattr(old, attribute), getattr(new, attribute)
        if before != after:
            _log().warning("%s changed to %s: takes effect at the next restart", directive, after)
        kept[attribute] = before
    return dataclasses.replace(new, **kept)
