"""`teredo status`: ask a running daemon for its status document and show it to a person.

The document comes from the daemon's control socket (`teredo.adapters.control`); its core part
is typed in `teredo.core.status`, and `merge_counters` is how each daemon adds its I/O
counters to its core's. `--json` prints the document as it came; otherwise `render_status`
writes a header line and one block per key: the address decoded, peers summarised, empty
counters shown as "none", anything unknown rendered generically.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from ipaddress import IPv6Network
from typing import Any, Final

from teredo.adapters.control import find_control_socket, query_control_socket
from teredo.core.address import (
    LEGACY_TEREDO_PREFIX,
    TEREDO_PORT,
    TEREDO_PREFIX,
    TeredoAddress,
    parse_teredo_address,
)
from teredo.core.config import CONTROL_SOCKET_DIR
from teredo.core.errors import ParseError, UserError


def merge_counters(core: Mapping[str, int], io: Mapping[str, int]) -> dict[str, int]:
    """A daemon's counters: its core's and its I/O's, sorted by name."""
    return dict(sorted({**core, **io}.items()))


def run_status(
    socket_path: str | None, as_json: bool, *, search_dir: str = CONTROL_SOCKET_DIR
) -> int:
    """`teredo status [--json] [--socket PATH]`: print a daemon's status; exit status 0.

    Without a path, query the only live socket in `search_dir` (/run/teredo).
    """
    path = socket_path or find_control_socket(search_dir)
    document = query_control_socket(path, "status")
    if as_json:
        print(json.dumps(document, indent=2))
    elif isinstance(document, Mapping):
        print(render_status(document), end="")
    else:
        raise UserError(f"the daemon at {path} answered with something that is not a status")
    return 0


# --- human rendering --------------------------------------------------------------------------

_LABEL_WIDTH: Final = 11  # the value column: at least this far in, further for long keys
_MAX_LABEL_WIDTH: Final = 26
_HEADER_KEYS: Final = frozenset({"role", "version", "pid", "uptime"})


def render_status(document: Mapping[str, Any]) -> str:
    """The status document as text for a person: a header line, then one block per key.

    Known keys get a tailored line (address decoded, peers summarised, empty counters shown as
    "none"); unknown keys are rendered generically, nested mappings indented.
    """
    role = document.get("role", "daemon")
    header = [f"teredo {role}"]
    if "version" in document:
        header.append(str(document["version"]))
    if "pid" in document:
        header.append(f"(pid {document['pid']})")
    line = " ".join(header)
    if isinstance(document.get("uptime"), int | float):
        line += f", up {format_duration(float(document['uptime']))}"
    lines = [line]
    shown = _shown_elsewhere(document)
    keys = [key for key in document if key not in _HEADER_KEYS and key not in shown]
    width = min(max([_LABEL_WIDTH - 2, *map(len, keys)]) + 2, _MAX_LABEL_WIDTH)
    for key in keys:
        value = document[key]
        if key == "address" and isinstance(value, str):
            lines += _render_address(value, document.get("prefix"), width)
        elif key == "peers":
            lines.append(_row("peers", _peers_summary(value, document), 0, width))
        elif key == "servers" and isinstance(value, list) and value:
            lines.append(_row("servers", _servers_summary(value), 0, width))
        else:
            lines += _render_value(key, value, 0, width)
    return "\n".join(lines) + "\n"


def _shown_elsewhere(document: Mapping[str, Any]) -> set[str]:
    """Keys the human view leaves out because another line already says it (the JSON view
    keeps every key): the server in use is marked in `servers`, the mapping is in the decoded
    address, the trusted peers and the bound are on the peers line."""
    shown = set()
    if isinstance(document.get("servers"), list) and document["servers"]:
        shown |= {"server", "secondary_server"}
    if isinstance(document.get("peers"), int):
        shown |= {"trusted_peers", "max_peers"}
    address, mapped = document.get("address"), document.get("mapped")
    if isinstance(address, str) and isinstance(mapped, str):
        decoded = _decode(address, document.get("prefix"))
        if decoded is not None and f"{decoded.mapped_address}:{decoded.mapped_port}" == mapped:
            shown.add("mapped")
    return shown


def format_duration(seconds: float) -> str:
    """3723.4 -> "1h 02m 03s"; 90061 -> "1d 1h 01m 01s"."""
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h {minutes:02d}m {secs:02d}s"
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def _row(label: str, text: str, depth: int = 0, width: int = _LABEL_WIDTH) -> str:
    return f"{'  ' * depth}{label:<{max(width, len(label) + 1)}}{text}".rstrip()


def _scalar(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _render_value(label: str, value: object, depth: int, width: int = _LABEL_WIDTH) -> list[str]:
    if isinstance(value, Mapping):
        if not value:
            return [_row(label, "none", depth, width)]
        lines = ["  " * depth + label]
        inner = max(len(str(key)) for key in value) + 2  # align the values of one mapping
        for key, item in value.items():
            lines += _render_value(str(key), item, depth + 1, inner)
        return lines
    if isinstance(value, list | tuple):
        if all(not isinstance(item, Mapping | list | tuple) for item in value):
            text = ", ".join(_scalar(item) for item in value) or "none"
            return [_row(label, text, depth, width)]
        lines = [_row(label, f"{len(value)} entries", depth, width)]
        for item in value:
            if isinstance(item, Mapping):
                text = ", ".join(f"{k} {_scalar(v)}" for k, v in item.items())
            else:
                text = json.dumps(item, default=str)
            lines.append("  " * (depth + 1) + "- " + text)
        return lines
    return [_row(label, _scalar(value), depth, width)]


def _decode(text: str, prefix: object) -> TeredoAddress | None:
    prefixes: tuple[IPv6Network, ...] = (TEREDO_PREFIX, LEGACY_TEREDO_PREFIX)
    try:
        if isinstance(prefix, str):
            prefixes = (IPv6Network(prefix if "/" in prefix else prefix + "/32"),)
        return parse_teredo_address(text, prefixes)
    except (ParseError, ValueError):
        return None


def _render_address(text: str, prefix: object, width: int) -> list[str]:
    lines = [_row("address", text, 0, width)]
    teredo = _decode(text, prefix)
    if teredo is None:
        return lines
    cone = ", cone" if teredo.cone else ""
    mapped = f"{teredo.mapped_address}:{teredo.mapped_port}"
    lines.append(_row("", f"server {teredo.server}, mapped {mapped}{cone}", 0, width))
    return lines


def _servers_summary(servers: list[Any]) -> str:
    """`servers` as objects (address, secondary, port, in_use) or, from older daemons, text."""
    shown = []
    for server in servers:
        if not isinstance(server, Mapping):
            shown.append(_scalar(server))
            continue
        notes = []
        if server.get("secondary"):
            notes.append(f"secondary {server['secondary']}")
        if server.get("port") not in (None, TEREDO_PORT):
            notes.append(f"port {server['port']}")
        if server.get("in_use"):
            notes.append("in use")
        details = f" ({', '.join(notes)})" if notes else ""
        shown.append(f"{server.get('address', '?')}{details}")
    return ", ".join(shown)


def _peers_summary(peers: object, document: Mapping[str, Any]) -> str:
    if isinstance(peers, int) and not isinstance(peers, bool):
        text = str(peers)
        if isinstance(document.get("trusted_peers"), int):
            text += f" ({document['trusted_peers']} trusted)"
        if isinstance(document.get("max_peers"), int):
            text += f", at most {document['max_peers']}"
        return text
    if isinstance(peers, list | tuple):
        trusted = sum(1 for p in peers if isinstance(p, Mapping) and p.get("trusted"))
        has_trust = any(isinstance(p, Mapping) and "trusted" in p for p in peers)
        return f"{len(peers)} ({trusted} trusted)" if has_trust else str(len(peers))
    if isinstance(peers, Mapping):
        return ", ".join(f"{k} {_scalar(v)}" for k, v in peers.items()) or "none"
    return _scalar(peers)
