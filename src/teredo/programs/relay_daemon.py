"""`teredo relay`: the relay and host-specific relay daemon around `teredo.core.relay` (the command
line and the service frame are `teredo.programs.service`).

What it does, in order:

1. reads ``miredo.conf`` unchanged (``RelayType relay|cone|restricted``, ``InterfaceName``,
   ``InterfaceMTU``, ``BindAddress``, ``BindPort``, ``Prefix``, ``SyslogFacility``) plus our
   ``RelayType host-specific``, ``ControlSocket``, ``User``, ``MaxPeers``, ``MaxQueueBytes``,
   ``AllowPrivateAddresses``;
2. binds the UDP service port and creates the TUN interface: link up with the MTU,
   ``fe80::ffff:ffff:ffff/64`` (as Miredo's relay) and a route for the Teredo prefix. A relay
   needs ``net.ipv6.conf.all.forwarding=1`` and says so loudly when it is off; a host-specific
   relay does not forward (it serves only this host, RFC 4380 §5.4) and its route is local to
   the host: nothing here advertises it;
3. listens on the control socket (``teredo status``), then drops privileges to ``User``, keeping
   CAP_NET_ADMIN so that SIGHUP can change the MTU and SIGTERM can remove the route and address
   it added even on an interface that outlives the process, and tells systemd it is ready;
4. runs the shared TUN <-> UDP loop (`teredo.programs.datapath`) until SIGTERM/SIGINT, then
   removes what it configured. A general relay's prefix route carries its health
   (`teredo.programs.relay_health`): announced while healthy, withdrawn otherwise, and on
   SIGTERM withdrawn `DrainTime` seconds before the relay stops relaying. SIGHUP re-reads
   the file and applies ``MaxPeers``, ``MaxQueueBytes``, ``AllowPrivateAddresses``,
   ``InterfaceMTU``, ``DrainTime`` and ``SyslogFacility``; other changes are logged as needing
   a restart.

The host's own IPv6 addresses (what a host-specific relay serves, and the source of the ICMPv6
errors a relay returns to native senders) are read from ``/proc/net/if_inet6`` at start and every
`ADDRESS_REFRESH` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Interface, IPv6Network
from typing import TYPE_CHECKING, Any, Final

from teredo.adapters.daemon import catch_shutdown
from teredo.adapters.netlink import host_addresses
from teredo.adapters.privileges import drop_privileges
from teredo.core.config import DEFAULT_CONFIG_PATH, RelayConfig, parse_relay_config
from teredo.core.errors import UserError
from teredo.core.record import replace
from teredo.core.relay import TeredoRelay, relay_settings
from teredo.programs.datapath import DataPath, open_kernel_path
from teredo.programs.loading import Loaded, load, reload_config
from teredo.programs.observers import Observers, start_observers
from teredo.programs.relay_health import (
    WITHDRAWN_METRIC,
    RelayHealthWatcher,
    native_ipv6_usable,
    udp_socket_usable,
)
from teredo.programs.service import Service, retry
from teredo.programs.status import merge_counters

if TYPE_CHECKING:
    from teredo.adapters.bpf import KernelDataPath

log = logging.getLogger(__name__)

ADDRESS_REFRESH: Final = 10.0  # seconds between reads of the host's addresses
RELAY_LINK_LOCAL: Final = IPv6Interface("fe80::ffff:ffff:ffff/64")  # as Miredo's relay
SECRET_BYTES: Final = 32


def load_relay_config(config_path: str | None) -> Loaded[RelayConfig]:
    """Read the configuration the way `teredo relay [-c FILE]` does (default miredo.conf)."""
    return load(
        config_path,
        None,
        default_path=DEFAULT_CONFIG_PATH,
        parse=lambda text, source, _: parse_relay_config(text, source),
        missing=(
            f"there is no {DEFAULT_CONFIG_PATH}; give a configuration file with -c FILE "
            "(`RelayType relay`, or host-specific)"
        ),
    )


@dataclass(slots=True)
class RelayDaemon:
    """The running relay: the core, the loop and the interface."""

    loaded: Loaded[RelayConfig]
    core: TeredoRelay
    loop: DataPath | None = None
    kernel: KernelDataPath | None = None
    iface: Any = None  # netlink.InterfaceConfigurator (imported lazily)
    control: Observers | None = None  # the control socket and metrics endpoint
    health: RelayHealthWatcher | None = None  # general relays only
    interface: str = ""
    forwarding: bool | None = None
    started: float = field(default_factory=time.monotonic)

    @property
    def config(self) -> RelayConfig:
        return self.loaded.config

    def refresh_addresses(self) -> None:
        addresses = host_addresses(exclude_interface=self.interface)
        if self.core.host_specific:
            before = self.core.host_addresses
            self.core.set_host_addresses(addresses)
            if self.kernel is not None:
                self.kernel.set_local_addresses(self.core.host_addresses)
            if self.core.host_addresses != before:
                log.info(
                    "serving this host's addresses: %s",
                    ", ".join(str(a) for a in addresses) or "none (no global IPv6 address)",
                )
        if addresses:
            # ICMPv6 errors to native senders need a routable source.
            self.core.error_source = addresses[0]

    def status(self) -> dict[str, Any]:
        config = self.config
        document: dict[str, Any] = {
            "role": "host-specific relay" if self.core.host_specific else "relay",
            "state": "relaying",
            "relay_type": config.relay_type.value,
            "interface": self.interface,
            "mtu": config.interface_mtu,
            "prefix": str(config.prefix),
            "bind": f"{self.loop.udp.local[0]}:{self.loop.udp.local[1]}" if self.loop else "-",
            "data_path": self.loop.description() if self.loop else "-",
            "config": self.loaded.path,
        }
        if not self.core.host_specific:
            document["ipv6_forwarding"] = self.forwarding
        if self.health is not None:
            document["health"] = self.health.status()
        core = self.core.status()
        document.update((key, value) for key, value in core.items() if key not in document)
        io = self.loop.counters() if self.loop is not None else {}
        document["counters"] = merge_counters(core["counters"], io)
        document["drops"] = dict(sorted(core["drops"].items()))
        return document

    def reload(self) -> None:
        """SIGHUP: apply what needs no new socket or interface; say what needs a restart."""
        old = self.config
        self.loaded = reload_config(
            self.loaded,
            lambda path, _: load_relay_config(path),
            {
                "relay_type": "RelayType",
                "prefix": "Prefix",
                "interface_name": "InterfaceName",
                "bind_address": "BindAddress",
                "bind_port": "BindPort",
                "offload": "Offload",
                "control_socket": "ControlSocket",
                "user": "User",
            },
        )
        kept = self.loaded.config
        self.core.reconfigure(relay_settings(kept))
        kernel = self.kernel
        if kernel is not None and kernel.settings.allow_private != kept.allow_private_addresses:
            # The map learns what the engine would trust: private mappings by the same rule.
            allow = kept.allow_private_addresses
            kernel.write_settings(replace(kernel.settings, allow_private=allow))
        if self.health is not None:
            self.health.drain_time = kept.drain_time
        if kept.interface_mtu != old.interface_mtu and self.iface is not None:
            from teredo.adapters.netlink import set_mtu

            asyncio.get_running_loop().create_task(_set_mtu(set_mtu, self.interface, kept))
        self.refresh_addresses()
        log.info(
            "reloaded: at most %d peers, %d queued bytes per peer, private addresses %s",
            kept.max_peers,
            kept.max_queue_bytes,
            "allowed" if kept.allow_private_addresses else "refused",
        )


async def _set_mtu(set_mtu: Any, interface: str, config: RelayConfig) -> None:
    try:
        await set_mtu(interface, config.interface_mtu)
        log.info("interface %s MTU set to %d", interface, config.interface_mtu)
    except UserError as error:
        log.error("%s", error)


async def serve(loaded: Loaded[RelayConfig], service: Service) -> int:
    """The relay until SIGTERM/SIGINT (`teredo.programs.service.run_service` calls it)."""
    from teredo.adapters.netlink import (
        InterfaceConfigurator,
        add_route,
        ipv6_forwarding_enabled,
        remove_route,
    )
    from teredo.adapters.tun import TunDevice, open_tun
    from teredo.adapters.udp import UdpSocket, open_udp_socket

    config = loaded.config
    now = time.monotonic()
    core = TeredoRelay.from_config(
        config, random_bytes=os.urandom, secret=os.urandom(SECRET_BYTES), now=now
    )
    daemon = RelayDaemon(loaded=loaded, core=core)
    udp: UdpSocket | None = None
    tun: TunDevice | None = None
    refresher: asyncio.Task[None] | None = None
    try:
        udp = await retry(lambda: open_udp_socket(config.bind_address, config.bind_port), service)
        tun = open_tun(config.interface_name, offload=config.offload)
        daemon.interface = tun.name
        iface = InterfaceConfigurator(tun.name)
        daemon.iface = iface
        await iface.set_up(config.interface_mtu)
        await iface.add_address(RELAY_LINK_LOCAL)
        # The Teredo prefix goes into the tunnel. A general relay advertises it through the
        # host's routing (RFC 4380 §5.4), withdrawn until its health is known; a host-specific
        # relay keeps it to itself.
        await iface.add_route(
            IPv6Network(config.prefix),
            None if core.host_specific else WITHDRAWN_METRIC,
        )
        if not core.host_specific:
            daemon.forwarding = ipv6_forwarding_enabled()
            if not daemon.forwarding:
                log.warning(
                    "IPv6 forwarding is off (net.ipv6.conf.all.forwarding = 0): this relay "
                    "will forward nothing in either direction; enable it with "
                    "`sysctl -w net.ipv6.conf.all.forwarding=1`"
                )
        daemon.refresh_addresses()
        daemon.control = await start_observers(config, daemon.status, started=daemon.started)
        if config.offload:
            daemon.kernel = open_kernel_path(
                "host-specific relay" if core.host_specific else "relay",
                tun=tun,
                udp=udp,
                prefix=config.prefix,
                max_peers=config.max_peers,
                local_addresses=core.host_addresses,
                allow_private=config.allow_private_addresses,
            )
        drop_privileges(config.user, keep=("CAP_NET_ADMIN",))
        daemon.loop = DataPath(core, udp, tun, kernel=daemon.kernel)
        daemon.loop.start()
        refresher = asyncio.get_running_loop().create_task(_refresh(daemon))
        if not core.host_specific:
            bound = udp
            daemon.health = RelayHealthWatcher(
                interface=tun.name,
                prefix=IPv6Network(config.prefix),
                udp_usable=lambda: udp_socket_usable(bound.fileno(), IPv4Address(bound.local[0])),
                native_usable=lambda: native_ipv6_usable(daemon.interface),
                add_route=add_route,
                remove_route=remove_route,
                drain_time=config.drain_time,
            )
            daemon.health.start(asyncio.get_running_loop())
        what = "host-specific relay" if core.host_specific else "relay"
        log.info(
            "Teredo %s on UDP %s:%d, interface %s (MTU %d), prefix %s",
            what, udp.local[0], udp.local[1], tun.name, config.interface_mtu, config.prefix,
        )  # fmt: skip
        drain = {signal.SIGUSR2: daemon.health.toggle_drain} if daemon.health else None
        # Signals are handled before READY=1 and the line saying we relay (as the server's).
        signals = catch_shutdown(on_reload=service.reloading(daemon.reload), on_signal=drain)
        service.ready(
            f"relaying: {what} on UDP {udp.local[0]}:{udp.local[1]}, interface {tun.name}, "
            f"prefix {config.prefix}"
        )
        await signals
        service.stopping()
        if daemon.health is not None:
            await daemon.health.stop()
    finally:
        if refresher is not None:
            refresher.cancel()
        if daemon.health is not None:
            daemon.health.cancel()
        if daemon.loop is not None:
            daemon.loop.stop()
        if daemon.kernel is not None:
            daemon.kernel.close()
        if daemon.control is not None:
            await daemon.control.close()
        if daemon.iface is not None:
            await daemon.iface.undo()
        if tun is not None:
            tun.close()
        if udp is not None:
            udp.close()
        if daemon.loop is not None:  # a summary after a real run, none after a failed start
            log.info(
                "relayed %d packets to Teredo peers and %d to the native side; %d drops",
                core.fast_tx
                + core.counters.get("sent", 0)
                + core.counters.get("sent_from_queue", 0),
                core.fast_rx + core.counters.get("received", 0),
                sum(core.status()["drops"].values()),
            )
    return 0


async def _refresh(daemon: RelayDaemon) -> None:
    while True:
        await asyncio.sleep(ADDRESS_REFRESH)
        daemon.refresh_addresses()
