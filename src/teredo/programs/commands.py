"""The small one-shot commands: `decode`, `encode`, `checkconf`.

They print results on stdout and raise `UsageError` for bad input; `teredo.cli` turns that into
one sentence on stderr and exit status 2.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, IPv6Network

from teredo.core.errors import ParseError, UsageError

TYPE_CHECKING = False  # typing's flag without importing typing (ms a one-shot command pays)
if TYPE_CHECKING:
    from teredo.core.config import ClientConfig, Role


def _parse_ipv4(text: str, what: str) -> IPv4Address:
    try:
        return IPv4Address(text.strip())
    except ValueError:
        raise UsageError(f"{what} {text!r} is not an IPv4 address like 192.0.2.1") from None


def _parse_int(text: str, what: str, maximum: int) -> int:
    try:
        value = int(text.strip(), 0)
    except ValueError:
        raise UsageError(f"{what} {text!r} is not a number (decimal or 0x hex)") from None
    if not 0 <= value <= maximum:
        raise UsageError(f"{what} {value} is out of range (0 to {maximum})")
    return value


def decode(text: str, as_json: bool = False) -> int:
    """`teredo decode ADDRESS [--json]`."""
    from teredo.core.address import parse_teredo_address

    cleaned = text.strip().strip("[]").split("%", 1)[0]
    try:
        address = IPv6Address(cleaned)
    except ValueError:
        raise UsageError(f"{text!r} is not an IPv6 address") from None
    try:
        teredo = parse_teredo_address(address)
    except ParseError as error:
        raise UsageError(str(error)) from None
    fields = {
        "address": str(address),
        "prefix": str(teredo.prefix),
        "server": str(teredo.server),
        "flags": teredo.flags,
        "cone": teredo.cone,
        "random_bits": teredo.random_bits,
        "mapped_address": str(teredo.mapped_address),
        "mapped_port": teredo.mapped_port,
    }
    if as_json:
        import json

        print(json.dumps(fields))
        return 0
    print(f"address         {address}")
    print(f"prefix          {teredo.prefix}")
    print(f"server          {teredo.server}")
    print(f"flags           {teredo.flags:#06x}")
    print(f"  cone          {'yes' if teredo.cone else 'no'}")
    print(f"  random bits   {teredo.random_bits:#06x}")
    print(f"mapped address  {teredo.mapped_address}")
    print(f"mapped port     {teredo.mapped_port}")
    return 0


def _parse_prefix(text: str) -> IPv6Network:
    value = text.strip()
    if "/" not in value:
        value += "/32"
    try:
        prefix = IPv6Network(value)
    except ValueError:
        raise UsageError(f"prefix {text!r} is not an IPv6 /32 prefix like 2001::") from None
    if prefix.prefixlen != 32:
        raise UsageError(f"prefix {text!r} must be a /32 (a Teredo prefix is 32 bits)")
    return prefix


def encode(
    server: str,
    mapped: str,
    cone: bool = False,
    flags: str | None = None,
    prefix: str | None = None,
) -> int:
    """`teredo encode --server IPV4 --mapped IPV4:PORT [--cone] [--flags N] [--prefix P]`."""
    from teredo.core.address import FLAG_CONE, TEREDO_PREFIX, encode_teredo_address

    server_address = _parse_ipv4(server, "server")
    host, sep, port_text = mapped.strip().rpartition(":")
    if not sep:
        raise UsageError(f"mapped endpoint {mapped!r} must be IPV4:PORT, like 192.0.2.1:4096")
    mapped_address = _parse_ipv4(host, "mapped address")
    mapped_port = _parse_int(port_text, "mapped port", 0xFFFF)
    flag_value = _parse_int(flags, "flags", 0xFFFF) if flags is not None else 0
    if cone:
        flag_value |= FLAG_CONE
    network = _parse_prefix(prefix) if prefix is not None else TEREDO_PREFIX
    print(encode_teredo_address(server_address, mapped_address, mapped_port, flag_value, network))
    return 0


def checkconf(path: str | None, resolve: bool = True, role: Role | None = None) -> int:
    """`teredo checkconf [--no-resolve] [--role ROLE] [FILE]`: validate a client, relay or
    server file, for the role it configures or as `teredo ROLE` reads it.

    Like miredo-checkconf: silent and exit 0 when the file is valid; a line that would be
    ignored (unknown, repeated or misplaced directive) fails the check, and so does a server
    name of a client file that does not exist (the name servers said so). Unlike it, a name
    that cannot be resolved *now* (no answer: the network may not be up yet, at boot) is a
    warning, since the client retries it; `resolve=False` (``--no-resolve``) skips resolving;
    server files (those with ServerBindAddress) are checked as server files.
    Warnings go to stderr, one line each; a failure is one `UsageError` sentence (exit 2).
    """
    import sys

    from teredo.core.config import DEFAULT_CONFIG_PATH, ClientConfig
    from teredo.programs.config_file import load_config

    file = DEFAULT_CONFIG_PATH if path is None else path
    config = load_config(file, role)
    for warning in config.warnings:
        print(f"teredo: warning: {warning}", file=sys.stderr)
    ignored = sum(1 for warning in config.warnings if warning.ignored)
    if ignored:
        lines = "line is" if ignored == 1 else "lines are"
        raise UsageError(
            f"{file}: {ignored} {lines} ignored (see the warnings above); fix or remove "
            f"{'it' if ignored == 1 else 'them'}"
        )
    if resolve and isinstance(config, ClientConfig):
        _resolve_names(file, config)
    return 0


def _resolve_names(file: str, config: ClientConfig) -> None:
    """Resolve the client's server names as miredo-checkconf does (IP literals need nothing)."""
    import sys

    names = [
        (config.server_address, "Teredo server (ServerAddress)"),
        (config.server_address2, "ServerAddress2"),
        *((host, "fallback server (FallbackServers)") for host in config.fallback_servers),
    ]
    for host, what in names:
        if not isinstance(host, str):
            continue
        from teredo.adapters.resolver import resolve_ipv4
        from teredo.core.errors import NameResolutionError

        try:
            resolve_ipv4(host, what)
        except NameResolutionError as error:
            if not error.temporary:
                raise UsageError(
                    f"{file}: {error}; fix the name (or check later with --no-resolve)"
                ) from None
            print(f"teredo: warning: {file}: {error}; the client retries it", file=sys.stderr)
