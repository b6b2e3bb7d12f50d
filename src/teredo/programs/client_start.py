"""The client's launch: its sockets, its TUN device and its core, qualified before the event loop.

Most of a Python client's launch is imports (README, Footprint): the event loop's (asyncio,
~30 ms here) and logging's (~9 ms) are more than Miredo's whole launch to a Teredo address.
Neither is needed to qualify, so the client does that first:

1. `open_client`: the UDP service port, the core (`teredo.core.client.TeredoClient`), the TUN
   device (down, no address) and, with ``LocalDiscovery yes``, the discovery socket, each as
   `teredo.programs.client_daemon.serve` would have them (it calls this too when there is no
   launch to carry on, e.g. after a retry);
2. `ClientStart.qualify`: drives the core with a small synchronous loop (`select.poll` on the
   UDP socket, the core's timer) until its first event: the router solicitation leaves and the
   advertisement that qualifies comes back. On `Qualified` the interface is configured at once
   (`InterfaceConfigurator.configure_client_now`, the daemon's own recipe); any other event is
   left for the daemon. The loop gives up after `EARLY_WINDOW` without an event (a server that
   does not answer at once), leaving the core as it is: the daemon's loop carries on from the
   same state, with the same timers;
3. the daemon (`serve(loaded, service, start)`) takes the sockets, the device, the core and the
   configured address over: it logs the qualification, says READY=1, runs the hook script and
   does everything else as after an address it configured itself.

Only one loop drives the core at a time, and this one does what the daemon's `DataPath` does
with what the core gives back (datagrams sent, packets written to the device; events kept in
order). What the logging modules say meanwhile is held and logged once logging is set up
(`teredo.core.logger`); SIGHUP, which would kill the process before its handler exists, is
ignored until the daemon's handler replaces it (there is nothing to reload: the file has just
been read). The UDP socket's datagrams queue in the kernel for the daemon's loop once this one
stops; the TUN device, down until configured, has nothing to read before.
"""

from __future__ import annotations

import os
import select
import time
from ipaddress import IPv4Address, IPv4Network

from teredo.adapters.netlink import InterfaceConfigurator, interface_index_now, ipv4_networks_now
from teredo.adapters.resolver import local_address_toward, resolve_ipv4
from teredo.adapters.tun import TunDevice, open_tun
from teredo.adapters.udp import UdpSocket, join_multicast, open_udp_socket
from teredo.core.address import TEREDO_PORT, Endpoint, endpoint
from teredo.core.client import CLIENT_IDLE_TIMEOUT, ClientSettings, TeredoClient
from teredo.core.config import DEFAULT_CONFIG_PATH, ClientConfig, parse_client_config
from teredo.core.errors import UserError
from teredo.core.extensions import Extensions
from teredo.core.logger import get_logger
from teredo.core.peering import PeeringSettings
from teredo.core.qualification import NatBehaviourDetected, Qualified, ServerPair
from teredo.programs.loading import Loaded, load

TYPE_CHECKING = False  # typing's flag without importing typing (ms a launch pays)
if TYPE_CHECKING:
    import signal as _signal  # the same functions, typed (typeshed has no _signal)
    from collections.abc import Callable
    from typing import Final

    from teredo.core.client import ClientEvent
    from teredo.core.secure_qualification import ClientKey

    Resolver = Callable[[str, str], IPv4Address]  # (name, what) -> address; NameResolutionError
else:
    import _signal  # signal.py without its enums, which cost a launch ~0.5 ms

log = get_logger("teredo.programs.client_daemon")  # the daemon's messages, under its name

SECRET_BYTES: Final = 32
# How long the launch's loop waits for its first event before the daemon's loop takes over:
# a server answers in a round trip; the router solicitation is repeated after 4 s (RFC 4380
# §5.2.1), and until the daemon runs there is no control socket nor SIGTERM handler.
EARLY_WINDOW: Final = 1.0


# --- configuration ----------------------------------------------------------------------------


def load_client_config(config_path: str | None, server: str | None) -> Loaded[ClientConfig]:
    """Read the configuration the way `teredo client [-c FILE] [SERVER]` does."""
    return load(
        config_path,
        server,
        default_path=DEFAULT_CONFIG_PATH,
        parse=lambda text, source, server: parse_client_config(text, source, server=server),
        missing=(
            f"there is no {DEFAULT_CONFIG_PATH}; give a configuration file with -c FILE "
            "or the Teredo server on the command line (teredo client SERVER)"
        ),
    )


def resolve_servers(
    config: ClientConfig, resolve: Resolver = resolve_ipv4
) -> tuple[ServerPair, ...]:
    """ServerAddress (+ ServerAddress2, default +1) then FallbackServers, resolved to IPv4."""

    def ipv4(host: IPv4Address | str, what: str) -> IPv4Address:
        return host if isinstance(host, IPv4Address) else resolve(host, what)

    primary = ipv4(config.server_address, "Teredo server (ServerAddress)")
    if config.server_address2 is None:
        first = ServerPair.of(primary)
    else:
        first = ServerPair(primary, ipv4(config.server_address2, "ServerAddress2"))
    servers = [first]
    for host in config.fallback_servers:
        servers.append(ServerPair.of(ipv4(host, "fallback server (FallbackServers)")))
    return tuple(servers)


def client_settings(
    config: ClientConfig, servers: tuple[ServerPair, ...], key: ClientKey | None = None
) -> ClientSettings:
    return ClientSettings(
        servers=servers,
        tunnel=PeeringSettings(
            allow_private=config.allow_private_addresses,
            max_peers=config.max_peers,
            idle_timeout=CLIENT_IDLE_TIMEOUT,
            max_queue_bytes=config.max_queue_bytes,
        ),
        refresh_interval=float(config.refresh_interval),
        local_discovery=config.local_discovery,
        key=key,
        extensions=Extensions(
            upnp=config.upnp,
            hairpinning=config.hairpinning,
            server_load_reduction=config.server_load_reduction,
            port_preserving=config.port_preserving,
            sequential_ports=config.sequential_ports,
        ),
    )


def local_ipv4_networks() -> tuple[IPv4Network, ...]:
    """The IPv4 subnets of this host's interfaces (local discovery accepts only those)."""
    try:
        return ipv4_networks_now()
    except UserError as error:
        log.warning("cannot list this host's IPv4 networks: %s", error)
        return ()


# --- the launch -------------------------------------------------------------------------------


class ClientStart:
    """What the launch opened and how far the core got; the daemon takes it over."""

    def __init__(
        self,
        core: TeredoClient,
        udp: UdpSocket,
        tun: TunDevice,
        servers: tuple[ServerPair, ...],
        local: Endpoint,
    ) -> None:
        self.core = core
        self.udp = udp
        self.tun = tun
        self.servers = servers
        self.local = local  # our endpoint as the servers should see it before any NAT
        self.opened = time.monotonic()
        self.iface = InterfaceConfigurator(tun.name)
        self.interface_index = 0
        self.discovery: UdpSocket | None = None  # 224.0.0.253:3544 with LocalDiscovery yes
        self.started = False  # core.start() called: the router solicitation has left
        self.qualified: Qualified | None = None  # and the interface configured for it ...
        self.addressed_at: float | None = None  # ... at this time.monotonic()
        self.pending: ClientEvent | None = None  # another first event, for the daemon

    def qualify(self, window: float = EARLY_WINDOW) -> None:
        """Start the core and drive it until its first event or for `window` seconds (see the
        module doc); on `Qualified`, configure the interface."""
        core, udp, tun = self.core, self.udp, self.tun
        previous = _signal.signal(_signal.SIGHUP, _signal.SIG_IGN)
        try:
            now = time.monotonic()
            core.start(now)
            self.started = True
            deadline = now + window
            poller = select.poll()
            poller.register(udp.fileno(), select.POLLIN)

            def handle(view: memoryview, source: Endpoint) -> None:
                now = time.monotonic()
                if core.accept_from_teredo(view, source, now):
                    tun.write(view)
                else:
                    core.receive_datagram(bytes(view), source, now)
                    self._flush()

            while True:
                self._flush()
                event = core.next_event()
                while isinstance(event, NatBehaviourDetected):  # the daemon skips them too
                    event = core.next_event()
                if isinstance(event, Qualified):
                    self.iface.configure_client_now(event.address, event.mtu)
                    self.qualified, self.addressed_at = event, time.monotonic()
                    return
                if event is not None:
                    self.pending = event
                    return
                now = time.monotonic()
                timer = core.get_timer()
                if timer is not None and timer <= now:
                    core.handle_timer(now)
                    continue
                if now >= deadline:
                    return
                wake = deadline if timer is None else min(timer, deadline)
                if poller.poll(max(0.0, wake - now) * 1000 + 1):  # ms, rounded up
                    udp.drain(handle)
        finally:
            _signal.signal(_signal.SIGHUP, previous)

    def _flush(self) -> None:
        """Send and deliver what the core produced (as `DataPath.flush`, before its events)."""
        core = self.core
        for payload, destination in core.datagrams_to_send():
            self.udp.send(payload, destination)
        for packet in core.packets_to_deliver():
            self.tun.write(packet)

    def close(self) -> None:
        """Close what was opened (when the launch fails before the daemon takes over)."""
        if self.discovery is not None:
            self.discovery.close()
        self.tun.close()
        self.udp.close()


def open_client(
    config: ClientConfig, servers: tuple[ServerPair, ...], key: ClientKey | None
) -> ClientStart:
    """Bind the UDP service port, build the core, create the TUN device (down, no address) and
    open the local discovery socket when configured. `TransientError` when the bind address is
    not on the host yet (nothing is left open then); `UserError` for the rest."""
    udp = open_udp_socket(config.bind_address, config.bind_port)
    tun: TunDevice | None = None
    try:
        bound_ip = IPv4Address(udp.local[0])
        if bound_ip == IPv4Address("0.0.0.0"):
            bound_ip = local_address_toward(servers[0].primary) or bound_ip
        local = endpoint(bound_ip, udp.local[1])
        networks = local_ipv4_networks() if config.local_discovery else ()
        core = TeredoClient(
            client_settings(config, servers, key),
            random_bytes=os.urandom,
            secret=os.urandom(SECRET_BYTES),
            now=time.monotonic(),
            local=local,
            local_networks=networks,
        )
        tun = open_tun(config.interface_name, offload=config.offload)
        start = ClientStart(core, udp, tun, servers, local)
        start.interface_index = interface_index_now(tun.name)
        if config.local_discovery:
            start.discovery = open_udp_socket(
                "0.0.0.0", TEREDO_PORT, pktinfo=True, reuse_address=True,
                address_setting="the local discovery address", port_setting=None,
            )  # fmt: skip
            join_multicast(start.discovery)
            join_multicast(udp)  # TTL 1, no loop for the bubbles we send to the group
    except BaseException:
        if tun is not None:
            tun.close()
        udp.close()
        raise
    log.info(
        "Teredo client on UDP %s:%d (seen as %s), interface %s, servers %s",
        udp.local[0], udp.local[1], local, tun.name, ", ".join(str(s) for s in servers),
    )  # fmt: skip
    return start


def launch_client(loaded: Loaded[ClientConfig]) -> ClientStart | None:
    """The launch (see the module doc): the servers resolved, the client key read, everything
    opened and the core driven until its first event. None when a server name does not
    resolve yet or the bind address is not on the host (`TransientError`): the daemon retries
    those with backoff, and opens everything itself."""
    from teredo.core.errors import TransientError
    from teredo.programs.keys import client_key

    config = loaded.config
    try:
        servers = resolve_servers(config)
        start = open_client(config, servers, client_key(config))
    except TransientError:
        return None
    try:
        start.qualify()
    except BaseException:
        start.close()
        raise
    return start


__all__ = [
    "EARLY_WINDOW",
    "ClientStart",
    "client_settings",
    "launch_client",
    "load_client_config",
    "open_client",
    "resolve_servers",
]
