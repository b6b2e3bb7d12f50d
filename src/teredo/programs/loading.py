"""Loading a daemon's configuration: the file, the command-line override, and what SIGHUP keeps.

Every daemon reads its file the same way (Miredo's files, unchanged, parsed by
`teredo.core.config`): the file from ``-c FILE`` or the role's default path; when there is no
default file and the command line names the server (client) or the address (server), the
defaults plus that argument; otherwise one sentence saying what to give. ``-u USER`` overrides
``User`` (`with_command_line`). Logging goes to syslog when the daemon detached (facility
``SyslogFacility``, default daemon, as Miredo), and in the foreground (``-f``) to stderr unless
the file sets ``SyslogFacility``. On SIGHUP the daemon loads again and keeps the settings that
need a restart (`keep_restart_only`, which says so in the log).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from teredo.core.config import (
    ClientConfig,
    Config,
    RelayConfig,
    ServerConfig,
    tokenize_config,
)
from teredo.core.errors import UsageError
from teredo.core.record import record, replace
from teredo.core.typenames import Generic, TypeVar  # typing's, without importing typing
from teredo.programs.config_file import load_config as load_config  # re-exported
from teredo.programs.config_file import read_config_text as read_config_text
from teredo.programs.config_file import role_for as role_for

TYPE_CHECKING = False  # typing's flag without importing typing (ms a launch pays)
if TYPE_CHECKING:
    import logging
    from typing import Final


def _log() -> logging.Logger:
    """This module's logger, imported on first use: `teredo checkconf` needs no logging."""
    import logging

    return logging.getLogger(__name__)


NO_FILE: Final = "<command line>"  # the source named in messages when no file was read

ConfigT = TypeVar("ConfigT", bound=Config)


@record
class Loaded(Generic[ConfigT]):
    """A parsed configuration and how it was obtained."""

    config: ConfigT
    path: str | None  # None: no file, the defaults plus the command-line argument
    syslog: str | None  # the facility when the file sets SyslogFacility, else None
    argument: str | None  # the command line's SERVER or ADDRESS, kept for reloads
    user: str | None = None  # -u USER, which overrides the file's User
    detached: bool = False  # no -f: logs go to syslog even without SyslogFacility

    @property
    def log_facility(self) -> str | None:
        """Where the daemon logs: a syslog facility, or None for stderr."""
        return self.config.syslog_facility if self.detached else self.syslog

    @property
    def stderr_hint(self) -> str:
        """How to log to stderr instead, for the message when syslog is missing."""
        if self.detached:
            return "run in the foreground with -f to log to stderr"
        return "remove SyslogFacility and run with -f to log to stderr"


def with_command_line(
    loaded: Loaded[ConfigT], *, user: str | None, detached: bool
) -> Loaded[ConfigT]:
    """`loaded` with the command line's ``-u USER`` and whether it detached (no ``-f``)."""
    config = loaded.config if user is None else replace(loaded.config, user=user)
    return replace(loaded, config=config, user=user, detached=detached)


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


# Restart-only in every role: they are bound or set up once (`teredo.programs.observers`).
OBSERVERS_RESTART_ONLY: Final = {
    "control_socket": "ControlSocket",
    "control_socket_group": "ControlSocketGroup",
    "metrics_address": "MetricsAddress",
}


def _setup_logging(loaded: Loaded[ConfigT]) -> None:
    from teredo.adapters.daemon import setup_logging

    config = loaded.config
    role = {ClientConfig: "client", RelayConfig: "relay", ServerConfig: "server"}[type(config)]
    setup_logging(
        0,
        syslog_facility=loaded.log_facility,
        stderr_hint=loaded.stderr_hint,
        log_format=config.log_format,
        role=role,
    )


def start_logging(loaded: Loaded[ConfigT], *, warnings: bool = True) -> None:
    """A daemon's first words: logging where `loaded.log_facility` says (text, or JSON lines with
    LogFormat json), then the file's warnings (not when only checking, before detaching, that
    syslog is there)."""
    _setup_logging(loaded)
    if warnings:
        for warning in loaded.config.warnings:
            _log().warning("%s", warning)


def reload_config(
    current: Loaded[ConfigT],
    load_again: Callable[[str | None, str | None], Loaded[ConfigT]],
    restart_only: Mapping[str, str],
) -> Loaded[ConfigT]:
    """SIGHUP: the configuration read again (its warnings logged), with the settings in
    `restart_only` and `OBSERVERS_RESTART_ONLY` kept from `current` (`keep_restart_only`), and
    logging moved to syslog or stderr, text or JSON, if SyslogFacility or LogFormat changed.
    The daemon applies the rest."""
    loaded = with_command_line(
        load_again(current.path, current.argument), user=current.user, detached=current.detached
    )
    for warning in loaded.config.warnings:
        _log().warning("%s", warning)
    kept = keep_restart_only(
        current.config, loaded.config, {**OBSERVERS_RESTART_ONLY, **restart_only}
    )
    reloaded = replace(loaded, config=kept)
    if (loaded.log_facility, kept.log_format) != (current.log_facility, current.config.log_format):
        _setup_logging(reloaded)
    return reloaded


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
    return replace(new, **kept)
