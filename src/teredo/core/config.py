"""Miredo-compatible configuration files: ``miredo.conf`` / ``miredo-server.conf`` -> records.

Syntax (miredo.conf(5))
-----------------------
One directive per line: a name, blanks, a value. Names are case-insensitive. Blank lines, lines
whose first non-blank character is ``#`` and surrounding blanks are ignored. A ``#`` word after
the value starts a comment (Miredo ignores everything after the value, so this is compatible).

Which program a file configures
-------------------------------
A file with ``ServerBindAddress`` configures a server (``miredo-server.conf``); otherwise
``RelayType`` decides between a client (``client``, the default, or ``autoclient``) and a relay
(``relay``, ``cone``, ``restricted`` or our ``host-specific``). `parse_config(text)` detects it;
`parse_client_config`, `parse_relay_config` and `parse_server_config` insist on one role.

Directives
----------
`DIRECTIVES` below is the one table of directives: roles, default, and a help text that is
also the source of teredo.conf(5) and of the README's directive tables
(``python -m teredo.docs.manpages`` regenerates them; a unit test fails when they are stale).

The default control socket is per instance: ``client-<InterfaceName>.sock`` and
``relay-<InterfaceName>.sock`` (two clients on two interfaces do not collide), ``server.sock``;
``teredo status`` finds the one that answers in /run/teredo, and lists them when there are several.

Compatibility with Miredo (observed with Miredo 1.2.6 and its miredo-checkconf)
-------------------------------------------------------------------------------
- Miredo's daemon logs "Superfluous directive X at line N" and carries on for an unknown
  directive, a directive the mode does not use (``Prefix`` in a client) and a repeated directive
  (the first one wins); it logs "Ignoring line N" for a name without a value. miredo-checkconf
  rejects such files. We do the same: the line becomes a `ConfigWarning` with ``ignored=True`` on
  the result (the first occurrence of a directive counts), and ``teredo checkconf`` fails on it.
  Our own directives are unknown to Miredo, so Miredo ignores them in the same way.
- Values Miredo rejects are errors here too. Values Miredo accepts but that cannot work are
  errors here at once, with the fix: ``InterfaceMTU`` below 1280 (the tunnel set-up fails) or
  above 65507 (RFC 4380 §5.1.2: the largest UDP payload), an interface name longer than the
  kernel's 15 bytes, a ``Prefix`` with bits set past /32, a multicast or link-local prefix, a
  non-global-unicast server address (a client never qualifies; set ``AllowPrivateAddresses yes``
  in a lab).
- Numbers are decimal. Miredo also reads C notation (``0x10``, and ``010`` meaning 8); we refuse
  those rather than read ``010`` differently. Addresses in ``BindAddress`` and
  ``ServerBindAddress*`` must be literal IPv4 addresses (Miredo resolves names there too).
- Extra words after a value are ignored with a warning, as Miredo ignores them silently.
- Hostnames are kept as strings and resolved when the client daemon starts (Miredo's checker
  resolves them; this module does no I/O). ``ServerAddress2`` defaults to the resolved primary + 1.
- Miredo's man page gives "miredo" as the default interface name, yet Miredo on Linux creates
  the kernel's ``tunN``; every shipped example sets ``InterfaceName teredo``, which is our default.
- The last line may lack a newline (Miredo rejects that as an "overly long line").

Errors raise `teredo.core.errors.UsageError` whose message is one sentence starting with
``FILE:LINE:`` (or ``FILE:`` for something missing), e.g.
``/etc/miredo/miredo.conf:7: InterfaceMTU must be between 1280 and 65507, not 900``.
This module is part of the sans-I/O core: it parses text; `teredo.programs.loading` reads files.

Its classes are `teredo.core.record.record`s (frozen, slotted, compared by value, as
``dataclass(frozen=True, slots=True)`` would make them, without dataclasses' import and
per-class compilation); `replace` is `dataclasses.replace` for them. Typing's names are for
mypy only. So `teredo checkconf` imports neither dataclasses nor typing: they were ~15 ms of
its 40.
"""

from __future__ import annotations

from enum import Enum
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from teredo.core.address import DEFAULT_MTU, LEGACY_TEREDO_PREFIX, TEREDO_PREFIX, is_global_ipv4
from teredo.core.errors import UsageError
from teredo.core.peers import DEFAULT_MAX_QUEUE_BYTES
from teredo.core.record import record

TYPE_CHECKING = False  # typing's flag without importing typing (ms a one-shot command pays)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import (
        Final,
        Literal,
        NoReturn,
        TypeAlias,
        TypedDict,
        TypeVar,
    )

    Role: TypeAlias = Literal["client", "relay", "server"]
    LogFormat: TypeAlias = Literal["text", "json"]
    T = TypeVar("T")

    class _Observability(TypedDict):
        control_socket_group: str | None
        metrics_address: MetricsAddress | None
        log_format: LogFormat


__all__ = [
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_SERVER_CONFIG_PATH",
    "DIRECTIVES",
    "ClientConfig",
    "Config",
    "ConfigLine",
    "ConfigWarning",
    "Directive",
    "LogFormat",
    "MetricsAddress",
    "RelayConfig",
    "RelayType",
    "Role",
    "ServerConfig",
    "default_control_socket",
    "detect_role",
    "parse_client_config",
    "parse_config",
    "parse_relay_config",
    "parse_server_config",
    "tokenize_config",
]

DEFAULT_CONFIG_PATH: Final = "/etc/miredo/miredo.conf"  # miredo(8), miredo-checkconf(8)
DEFAULT_SERVER_CONFIG_PATH: Final = "/etc/miredo/miredo-server.conf"  # miredo-server(8)

MIN_MTU: Final = 1280  # RFC 4380 §5.1.2, RFC 8200 §5: the IPv6 minimum link MTU
MAX_MTU: Final = 65507  # RFC 4380 §5.1.2: the largest UDP payload over IPv4
DEFAULT_INTERFACE_NAME: Final = "teredo"  # the name every Miredo example file sets
MAX_INTERFACE_NAME: Final = 15  # Linux IFNAMSIZ (16) minus the NUL
ANY_IPV4: Final = IPv4Address("0.0.0.0")
DEFAULT_SYSLOG_FACILITY: Final = "daemon"  # miredo.conf(5)
SYSLOG_FACILITIES: Final = frozenset(
    # the names Miredo 1.2.6 accepts (checked with miredo-checkconf)
    ["auth", "authpriv", "cron", "daemon", "ftp", "kern", "lpr", "mail", "news", "syslog"]
    + ["user", "uucp"]
    + [f"local{n}" for n in range(8)]
)
CONTROL_SOCKET_DIR: Final = "/run/teredo"
MAX_SOCKET_PATH: Final = 107  # Linux sockaddr_un.sun_path (108) minus the NUL
DEFAULT_USER: Final = "nobody"  # miredo(8): "By default, it runs as nobody"
DEFAULT_CLIENT_MAX_PEERS: Final = 1024  # Miredo's peer list bound
# A relay serves every Teredo client that talks to its native side: a million, at ~190 bytes
# each in the daemon (teredo.core.peers, benchmarks/peer_table.py) plus the kernel data path's
# map entry when it runs, and nothing is allocated before peers come; queued bytes are bounded
# for the whole table anyway.
DEFAULT_RELAY_MAX_PEERS: Final = 1 << 20
MAX_PEERS_LIMIT: Final = 1 << 24
MAX_QUEUE_LIMIT: Final = 1 << 20
DEFAULT_REFRESH_INTERVAL: Final = 30  # RFC 6081 §5.1.1 (and RFC 4380 §2.15): MUST default to 30 s
MAX_REFRESH_INTERVAL: Final = 3600
MAX_CONFIG_BYTES: Final = 1 << 20  # a configuration file is a few hundred bytes
# RateLimit: what one IPv4 address may make a server send per second (RFC 4380 §7.4.1:
# reflection); teredo.core.server explains the bound. Its RATE_LIMIT_PER_SECOND is the same
# number (a test checks it), written again so that reading a file does not import the server.
DEFAULT_RATE_LIMIT: Final = 100
MAX_RATE_LIMIT: Final = 1_000_000
LOG_FORMATS: Final = ("text", "json")
MAX_DRAIN_TIME: Final = 600
DEFAULT_DRAIN_TIME: Final = 2  # seconds: BGP and BFD move traffic well within it

# The lexer's and the value parsers' character classes, checked with sets rather than `re`: its
# import and these patterns' compilation were ~2 ms of every launch (README, Footprint).
# C isspace() without the newline, as Miredo splits lines: " \t\r\f\v", the last four as spaces.
_TABS_TO_SPACES: Final = str.maketrans("\t\r\f\v", "    ")
_DIGITS: Final = frozenset("0123456789")
_DOTTED_DIGITS: Final = frozenset("0123456789.")
_HEX_DOTS_AND_XS: Final = frozenset("0123456789abcdefABCDEF.xX")
_NAME_CHARACTERS: Final = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_"
)
_LABEL_CHARACTERS: Final = _NAME_CHARACTERS | {"-"}
_USER_CHARACTERS: Final = _NAME_CHARACTERS | {"-", "."}
_BOOLEANS: Final = {
    "yes": True,
    "true": True,
    "on": True,
    "1": True,
    "no": False,
    "false": False,
    "off": False,
    "0": False,
}
# RFC 4380 §5.2.4 excludes these from global unicast; even AllowPrivateAddresses cannot make
# them a usable unicast endpoint.
_NEVER_UNICAST: Final = (
    IPv4Network("0.0.0.0/8"),
    IPv4Network("224.0.0.0/4"),
    IPv4Network("255.255.255.255/32"),
)
_LINK_LOCAL_V6: Final = IPv6Network("fe80::/10")
_MULTICAST_V6: Final = IPv6Network("ff00::/8")


# --- the configuration ---------------------------------------------------------------------


@record
class MetricsAddress:
    """Where the Prometheus endpoint listens (``MetricsAddress``): an IP address and a port."""

    host: IPv4Address | IPv6Address
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if self.host.version == 6 else str(self.host)
        return f"{host}:{self.port}"


class RelayType(Enum):
    """What ``RelayType`` selects (miredo.conf(5)); `RelayConfig` holds one of the last three."""

    CLIENT = "client"
    CONE = "cone"  # a relay with public IPv4 (or a full-cone mapping); Miredo: relay == cone
    # Miredo's relay behind a restricted NAT (discouraged, see `_build_relay`). Ours runs it as a
    # cone relay: every relay sends direct bubbles besides the indirect ones (teredo.core.peering).
    RESTRICTED = "restricted"
    HOST_SPECIFIC = "host-specific"  # ours: RFC 4380 §5.4 "minimal relay" serving only this host


_RELAY_TYPES: Final = {
    "client": RelayType.CLIENT,
    "autoclient": RelayType.CLIENT,  # Miredo 1.1.0 removed it and kept the word as an alias
    "relay": RelayType.CONE,  # miredo.conf(5): "cone mode (relay also works)"
    "cone": RelayType.CONE,
    "restricted": RelayType.RESTRICTED,
    "host-specific": RelayType.HOST_SPECIFIC,
    "hostrelay": RelayType.HOST_SPECIFIC,
}
_RELAY_TYPE_WORDS: Final = "client, autoclient, relay, cone, restricted or host-specific"


@record
class ConfigLine:
    """One directive line as written: `tokenize_config`'s output."""

    line: int  # 1-based, counting newline characters as Miredo does
    name: str
    value: str | None  # None: the name stood alone on its line
    extra: str = ""  # words after the value (before any comment), joined by one space

    @property
    def key(self) -> str | None:
        """The case-folded name, or None when it cannot be a directive (not ASCII)."""
        return self.name.lower() if self.name.isascii() else None


@record
class ConfigWarning:
    """Something a person should know about a file that is still usable.

    ``ignored`` is True when a line has no effect (unknown, repeated, not for this role, no
    value): Miredo's daemon carries on past those lines, miredo-checkconf and ``teredo
    checkconf`` reject the file. Other warnings are advice.
    """

    source: str
    line: int
    message: str
    ignored: bool = True

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.message}"


@record
class ClientConfig:
    """A Teredo client (``RelayType client``). Addresses are `ipaddress` objects; hostnames stay
    strings for the client daemon to resolve. ``server_address2`` is None only when
    ``server_address`` is a hostname and no ``ServerAddress2`` was given: the daemon then uses the
    resolved address + 1."""

    __hidden__ = ("shared_secret",)  # not shown by repr

    server_address: IPv4Address | str
    server_address2: IPv4Address | str | None = None
    interface_name: str = DEFAULT_INTERFACE_NAME
    bind_address: IPv4Address = ANY_IPV4
    bind_port: int = 0
    syslog_facility: str = DEFAULT_SYSLOG_FACILITY
    control_socket: str | None = f"{CONTROL_SOCKET_DIR}/client-{DEFAULT_INTERFACE_NAME}.sock"
    control_socket_group: str | None = None
    metrics_address: MetricsAddress | None = None
    log_format: LogFormat = "text"
    user: str = DEFAULT_USER
    hook_script: str | None = None
    max_peers: int = DEFAULT_CLIENT_MAX_PEERS
    max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES
    refresh_interval: int = DEFAULT_REFRESH_INTERVAL
    allow_private_addresses: bool = False
    offload: bool = True  # TUN offloads and UDP GSO/GRO (teredo.programs.datapath)
    local_discovery: bool = False
    # RFC 6081 extensions the client may use (each SHOULD be implemented, RFC 6081 §3): on by
    # default, each can be turned off as Windows can.
    upnp: bool = True  # §3.2/§5.3 (and the UPnP mapping of §5.6)
    hairpinning: bool = True  # §3.5/§5.6, Alternate Address trailer
    server_load_reduction: bool = True  # §3.6/§5.7, Neighbor Discovery Option trailer
    port_preserving: bool = True  # §3.3/§5.4, Random Port trailer
    sequential_ports: bool = True  # §3.4/§5.5, the echo test that predicts the mapped port
    fallback_servers: tuple[IPv4Address | str, ...] = ()
    # Secure qualification (RFC 4380 §5.2.2): the identifier and the secret, given inline or
    # in a file the client daemon reads (`shared_secret_file`); None: nonce-only RSs.
    client_identifier: bytes | None = None
    shared_secret: bytes | None = None
    shared_secret_file: str | None = None
    source: str = "<config>"
    warnings: tuple[ConfigWarning, ...] = ()


@record
class RelayConfig:
    """A Teredo relay (``RelayType relay|cone|restricted``) or host-specific relay."""

    relay_type: RelayType = RelayType.CONE
    prefix: IPv6Network = TEREDO_PREFIX
    interface_mtu: int = DEFAULT_MTU
    interface_name: str = DEFAULT_INTERFACE_NAME
    bind_address: IPv4Address = ANY_IPV4
    bind_port: int = 0
    syslog_facility: str = DEFAULT_SYSLOG_FACILITY
    control_socket: str | None = f"{CONTROL_SOCKET_DIR}/relay-{DEFAULT_INTERFACE_NAME}.sock"
    control_socket_group: str | None = None
    metrics_address: MetricsAddress | None = None
    log_format: LogFormat = "text"
    user: str = DEFAULT_USER
    max_peers: int = DEFAULT_RELAY_MAX_PEERS
    max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES
    allow_private_addresses: bool = False
    offload: bool = True  # TUN offloads and UDP GSO/GRO (teredo.programs.datapath)
    drain_time: int = DEFAULT_DRAIN_TIME  # seconds relaying after withdrawing, on SIGTERM
    source: str = "<config>"
    warnings: tuple[ConfigWarning, ...] = ()

    @property
    def host_specific(self) -> bool:
        return self.relay_type is RelayType.HOST_SPECIFIC


@record
class ServerConfig:
    """A Teredo server (``miredo-server.conf``): two consecutive addresses, UDP port 3544."""

    server_bind_address: IPv4Address
    server_bind_address2: IPv4Address
    prefix: IPv6Network = TEREDO_PREFIX
    interface_mtu: int = DEFAULT_MTU  # the MTU advertised in Router Advertisements
    syslog_facility: str = DEFAULT_SYSLOG_FACILITY
    control_socket: str | None = f"{CONTROL_SOCKET_DIR}/server.sock"
    control_socket_group: str | None = None
    metrics_address: MetricsAddress | None = None
    log_format: LogFormat = "text"
    user: str = DEFAULT_USER
    allow_private_addresses: bool = False
    rate_limit: int = DEFAULT_RATE_LIMIT  # answers per second per IPv4 address; 0: no limit
    # Secure qualification (RFC 4380 §5.2.2): the clients' key file, read by the server daemon.
    client_key_file: str | None = None
    require_authentication: bool = False
    source: str = "<config>"
    warnings: tuple[ConfigWarning, ...] = ()


Config = ClientConfig | RelayConfig | ServerConfig


def default_control_socket(role: Role, interface: str = DEFAULT_INTERFACE_NAME) -> str:
    """The control socket a daemon listens on unless ``ControlSocket`` says else: one per
    instance, so that two clients on one host (two interfaces) do not collide."""
    if role == "server":
        return f"{CONTROL_SOCKET_DIR}/server.sock"
    return f"{CONTROL_SOCKET_DIR}/{role}-{interface}.sock"


# ---------------------------------------------------------------------------------------------
# Lexer


def made_of(text: str, characters: frozenset[str]) -> bool:
    """Whether `text` is one or more of `characters`."""
    return bool(text) and set(text) <= characters


def split_words(line: str) -> list[str]:
    """A line's words, split at runs of C isspace() blanks ([""] for a blank line)."""
    return [word for word in line.translate(_TABS_TO_SPACES).split(" ") if word] or [""]


def is_numeric_host(text: str) -> bool:
    """Digits and dots, or 0x and hex digits: what inet_aton might read as a number, which a
    hostname must not look like ([0-9.]+|0[xX][0-9a-fA-F.xX]*)."""
    if text[:2] in ("0x", "0X"):
        return set(text[2:]) <= _HEX_DOTS_AND_XS
    return made_of(text, _DOTTED_DIGITS)


def is_host_label(label: str) -> bool:
    """One label of a hostname: 1-63 letters, digits, _ and -, not starting or ending with -."""
    return (
        len(label) <= 63 and made_of(label, _LABEL_CHARACTERS) and "-" not in (label[0], label[-1])
    )


def is_user_name(text: str) -> bool:
    """A user or group name as useradd takes it: a letter, digit or _, then up to 30 of those,
    dots and dashes, and a final $ allowed (a Samba machine account)."""
    name = text[:-1] if text.endswith("$") else text
    return len(name) <= 31 and made_of(name, _USER_CHARACTERS) and name[0] not in ".-"


def tokenize_config(text: str) -> list[ConfigLine]:
    """Split Miredo-syntax text into directive lines; comments and blank lines are dropped."""
    if text.startswith("\ufeff"):  # a byte-order mark left by an editor
        text = text[1:]
    lines: list[ConfigLine] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        words = split_words(raw)
        if not words[0] or words[0].startswith("#"):
            continue
        for index, word in enumerate(words):
            if word.startswith("#"):
                del words[index:]
                break
        name, *rest = words
        value = rest[0] if rest else None
        lines.append(ConfigLine(number, name, value, " ".join(rest[1:])))
    return lines


# ---------------------------------------------------------------------------------------------
# Values. Each parser returns the typed value or raises _Invalid with the predicate of a sentence
# whose subject is the directive name: "must be between 1280 and 65507, not 900".


class _Invalid(Exception):
    pass


def _show(value: str) -> str:
    """A value quoted for a one-line message: escapes control characters, cuts long values."""
    return repr(value if len(value) <= 60 else value[:57] + "...")


def _parse_int(value: str, low: int, high: int) -> int:
    if not made_of(value, _DIGITS) or (len(value) > 1 and value[0] == "0"):
        raise _Invalid(f"must be a decimal number between {low} and {high}, not {_show(value)}")
    number = int(value)
    if not low <= number <= high:
        raise _Invalid(f"must be between {low} and {high}, not {number}")
    return number


def _parse_mtu(value: str) -> int:
    return _parse_int(value, MIN_MTU, MAX_MTU)


def _parse_port(value: str) -> int:
    return _parse_int(value, 0, 0xFFFF)


def _parse_max_peers(value: str) -> int:
    return _parse_int(value, 1, MAX_PEERS_LIMIT)


def _parse_queue_bytes(value: str) -> int:
    return _parse_int(value, MIN_MTU, MAX_QUEUE_LIMIT)


def _parse_refresh(value: str) -> int:
    return _parse_int(value, 1, MAX_REFRESH_INTERVAL)


def _parse_drain_time(value: str) -> int:
    return _parse_int(value, 0, MAX_DRAIN_TIME)


def _parse_rate_limit(value: str) -> int:
    return _parse_int(value, 0, MAX_RATE_LIMIT)


def _parse_bool(value: str) -> bool:
    try:
        return _BOOLEANS[value.lower()]
    except KeyError:
        raise _Invalid(f"must be yes or no, not {_show(value)}") from None


def _parse_relay_type(value: str) -> RelayType:
    try:
        return _RELAY_TYPES[value.lower()]
    except KeyError:
        raise _Invalid(f"must be {_RELAY_TYPE_WORDS}, not {_show(value)}") from None


def _parse_ipv4(value: str) -> IPv4Address:
    try:
        return IPv4Address(value)
    except ValueError:
        raise _Invalid(
            f"must be an IPv4 address such as 198.51.100.2, not {_show(value)}"
        ) from None


def _parse_host(value: str) -> IPv4Address | str:
    """An IPv4 literal or a hostname (kept as written, resolved by the client daemon)."""
    try:
        return IPv4Address(value)
    except ValueError:
        pass
    if ":" in value:
        raise _Invalid(
            f"must be an IPv4 address or a hostname (Teredo servers are reached over IPv4), "
            f"not {_show(value)}"
        )
    if is_numeric_host(value):
        raise _Invalid(f"must be a dotted-quad IPv4 address or a hostname, not {_show(value)}")
    name = value[:-1] if value.endswith(".") else value
    if not name or len(name) > 253 or not all(map(is_host_label, name.split("."))):
        raise _Invalid(f"must be an IPv4 address or a hostname, not {_show(value)}")
    return value


def _parse_prefix(value: str) -> IPv6Network:
    text, slash, length = value.partition("/")
    problem = f"must be an IPv6 /32 prefix such as 2001:0::, not {_show(value)}"
    if (slash and length != "32") or "%" in text:
        raise _Invalid(problem)
    try:
        address = IPv6Address(text)
    except ValueError:
        raise _Invalid(problem) from None
    if int(address) & ((1 << 96) - 1):
        raise _Invalid(f"must have only its first 32 bits set, like 2001:0::, not {_show(value)}")
    prefix = IPv6Network((address, 32))
    if int(address) == 0 or prefix.overlaps(_LINK_LOCAL_V6) or prefix.overlaps(_MULTICAST_V6):
        raise _Invalid(f"must be a global unicast prefix such as 2001:0::, not {_show(value)}")
    return prefix


def _parse_interface_name(value: str) -> str:
    if (
        len(value.encode("utf-8", "surrogateescape")) > MAX_INTERFACE_NAME
        or not value.isascii()
        or not value.isprintable()
        or any(c in value for c in "/:%")
        or value in (".", "..")
    ):
        raise _Invalid(
            f"must be 1 to {MAX_INTERFACE_NAME} ASCII characters without '/', ':' or '%', "
            f"not {_show(value)}"
        )
    return value


def _parse_facility(value: str) -> str:
    facility = value.lower()
    if facility not in SYSLOG_FACILITIES:
        raise _Invalid(
            f"must be daemon, user, kern, local0 ... local7 or another syslog facility name, "
            f"not {_show(value)}"
        )
    return facility


def _parse_path(value: str) -> str:
    if not value.startswith("/") or not value.isprintable():
        raise _Invalid(f"must be an absolute path, not {_show(value)}")
    return value


def _parse_socket_path(value: str) -> str | None:
    if value.lower() == "none":
        return None
    path = _parse_path(value)
    if len(path.encode("utf-8", "surrogateescape")) > MAX_SOCKET_PATH:
        raise _Invalid(f"must be at most {MAX_SOCKET_PATH} bytes long (a Unix socket path limit)")
    return path


def _parse_user(value: str) -> str:
    if not is_user_name(value):
        raise _Invalid(f"must be a user name such as nobody, not {_show(value)}")
    return value


def _parse_identifier(value: str) -> bytes:
    # Imported here: the codec brings the wire format, which checkconf need not load.
    from teredo.core.secure_qualification import KeyFormatError, parse_identifier

    try:
        return parse_identifier(value)
    except KeyFormatError as problem:
        raise _Invalid(str(problem)) from None


def _parse_secret(value: str) -> bytes:
    # Imported here: the codec brings the wire format, which checkconf need not load.
    from teredo.core.secure_qualification import KeyFormatError, parse_secret

    try:
        return parse_secret(value)
    except KeyFormatError as problem:
        raise _Invalid(str(problem)) from None


def _parse_group(value: str) -> str:
    if not is_user_name(value):
        raise _Invalid(f"must be a group name such as monitoring, not {_show(value)}")
    return value


def _parse_metrics_address(value: str) -> MetricsAddress | None:
    """``127.0.0.1:9344``, ``[::1]:9344``, or ``none``."""
    if value.lower() == "none":
        return None
    problem = (
        f"must be an address and a port such as 127.0.0.1:9344 or [::1]:9344, or none, "
        f"not {_show(value)}"
    )
    host, colon, port = value.rpartition(":")
    if not colon or not port:
        raise _Invalid(problem)
    address: IPv4Address | IPv6Address
    try:
        if host.startswith("[") and host.endswith("]"):
            address = IPv6Address(host[1:-1])
        else:
            address = IPv4Address(host)
    except ValueError:
        raise _Invalid(problem) from None
    if address.is_multicast or (address.version == 6 and address.scope_id):
        raise _Invalid(problem)
    try:
        return MetricsAddress(address, _parse_int(port, 1, 0xFFFF))
    except _Invalid:
        raise _Invalid(problem) from None


def _parse_log_format(value: str) -> LogFormat:
    word = value.lower()
    if word == "text":
        return "text"
    if word == "json":
        return "json"
    raise _Invalid(f"must be text or json, not {_show(value)}")


def _parse_host_list(value: str) -> tuple[IPv4Address | str, ...]:
    """Comma-separated `_parse_host` values (no blanks: a value is one word)."""
    hosts = tuple(_parse_host(item) for item in value.split(",") if item)
    if not hosts:
        raise _Invalid(f"must list servers separated by commas, not {_show(value)}")
    return hosts


# ---------------------------------------------------------------------------------------------
# The directive table


_CLIENT: Final = frozenset({"client"})
_RELAY_SERVER: Final = frozenset({"relay", "server"})  # Prefix, InterfaceMTU
_CLIENT_RELAY: Final = frozenset({"client", "relay"})
_SERVER: Final = frozenset({"server"})
_RELAY: Final = frozenset({"relay"})
_ALL: Final = frozenset({"client", "relay", "server"})


@record
class Directive:
    """One configuration directive. `default` and `help` are for people (teredo.conf(5), the
    README): short text in which `code` is marked with backquotes."""

    name: str  # canonical spelling, used in messages
    roles: frozenset[str]
    parse: Callable[[str], object]
    default: str
    help: str
    miredo: bool = False  # one of Miredo 1.2.6's directives (else ours)


DIRECTIVES: Final[tuple[Directive, ...]] = (
    # Miredo's (1.2.6)
    Directive(
        "RelayType", _CLIENT_RELAY, _parse_relay_type, "`client`",
        "what the file configures: `client` or `autoclient` (a client), `relay` or `cone` (a "
        "relay), `restricted` (a relay behind a restricted NAT, discouraged), `host-specific` "
        "or `hostrelay` (ours: a relay for this host only)",
        miredo=True,
    ),
    Directive(
        "ServerAddress", _CLIENT, _parse_host, "required",
        "the Teredo server, an IPv4 address or a hostname; `teredo client SERVER` overrides it",
        miredo=True,
    ),
    Directive(
        "ServerAddress2", _CLIENT, _parse_host, "ServerAddress + 1",
        "the server's second address, an IPv4 address or a hostname",
        miredo=True,
    ),
    Directive(
        "Prefix", _RELAY_SERVER, _parse_prefix, "`2001:0::`",
        "the Teredo /32 prefix; the pre-RFC `3ffe:831f::` is accepted",
        miredo=True,
    ),
    Directive(
        "InterfaceMTU", _RELAY_SERVER, _parse_mtu, "`1280`",
        f"{MIN_MTU} to {MAX_MTU}: the relay's tunnel MTU, the MTU a server advertises",
        miredo=True,
    ),
    Directive(
        "InterfaceName", _CLIENT_RELAY, _parse_interface_name, f"`{DEFAULT_INTERFACE_NAME}`",
        f"the tunnel interface, up to {MAX_INTERFACE_NAME} characters without `/`, `:` or `%`",
        miredo=True,
    ),
    Directive(
        "BindAddress", _CLIENT_RELAY, _parse_ipv4, "any",
        "the local IPv4 address of the Teredo UDP socket",
        miredo=True,
    ),
    Directive(
        "BindPort", _CLIENT_RELAY, _parse_port, "kernel-chosen",
        "the local UDP port, 0 to 65535 (0: the kernel picks one)",
        miredo=True,
    ),
    Directive(
        "SyslogFacility", _ALL, _parse_facility, f"`{DEFAULT_SYSLOG_FACILITY}`",
        "`daemon`, `user`, `kern`, `local0` to `local7` or another syslog facility; a "
        "detached daemon logs to syslog always; with `-f`, to stderr unless this is set",
        miredo=True,
    ),
    Directive(
        "ServerBindAddress", _SERVER, _parse_ipv4, "required",
        "the first of the server's two consecutive public IPv4 addresses; `teredo server "
        "ADDRESS` overrides it",
        miredo=True,
    ),
    Directive(
        "ServerBindAddress2", _SERVER, _parse_ipv4, "ServerBindAddress + 1",
        "the second address; clients expect the next one",
        miredo=True,
    ),
    # ours
    Directive(
        "ControlSocket", _ALL, _parse_socket_path,
        f"`{CONTROL_SOCKET_DIR}/client-<InterfaceName>.sock`, `relay-<InterfaceName>.sock` or "
        "`server.sock`",
        "the control socket `teredo status` reads, an absolute path; `none` disables it; the "
        "daemon hands its directory to `User` when it created it, so that it removes its "
        "socket at exit",
    ),
    Directive(
        "ControlSocketGroup", _ALL, _parse_group, "none (root's group)",
        "the socket's group (mode 0660): its members run `teredo status` without root",
    ),
    Directive(
        "MetricsAddress", _ALL, _parse_metrics_address, "none (off)",
        "`127.0.0.1:9344` or `[::1]:9344`: Prometheus metrics over HTTP at `/metrics`; `none` "
        "turns them off; a change needs a restart",
    ),
    Directive(
        "LogFormat", _ALL, _parse_log_format, "`text`",
        "`text` or `json`: one JSON object per line (time, level, role, message, the event's "
        "fields)",
    ),
    Directive(
        "User", _ALL, _parse_user, f"`{DEFAULT_USER}`",
        "the account to drop privileges to after setup",
    ),
    Directive(
        "HookScript", _CLIENT, _parse_path, "none",
        "the absolute path of a script run with Miredo's client-hook environment",
    ),
    Directive(
        "MaxPeers", _CLIENT_RELAY, _parse_max_peers,
        f"{DEFAULT_CLIENT_MAX_PEERS} ({DEFAULT_RELAY_MAX_PEERS} for a relay not host-specific)",
        f"the peer table's bound, 1 to {MAX_PEERS_LIMIT}",
    ),
    Directive(
        "MaxQueueBytes", _CLIENT_RELAY, _parse_queue_bytes,
        f"{DEFAULT_MAX_QUEUE_BYTES} (the MTU if larger)",
        f"bytes queued per peer while it is being set up, {MIN_MTU} to {MAX_QUEUE_LIMIT} and "
        "at least the MTU",
    ),
    Directive(
        "RefreshInterval", _CLIENT, _parse_refresh, f"{DEFAULT_REFRESH_INTERVAL}",
        f"seconds between the client's refreshes, 1 to {MAX_REFRESH_INTERVAL} "
        "(RFC 6081 §5.1.1)",
    ),
    Directive(
        "LocalDiscovery", _CLIENT, _parse_bool, "`no`",
        "RFC 4380 §5.2.8 discovery of Teredo clients on the same LAN (multicast to 224.0.0.253)",
    ),
    Directive(
        "UPnP", _CLIENT, _parse_bool, "`yes`",
        "RFC 6081 §5.3: map the client's port on the NAT's UPnP gateway (removed at shutdown), "
        "so that peers behind symmetric NATs reach it; needs the `miniupnpc` module",
    ),
    Directive(
        "Hairpinning", _CLIENT, _parse_bool, "`yes`",
        "RFC 6081 §5.6: offer our local (and UPnP) endpoints in indirect bubbles, so that two "
        "clients behind one NAT meet even when the NAT does not hairpin",
    ),
    Directive(
        "ServerLoadReduction", _CLIENT, _parse_bool, "`yes`",
        "RFC 6081 §5.7: check an idle peer with direct bubbles before going through its server",
    ),
    Directive(
        "PortPreserving", _CLIENT, _parse_bool, "`yes`",
        "RFC 6081 §5.4: behind a port-preserving symmetric NAT, reach a peer being set up from "
        "a second, random UDP port, which the NAT keeps and the Random Port trailer announces",
    ),
    Directive(
        "SequentialPorts", _CLIENT, _parse_bool, "`yes`",
        "RFC 6081 §5.5: behind another symmetric NAT, predict the port the NAT gives a random "
        "UDP port toward a peer (an echo test through both server addresses) and announce it",
    ),
    Directive(
        "FallbackServers", _CLIENT, _parse_host_list, "none",
        "comma-separated servers tried in turn when `ServerAddress` stops answering",
    ),
    Directive(
        "AllowPrivateAddresses", _ALL, _parse_bool, "`no`",
        "for labs and test beds: accept private IPv4 addresses",
    ),
    Directive(
        "Offload", _CLIENT_RELAY, _parse_bool, "`yes`",
        "kernel offloads on the data path (TUN segmentation with a virtio-net header, UDP GSO "
        "and GRO); `no` reads and sends one packet per system call, for kernels or tools that "
        "mishandle them",
    ),
    Directive(
        "RateLimit", _SERVER, _parse_rate_limit, f"{DEFAULT_RATE_LIMIT}",
        "answers and forwards per second to or from one IPv4 address, after a burst of twice "
        "as many; `0` turns the limit off",
    ),
    # ours: secure qualification (RFC 4380 §5.2.2, teredo.core.secure_qualification)
    Directive(
        "ClientIdentifier", _CLIENT, _parse_identifier, "none (nonce-only RS)",
        "secure qualification (RFC 4380 §5.2.2): the name the server's key file knows this "
        "client by, 1 to 255 printable ASCII characters; needs `SharedSecret` or "
        "`SharedSecretFile`",
    ),
    Directive(
        "SharedSecret", _CLIENT, _parse_secret, "none",
        "the client's secret: hex digits, or base64 after `base64:`",
    ),
    Directive(
        "SharedSecretFile", _CLIENT, _parse_path, "none",
        "a file holding the secret, written as for `SharedSecret` (keeps it out of a readable "
        "configuration); an absolute path",
    ),
    Directive(
        "ClientKeyFile", _SERVER, _parse_path, "none",
        "the clients' keys: one `identifier secret` line per client; SIGHUP reloads it; an "
        "absolute path",
    ),
    Directive(
        "RequireAuthentication", _SERVER, _parse_bool, "`no`",
        "`yes`: answer only Router Solicitations signed with a key of `ClientKeyFile`; `no` "
        "also answers unsigned ones (Miredo, Windows)",
    ),
    # ours: anycast relays (teredo.programs.relay_health)
    Directive(
        "DrainTime", _RELAY, _parse_drain_time, f"{DEFAULT_DRAIN_TIME}",
        f"seconds, 0 to {MAX_DRAIN_TIME}, a stopping relay keeps relaying after it withdrew "
        "its prefix route, so that BGP moves the traffic first",
    ),
)  # fmt: skip
_DIRECTIVES: Final = {d.name.lower(): d for d in DIRECTIVES}

_ROLE_NAMES: Final = {"client": "clients", "relay": "relays", "server": "servers"}


class _Reader:
    """The directives of one file after the lexer: first occurrences, warnings, error helpers."""

    def __init__(self, text: str, source: str) -> None:
        self.source = source
        self.warnings: list[ConfigWarning] = []
        self.lines: dict[str, ConfigLine] = {}
        self.unknown: list[ConfigLine] = []  # lines whose name is no directive
        for line in tokenize_config(text):
            key = line.key
            directive = _DIRECTIVES.get(key) if key is not None else None
            if directive is None:
                self.warn(line.line, f"{_unknown_message(line.name)}, so the line is ignored")
                self.unknown.append(line)
            elif line.value is None:
                self.warn(line.line, f"{directive.name} has no value, so the line is ignored")
            elif directive.name.lower() in self.lines:
                first = self.lines[directive.name.lower()].line
                self.warn(
                    line.line,
                    f"{directive.name} was already set at line {first}, which is the one used",
                )
            else:
                self.lines[directive.name.lower()] = line
                if line.extra:
                    self.warn(
                        line.line,
                        f"the text after the value of {directive.name} is ignored: "
                        f"{_show(line.extra)}",
                        ignored=False,
                    )

    def warn(self, line: int, message: str, *, ignored: bool = True) -> None:
        self.warnings.append(ConfigWarning(self.source, line, message, ignored))

    def fail(self, key: str | None, message: str) -> NoReturn:
        line = self.lines.get(key) if key is not None else None
        where = f"{self.source}:{line.line}" if line is not None else self.source
        raise UsageError(f"{where}: {message}")

    def fail_missing(self, name: str, message: str) -> NoReturn:
        """`message` says that the directive `name` is missing. A misspelt name is the likelier
        cause than a forgotten line: then the error points at that line, as its warning does."""
        for line in self.unknown:
            suggestion = _suggestion(line.name) if "=" not in line.name else None
            if suggestion is not None:
                link = "so" if suggestion == name else "and"
                raise UsageError(
                    f"{self.source}:{line.line}: {_unknown_message(line.name)}, {link} {message}"
                )
        self.fail(None, message)

    def has(self, key: str) -> bool:
        return key in self.lines

    def get(self, key: str, parse: Callable[[str], T], default: T) -> T:
        line = self.lines.get(key)
        if line is None or line.value is None:
            return default
        try:
            return parse(line.value)
        except _Invalid as problem:
            self.fail(key, f"{_DIRECTIVES[key].name} {problem}")

    def check_role(self, role: Role) -> None:
        """Validate every value in file order, and warn about directives the role ignores."""
        for key, line in sorted(self.lines.items(), key=lambda item: item[1].line):
            directive = _DIRECTIVES[key]
            if role not in directive.roles:
                users = " and ".join(_ROLE_NAMES[r] for r in sorted(directive.roles))
                self.warn(
                    line.line,
                    f"{directive.name} does not apply to a {role} configuration "
                    f"(it is for {users}), so it is ignored",
                )
            else:
                self.get(key, directive.parse, None)
        for key in [k for k in self.lines if role not in _DIRECTIVES[k].roles]:
            del self.lines[key]

    def sorted_warnings(self) -> tuple[ConfigWarning, ...]:
        return tuple(sorted(self.warnings, key=lambda w: w.line))


def _unknown_message(name: str) -> str:
    """ "unknown directive X (did you mean Y?)": the one wording for a misspelt name, in the
    warning about its line and in the error about the directive it leaves missing."""
    shown = name if name.isascii() and name.isprintable() and len(name) <= 40 else _show(name)
    hint = ""
    if "=" in name:
        hint = " (write 'Name value', without '=')"
    else:
        close = _suggestion(name)
        if close is not None:
            hint = f" (did you mean {close}?)"
    return f"unknown directive {shown}{hint}"


def _suggestion(name: str) -> str | None:
    """The directive `name` is probably a misspelling of, by its canonical name."""
    import difflib  # only for a mistake: a daemon need not carry it

    close = difflib.get_close_matches(name.lower(), list(_DIRECTIVES), n=1, cutoff=0.8)
    return _DIRECTIVES[close[0]].name if close else None


def _file_role(reader: _Reader) -> tuple[Role, RelayType]:
    """What the file configures: ServerBindAddress means a server, else RelayType decides."""
    if reader.has("serverbindaddress"):
        return "server", RelayType.CLIENT  # RelayType does not apply: it is ignored later
    relay_type = reader.get("relaytype", _parse_relay_type, RelayType.CLIENT)
    return ("client" if relay_type is RelayType.CLIENT else "relay"), relay_type


def _require_role(reader: _Reader, wanted: Role, found: Role) -> None:
    if wanted == found:
        return
    if found == "server":
        reader.fail(
            "serverbindaddress",
            f"ServerBindAddress makes this a server configuration, not a {wanted} one; "
            f"use it with `teredo server`",
        )
    if wanted == "relay":  # found a client: its RelayType says so (without one, a relay)
        reader.fail(
            "relaytype",
            f"RelayType {reader.lines['relaytype'].value} makes this a client configuration; "
            f"a relay needs RelayType relay, cone, restricted or host-specific",
        )
    if wanted == "client":  # found a relay
        reader.fail(
            "relaytype",
            f"RelayType {reader.lines['relaytype'].value} makes this a relay configuration, "
            f"not a client one; use it with `teredo relay`, or remove RelayType",
        )
    # wanted a server, found a client or relay file: the missing address is reported later.


def _unicast(
    reader: _Reader,
    key: str | None,
    what: str,
    address: IPv4Address,
    allow_private: bool,
    consequence: str,
) -> None:
    """Refuse addresses that are not global unicast (RFC 4380 §5.2.4), or not unicast at all."""
    if any(address in network for network in _NEVER_UNICAST):
        reader.fail(key, f"{what} must be a unicast IPv4 address, not {address}")
    if not allow_private and not is_global_ipv4(address):
        reader.fail(
            key,
            f"{what} {address} is not a global unicast IPv4 address, so {consequence}; "
            f"use a public address, or set AllowPrivateAddresses yes in a lab",
        )


def _next_address(
    reader: _Reader,
    key: str | None,
    what: str,
    address: IPv4Address,
    allow_private: bool,
    directive2: str,
) -> IPv4Address:
    """The conventional secondary address, primary + 1 (miredo.conf(5)): RFC 4380 §5.2 asks
    for a secondary address but does not say which."""
    following = int(address) + 1
    if following > 0xFFFFFFFF:
        reader.fail(key, f"{what} {address} has no next address, so set {directive2}")
    secondary = IPv4Address(following)
    usable = not any(secondary in network for network in _NEVER_UNICAST)
    if not usable or not (allow_private or is_global_ipv4(secondary)):
        reader.fail(
            key,
            f"the secondary address {what} + 1 = {secondary} is not a global unicast IPv4 "
            f"address, so set {directive2}",
        )
    return secondary


def _control_socket(reader: _Reader, role: Role, interface: str) -> str | None:
    default: str | None = default_control_socket(role, interface)
    return reader.get("controlsocket", _parse_socket_path, default)


def _observability(reader: _Reader) -> _Observability:
    """The directives every role shares for watching it: socket group, metrics, log format."""
    return {
        "control_socket_group": reader.get("controlsocketgroup", _parse_group, None),
        "metrics_address": reader.get("metricsaddress", _parse_metrics_address, None),
        "log_format": reader.get("logformat", _parse_log_format, "text"),
    }


def _queue_bytes(reader: _Reader, mtu: int) -> int:
    """MaxQueueBytes: at least one full packet of the interface MTU."""
    queue = reader.get("maxqueuebytes", _parse_queue_bytes, max(DEFAULT_MAX_QUEUE_BYTES, mtu))
    if queue < mtu:
        reader.fail(
            "maxqueuebytes",
            f"MaxQueueBytes must be at least the InterfaceMTU of {mtu}, not {queue}, "
            f"so that one full packet fits",
        )
    return queue


def _prefix_and_mtu(reader: _Reader) -> tuple[IPv6Network, int]:
    prefix = reader.get("prefix", _parse_prefix, TEREDO_PREFIX)
    mtu = reader.get("interfacemtu", _parse_mtu, DEFAULT_MTU)
    if prefix == LEGACY_TEREDO_PREFIX:
        reader.warn(
            reader.lines["prefix"].line,
            "Prefix 3ffe:831f:: is the pre-RFC Teredo prefix; current clients use 2001:0::",
            ignored=False,
        )
    if mtu != DEFAULT_MTU and prefix == TEREDO_PREFIX:
        reader.warn(
            reader.lines["interfacemtu"].line,
            f"InterfaceMTU {mtu} with the global prefix 2001:0:: breaks interoperability; "
            f"Teredo peers assume 1280 (RFC 4380 §5.1.2)",
            ignored=False,
        )
    return prefix, mtu


# ---------------------------------------------------------------------------------------------
# The three configurations


def _build_client(reader: _Reader, server: str | None) -> ClientConfig:
    allow_private = reader.get("allowprivateaddresses", _parse_bool, False)
    primary: IPv4Address | str | None
    primary_key: str | None
    if server is not None:
        try:
            primary = _parse_host(server)
        except _Invalid as problem:
            raise UsageError(f"the server given on the command line {problem}") from None
        primary_key = None
        secondary: IPv4Address | str | None = None
        if reader.has("serveraddress2"):
            reader.warn(
                reader.lines["serveraddress2"].line,
                "ServerAddress2 is not used because the server was given on the command line",
                ignored=False,
            )
    else:
        primary = reader.get("serveraddress", _parse_host, None)
        primary_key = "serveraddress"
        if primary is None:
            reader.fail_missing(
                "ServerAddress",
                "there is no ServerAddress; add 'ServerAddress' with the Teredo server's "
                "hostname or IPv4 address, or give the server on the command line",
            )
        secondary = reader.get("serveraddress2", _parse_host, None)
    what = "ServerAddress" if primary_key else "the server given on the command line"
    consequence = "the client could never qualify"
    if isinstance(primary, IPv4Address):
        _unicast(reader, primary_key, what, primary, allow_private, consequence)
    if isinstance(secondary, IPv4Address):
        _unicast(reader, "serveraddress2", "ServerAddress2", secondary, allow_private, consequence)
        if secondary == primary:
            reader.fail("serveraddress2", "ServerAddress2 must differ from ServerAddress")
    elif secondary is None and isinstance(primary, IPv4Address):
        secondary = _next_address(
            reader, primary_key, what, primary, allow_private, "ServerAddress2"
        )
    identifier, secret, secret_file = _client_key(reader)
    interface = reader.get("interfacename", _parse_interface_name, DEFAULT_INTERFACE_NAME)
    return ClientConfig(
        server_address=primary,
        server_address2=secondary,
        interface_name=interface,
        bind_address=reader.get("bindaddress", _parse_ipv4, ANY_IPV4),
        bind_port=reader.get("bindport", _parse_port, 0),
        syslog_facility=reader.get("syslogfacility", _parse_facility, DEFAULT_SYSLOG_FACILITY),
        control_socket=_control_socket(reader, "client", interface),
        **_observability(reader),
        user=reader.get("user", _parse_user, DEFAULT_USER),
        hook_script=reader.get("hookscript", _parse_path, None),
        max_peers=reader.get("maxpeers", _parse_max_peers, DEFAULT_CLIENT_MAX_PEERS),
        max_queue_bytes=_queue_bytes(reader, DEFAULT_MTU),
        refresh_interval=reader.get("refreshinterval", _parse_refresh, DEFAULT_REFRESH_INTERVAL),
        allow_private_addresses=allow_private,
        offload=reader.get("offload", _parse_bool, True),
        local_discovery=reader.get("localdiscovery", _parse_bool, False),
        upnp=reader.get("upnp", _parse_bool, True),
        hairpinning=reader.get("hairpinning", _parse_bool, True),
        server_load_reduction=reader.get("serverloadreduction", _parse_bool, True),
        port_preserving=reader.get("portpreserving", _parse_bool, True),
        sequential_ports=reader.get("sequentialports", _parse_bool, True),
        fallback_servers=reader.get("fallbackservers", _parse_host_list, ()),
        client_identifier=identifier,
        shared_secret=secret,
        shared_secret_file=secret_file,
        source=reader.source,
        warnings=reader.sorted_warnings(),
    )


def _client_key(reader: _Reader) -> tuple[bytes | None, bytes | None, str | None]:
    """ClientIdentifier with SharedSecret or SharedSecretFile (RFC 4380 §5.2.2): all or none."""
    identifier = reader.get("clientidentifier", _parse_identifier, None)
    secret = reader.get("sharedsecret", _parse_secret, None)
    secret_file = reader.get("sharedsecretfile", _parse_path, None)
    if secret is not None and secret_file is not None:
        reader.fail(
            "sharedsecretfile", "set SharedSecret or SharedSecretFile, not both; remove one"
        )
    if identifier is None and (secret is not None or secret_file is not None):
        key = "sharedsecret" if secret is not None else "sharedsecretfile"
        reader.fail(
            key,
            "a shared secret needs the identifier the server knows it by; add 'ClientIdentifier'",
        )
    if identifier is not None and secret is None and secret_file is None:
        reader.fail(
            "clientidentifier",
            "ClientIdentifier needs the client's secret; add 'SharedSecret' or 'SharedSecretFile'",
        )
    return identifier, secret, secret_file


def _build_relay(reader: _Reader, relay_type: RelayType) -> RelayConfig:
    prefix, mtu = _prefix_and_mtu(reader)
    if relay_type is RelayType.RESTRICTED:
        reader.warn(
            reader.lines["relaytype"].line,
            "RelayType restricted makes NAT traversal unreliable (miredo.conf(5) says not to "
            "use it); prefer RelayType relay on a public IPv4 address",
            ignored=False,
        )
    default_peers = (
        DEFAULT_CLIENT_MAX_PEERS
        if relay_type is RelayType.HOST_SPECIFIC
        else DEFAULT_RELAY_MAX_PEERS
    )
    interface = reader.get("interfacename", _parse_interface_name, DEFAULT_INTERFACE_NAME)
    return RelayConfig(
        relay_type=relay_type,
        prefix=prefix,
        interface_mtu=mtu,
        interface_name=interface,
        bind_address=reader.get("bindaddress", _parse_ipv4, ANY_IPV4),
        bind_port=reader.get("bindport", _parse_port, 0),
        syslog_facility=reader.get("syslogfacility", _parse_facility, DEFAULT_SYSLOG_FACILITY),
        control_socket=_control_socket(reader, "relay", interface),
        **_observability(reader),
        user=reader.get("user", _parse_user, DEFAULT_USER),
        max_peers=reader.get("maxpeers", _parse_max_peers, default_peers),
        max_queue_bytes=_queue_bytes(reader, mtu),
        allow_private_addresses=reader.get("allowprivateaddresses", _parse_bool, False),
        offload=reader.get("offload", _parse_bool, True),
        drain_time=reader.get("draintime", _parse_drain_time, DEFAULT_DRAIN_TIME),
        source=reader.source,
        warnings=reader.sorted_warnings(),
    )


def _build_server(reader: _Reader, address: str | None) -> ServerConfig:
    allow_private = reader.get("allowprivateaddresses", _parse_bool, False)
    consequence = "clients could never reach the server"
    primary_key: str | None
    if address is not None:
        try:
            primary = _parse_ipv4(address)
        except _Invalid as problem:
            raise UsageError(f"the address given on the command line {problem}") from None
        primary_key, what = None, "the address given on the command line"
        secondary = None
        if reader.has("serverbindaddress2"):
            reader.warn(
                reader.lines["serverbindaddress2"].line,
                "ServerBindAddress2 is not used because the address was given on the command line",
                ignored=False,
            )
    else:
        found = reader.get("serverbindaddress", _parse_ipv4, None)
        if found is None:
            reader.fail_missing(
                "ServerBindAddress",
                "there is no ServerBindAddress; add 'ServerBindAddress' with the first of the "
                "server's two consecutive public IPv4 addresses",
            )
        primary, primary_key, what = found, "serverbindaddress", "ServerBindAddress"
        secondary = reader.get("serverbindaddress2", _parse_ipv4, None)
    _unicast(reader, primary_key, what, primary, allow_private, consequence)
    if secondary is None:
        secondary = _next_address(
            reader, primary_key, what, primary, allow_private, "ServerBindAddress2"
        )
    else:
        _unicast(
            reader,
            "serverbindaddress2",
            "ServerBindAddress2",
            secondary,
            allow_private,
            consequence,
        )
        if secondary == primary:
            reader.fail(
                "serverbindaddress2", "ServerBindAddress2 must differ from ServerBindAddress"
            )
        if int(secondary) != int(primary) + 1:
            reader.warn(
                reader.lines["serverbindaddress2"].line,
                f"ServerBindAddress2 {secondary} is not ServerBindAddress + 1, so clients "
                f"need ServerAddress2 {secondary} and other Teredo clients may not work",
                ignored=False,
            )
    prefix, mtu = _prefix_and_mtu(reader)
    key_file = reader.get("clientkeyfile", _parse_path, None)
    required = reader.get("requireauthentication", _parse_bool, False)
    if required and key_file is None:
        reader.fail(
            "requireauthentication",
            "RequireAuthentication yes needs the clients' keys; add 'ClientKeyFile' with the "
            "path of the key file",
        )
    return ServerConfig(
        server_bind_address=primary,
        server_bind_address2=secondary,
        prefix=prefix,
        interface_mtu=mtu,
        syslog_facility=reader.get("syslogfacility", _parse_facility, DEFAULT_SYSLOG_FACILITY),
        control_socket=_control_socket(reader, "server", DEFAULT_INTERFACE_NAME),
        **_observability(reader),
        user=reader.get("user", _parse_user, DEFAULT_USER),
        allow_private_addresses=allow_private,
        rate_limit=reader.get("ratelimit", _parse_rate_limit, DEFAULT_RATE_LIMIT),
        client_key_file=key_file,
        require_authentication=required,
        source=reader.source,
        warnings=reader.sorted_warnings(),
    )


# ---------------------------------------------------------------------------------------------
# Public entry points


def detect_role(text: str, source: str = "<config>") -> Role:
    """The role a file configures: server with ServerBindAddress, else by RelayType."""
    return _file_role(_Reader(text, source))[0]


def parse_config(
    text: str,
    role: Role | None = None,
    source: str = "<config>",
    *,
    server: str | None = None,
    address: str | None = None,
) -> Config:
    """Parse Miredo-syntax `text` for `role` (detected from the text when None).

    `server` (client) and `address` (server) are command-line overrides of ``ServerAddress``
    and ``ServerBindAddress``; with one, the file's secondary address is not used.
    Raises `UsageError` with one ``source:line:`` sentence; warnings are on the result.
    """
    reader = _Reader(text, source)
    found, relay_type = _file_role(reader)
    if role is None:
        role = found
    elif role == "relay" and found == "client" and not reader.has("relaytype"):
        found, relay_type = "relay", RelayType.CONE  # `teredo relay`: a relay unless told
    _require_role(reader, role, found)
    reader.check_role(role)
    if role == "client":
        return _build_client(reader, server)
    if role == "relay":
        return _build_relay(reader, relay_type)
    return _build_server(reader, address)


def parse_client_config(
    text: str, source: str = "<config>", *, server: str | None = None
) -> ClientConfig:
    """Parse a client configuration (miredo.conf with RelayType client or none)."""
    config = parse_config(text, "client", source, server=server)
    assert isinstance(config, ClientConfig)
    return config


def parse_relay_config(text: str, source: str = "<config>") -> RelayConfig:
    """Parse a relay configuration (RelayType relay, cone, restricted or host-specific; a file
    without RelayType is a cone relay here, as `teredo relay` reads it)."""
    config = parse_config(text, "relay", source)
    assert isinstance(config, RelayConfig)
    return config


def parse_server_config(
    text: str, source: str = "<config>", *, address: str | None = None
) -> ServerConfig:
    """Parse a server configuration (miredo-server.conf)."""
    config = parse_config(text, "server", source, address=address)
    assert isinstance(config, ServerConfig)
    return config
