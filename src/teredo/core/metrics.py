"""A daemon's status document as Prometheus metrics (the text exposition format, version 0.0.4).

The status document (`teredo.adapters.control`, `teredo status --json`) is the one source: what
`teredo status` shows, the metrics endpoint (``MetricsAddress``) exports, so the two cannot
disagree. The mapping follows Prometheus' naming conventions:

- every name starts with ``teredo_``; counters end in ``_total``; values are in base units
  (seconds, bytes), so ``rtt_ms`` becomes ``teredo_server_rtt_seconds``;
- ``teredo_build_info{version, role} 1``: the info metric to join on;
- every entry of ``counters`` is a counter of its own, ``teredo_<name>_total``; the server's
  per-socket ones (``udp_198.51.100.2_send_errors``) become ``teredo_udp_send_errors_total``
  with a ``socket`` label;
- every drop reason is a sample of one counter, ``teredo_drops_total{reason="..."}``;
- table sizes and settings are gauges (``teredo_peers``, ``teredo_max_peers``,
  ``teredo_queued_bytes``...), the state is ``teredo_state{state="..."} 1``;
- nothing is labelled by peer: a label per peer address would make a series per peer, which a
  stranger could multiply (and a million peers would drown any Prometheus).

`status_metrics(document)` builds the families, `exposition(families)` writes the text. Pure:
no I/O (the HTTP side is `teredo.adapters.metrics`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

PREFIX: Final = "teredo_"
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

MetricType = Literal["counter", "gauge"]


@dataclass(frozen=True, slots=True)
class Sample:
    """One line of the exposition: the full name (``_total`` included), labels, value."""

    name: str
    labels: tuple[tuple[str, str], ...]
    value: float


@dataclass(slots=True)
class MetricFamily:
    """A metric: its name (counters without ``_total``), type, help text and samples."""

    name: str
    type: MetricType
    help: str
    samples: list[Sample] = field(default_factory=list)

    def add(self, value: float, **labels: str) -> None:
        suffix = "_total" if self.type == "counter" else ""
        self.samples.append(Sample(self.name + suffix, tuple(labels.items()), value))


@dataclass(frozen=True, slots=True)
class _Gauge:
    """How one top-level key of the status document becomes a metric."""

    name: str
    help: str
    type: MetricType = "gauge"
    scale: float = 1.0  # multiplied in: 0.001 turns milliseconds into seconds


# Top-level keys of the status documents (`teredo.core.status` and the daemons) that are
# numbers or yes/no. Other keys are text (addresses, paths) and stay in `teredo status`.
GAUGES: Final[Mapping[str, _Gauge]] = {
    "uptime": _Gauge("uptime_seconds", "Seconds since the daemon started."),
    "peers": _Gauge("peers", "Entries in the peer table."),
    "trusted_peers": _Gauge("trusted_peers", "Peers trusted (RFC 4380 §5.2.3)."),
    "max_peers": _Gauge("max_peers", "Bound of the peer table (MaxPeers)."),
    "queued_bytes": _Gauge("queued_bytes", "Bytes queued for peers being set up."),
    "evicted_peers": _Gauge("evicted_peers", "Peers evicted to make room.", "counter"),
    "expired_peers": _Gauge("expired_peers", "Peers expired for silence.", "counter"),
    "learned_peers": _Gauge(
        "learned_peers",
        "Peers only the kernel's map holds (learned or handed over), at its last sweep.",
    ),
    "learned_expired": _Gauge(
        "learned_expired", "Peers only the kernel's map held, expired for silence.", "counter"
    ),
    "mtu": _Gauge("mtu_bytes", "The MTU (advertised by the server, or received in its RA)."),
    "rtt_ms": _Gauge("server_rtt_seconds", "Round trip to the Teredo server.", scale=0.001),
    "rs_to_address_ms": _Gauge(
        "rs_to_address_seconds",
        "From the qualifying Router Solicitation to the address configured.",
        scale=0.001,
    ),
    "port_preserving": _Gauge("port_preserving", "1 when the NAT kept the local UDP port."),
    "local_discovery": _Gauge("local_discovery", "1 when local discovery is on (LocalDiscovery)."),
    "peers_symmetric_nat": _Gauge(
        "peers_symmetric_nat",
        "Peers reached at a mapping proven by an RFC 6081 nonce (symmetric NAT support).",
    ),
    "peers_upnp": _Gauge("peers_upnp", "Peers reached by the RFC 6081 §5.3 UPnP rule."),
    "peers_hairpinning": _Gauge(
        "peers_hairpinning", "Peers reached at an alternate address (RFC 6081 §5.6)."
    ),
    "peers_server_load_reduction": _Gauge(
        "peers_server_load_reduction",
        "Idle peers revalidated by direct bubbles, without their server (RFC 6081 §5.7).",
    ),
    "peers_port_preserving": _Gauge(
        "peers_port_preserving",
        "Peers reached from a random port a port-preserving NAT kept (RFC 6081 §5.4).",
    ),
    "peers_sequential_ports": _Gauge(
        "peers_sequential_ports",
        "Peers reached at the port an echo test predicted (RFC 6081 §5.5).",
    ),
    "random_ports": _Gauge(
        "random_ports_open",
        "Random UDP ports open for peers being set up (RFC 6081 §5.4, §5.5).",
    ),
    "ipv6_forwarding": _Gauge("ipv6_forwarding", "1 when IPv6 forwarding is on (relays)."),
    "accelerated": _Gauge("accelerated", "1 when the C accelerators run."),
    "allow_private_addresses": _Gauge(
        "allow_private_addresses", "1 when private IPv4 addresses are accepted."
    ),
    "rate_limit": _Gauge(
        "rate_limit_per_second", "Answers per second allowed to one IPv4 address (0: no limit)."
    ),
    "rate_limit_sources_tracked": _Gauge(
        "rate_limit_sources_tracked", "IPv4 sources with a token bucket in the rate limiter."
    ),
    "require_authentication": _Gauge(
        "require_authentication",
        "1 when only signed Router Solicitations are answered (RFC 4380 §5.2.2).",
    ),
    "client_keys": _Gauge("client_keys", "Clients in the server's key file (ClientKeyFile)."),
}

# Numbers in status documents that are not metrics: the process id (a label on nothing; the
# process exporter's business).
NOT_METRICS: Final = frozenset({"pid"})

# The server's counters of each of its two sockets: udp_<IPv4 address>_<name>.
_PER_SOCKET: Final = re.compile(r"udp_(\d{1,3}(?:\.\d{1,3}){3})_(\w+)")
_NOT_NAME: Final = re.compile(r"[^a-zA-Z0-9_]+")


def metric_name(text: str) -> str:
    """``teredo_`` and `text` made a valid metric name (other characters become ``_``)."""
    return PREFIX + (_NOT_NAME.sub("_", text).strip("_").lower() or "unnamed")


def status_metrics(document: Mapping[str, Any]) -> list[MetricFamily]:
    """The metric families of a status document (see the module docstring), in a stable order."""
    families: dict[str, MetricFamily] = {}

    def family(name: str, kind: MetricType, text: str) -> MetricFamily:
        found = families.get(name)
        if found is None:
            found = families[name] = MetricFamily(name, kind, text)
        return found

    role = str(document.get("role", "daemon"))
    version = str(document.get("version", "unknown"))
    family(PREFIX + "build_info", "gauge", "The teredo version and the role it runs.").add(
        1, version=version, role=role
    )
    if isinstance(document.get("state"), str):
        family(PREFIX + "state", "gauge", "The role's state (1 for the current one).").add(
            1, state=document["state"]
        )
    for key, gauge in GAUGES.items():
        value = _number(document.get(key))
        if value is not None:
            family(PREFIX + gauge.name, gauge.type, gauge.help).add(value * gauge.scale)
    drops = family(PREFIX + "drops", "counter", "Input dropped, by reason.")
    for reason, count in _items(document.get("drops")):
        drops.add(count, reason=reason)
    for name, count in _items(document.get("counters")):
        per_socket = _PER_SOCKET.fullmatch(name)
        if per_socket:
            socket, name = per_socket.groups()
            text = f"The status counter udp_<socket>_{name}."
            family(metric_name("udp_" + name), "counter", text).add(count, socket=socket)
        else:
            family(metric_name(name), "counter", f"The status counter {name}.").add(count)
    return list(families.values())


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        return float(value)
    return None


def _items(value: object) -> Iterable[tuple[str, float]]:
    if not isinstance(value, Mapping):
        return ()
    return [(str(k), n) for k, v in value.items() if (n := _number(v)) is not None]


# --- the text format --------------------------------------------------------------------------


def exposition(families: Iterable[MetricFamily]) -> str:
    """The Prometheus text exposition of `families` (version 0.0.4), one family after another."""
    lines: list[str] = []
    for metric in families:
        help_text = metric.help.replace("\\", "\\\\").replace("\n", "\\n")
        # Text format 0.0.4: the comments name the samples, `_total` included for counters.
        name = metric.name + ("_total" if metric.type == "counter" else "")
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {metric.type}")
        for sample in metric.samples:
            labels = ",".join(f'{key}="{_escape(value)}"' for key, value in sample.labels)
            shown = f"{{{labels}}}" if labels else ""
            lines.append(f"{sample.name}{shown} {_format_value(sample.value)}")
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(value)
