"""`teredo client [-f] [-p PIDFILE] [-u USER] [-c FILE] [SERVER]`: the Teredo client daemon around
`teredo.core.client` (the command line and the service frame are `teredo.programs.service`).

What it does, in order:

1. reads ``miredo.conf`` unchanged (``ServerAddress``, ``ServerAddress2``, ``InterfaceName``,
   ``BindAddress``, ``BindPort``, ``SyslogFacility``) plus our ``HookScript``, ``ControlSocket``,
   ``User``, ``MaxPeers``, ``MaxQueueBytes``, ``RefreshInterval``, ``LocalDiscovery``,
   ``FallbackServers``, ``AllowPrivateAddresses`` and the RFC 6081 switches (``UPnP``,
   ``Hairpinning``, ``ServerLoadReduction``, ``PortPreserving``, ``SequentialPorts``); SERVER
   on the command line overrides ``ServerAddress``. Hostnames are resolved here (IPv4); a name
   that does not resolve yet is retried with backoff (`teredo.programs.service.retry`), as is a
   ``BindAddress`` not yet on the host.
2. binds the UDP service port, creates the TUN interface ``InterfaceName`` (down, no address),
   opens the local discovery socket (0.0.0.0:3544 in 224.0.0.253) when ``LocalDiscovery yes``,
   starts the hook script helper when ``HookScript`` is set, listens on the control socket,
   imports the UPnP library when ``UPnP yes``.
3. starts mapping its port on the NAT's UPnP gateway when ``UPnP yes`` (`teredo.adapters.upnp`,
   in a thread, RFC 6081 §5.3.3; unmapped at exit), and qualifies without waiting for it: the
   router solicitation leaves at once, and the kernel data path (``Offload``) is loaded and
   attached in a thread (`open_kernel_path_meanwhile`) once the address is configured (or
   after ``KERNEL_PATH_WAIT`` without one), so that the address does not wait for it nor
   share the interpreter with it; packets take the user-space path until it is attached.
   Then it drops privileges to ``User`` keeping CAP_NET_ADMIN (address changes need it).
   On `Qualified` it configures the interface through netlink as Miredo's
   ``/etc/miredo/client-hook`` does (``InterfaceConfigurator.configure_client`` in
   `teredo.adapters.netlink`: link up with the RA's MTU, ``fe80::ffff:ffff:ffff/64``,
   ``ADDRESS/32`` with its ``2001::/32`` route and ``default dev IFACE metric 1029``,
   both routes via one next hop so that the kernel keeps one neighbour entry), logs how
   long it took from the router solicitation that qualified to the address being usable,
   tells systemd it is ready (``READY=1``, with a ``STATUS=`` line: state, address, NAT) and
   runs the hook script with ``STATE=up``. `AddressChanged` reconfigures (``OLD_ADDRESS``
   set); `Offline` withdraws everything (``STATE=down``); exit withdraws it too and runs the
   hook with ``STATE=destroy``.
4. runs the shared TUN <-> UDP loop until SIGTERM/SIGINT, with the random ports the core
   opens behind a symmetric NAT (`teredo.programs.random_ports`, RFC 6081 §5.4/§5.5). SIGHUP
   re-reads the file and applies the servers, ``RefreshInterval``, ``MaxPeers``,
   ``MaxQueueBytes``, ``AllowPrivateAddresses``, ``SyslogFacility`` and the RFC 6081 switches;
   other changes are logged as needing a restart.

The hook script (Miredo's client-hook interface; names checked against Miredo 1.2.6): it gets
``STATE`` (up, down or destroy), ``OLD_STATE``, ``IFACE``, ``IFINDEX``, ``ADDRESS``,
``LLADDRESS``, ``MTU`` and, after a change, ``OLD_ADDRESS``, ``OLD_LLADDRESS``, ``OLD_MTU``. As in
Miredo it runs from a helper process that keeps root (started before the privilege drop), so
the script can configure the system; the helper accepts only those variables, with values it
validates, and gives the script a fixed ``PATH``. ``/etc/miredo/client-hook`` itself works as a
HookScript: it redoes what netlink already did.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Address
from typing import TYPE_CHECKING, Any, Final

from teredo.adapters.daemon import catch_shutdown
from teredo.adapters.heap import release_free_memory, use_one_arena
from teredo.adapters.privileges import drop_privileges
from teredo.core.address import CLIENT_LINK_LOCAL, DISCOVERY_GROUP, TEREDO_PORT
from teredo.core.client import ClientEvent, TeredoClient, summarize_peer
from teredo.core.config import ClientConfig
from teredo.core.errors import UserError
from teredo.core.qualification import (
    AddressChanged,
    NatBehaviourDetected,
    Offline,
    Qualified,
    ServerPair,
)
from teredo.programs import client_start
from teredo.programs.client_start import (  # re-exported: the daemon's configuration
    SECRET_BYTES,
    ClientStart,
    client_settings,
    load_client_config,
    open_client,
    resolve_servers,
)
from teredo.programs.datapath import DataPath, open_kernel_path_meanwhile
from teredo.programs.keys import client_key
from teredo.programs.loading import Loaded, reload_config
from teredo.programs.observers import Observers, start_observers
from teredo.programs.random_ports import RandomPortSockets
from teredo.programs.service import Service, retry
from teredo.programs.status import merge_counters

if TYPE_CHECKING:
    from teredo.adapters.bpf import KernelDataPath
    from teredo.adapters.upnp import UpnpPortMapping

log = logging.getLogger(__name__)

MAX_PEERS_IN_STATUS: Final = 32
UPNP_SHUTDOWN_WAIT: Final = 5.0  # seconds a mapping still being made may delay shutdown
KERNEL_PATH_WAIT: Final = 1.0  # seconds the kernel path waits for the address at most
HOOK_TIMEOUT: Final = 30.0  # seconds a hook script may run
HOOK_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HOOK_VARIABLES: Final = {
    "STATE": r"up|down|destroy",
    "OLD_STATE": r"up|down|destroy",
    "IFACE": r"[A-Za-z0-9_.-]{1,15}",
    "IFINDEX": r"[0-9]{1,10}",
    "ADDRESS": r"[0-9a-fA-F:]{2,39}",
    "LLADDRESS": r"[0-9a-fA-F:]{2,39}",
    "MTU": r"[0-9]{4,5}",
    "OLD_ADDRESS": r"[0-9a-fA-F:]{2,39}",
    "OLD_LLADDRESS": r"[0-9a-fA-F:]{2,39}",
    "OLD_MTU": r"[0-9]{4,5}",
}


# --- configuration ----------------------------------------------------------------------------


def server_list(servers: tuple[ServerPair, ...], in_use: ServerPair) -> list[dict[str, Any]]:
    """The status document's ``servers``: each server pair as an object, the one in use marked
    (RFC 4380 §5.2: the client talks to both addresses of one pair, on UDP 3544)."""
    return [
        {
            "address": str(pair.primary),
            "secondary": str(pair.secondary) if pair.secondary is not None else None,
            "port": TEREDO_PORT,
            "in_use": pair == in_use,
        }
        for pair in servers
    ]


async def local_ipv4_networks() -> tuple[IPv4Network, ...]:
    """The IPv4 subnets of this host's interfaces (local discovery accepts only those)."""
    return client_start.local_ipv4_networks()


# --- the hook script helper -------------------------------------------------------------------


_RUNNER_CODE: Final = """
import json, os, re, subprocess, sys
script, path, allowed = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
timeout = float(sys.argv[4])
for line in sys.stdin:
    try:
        request = json.loads(line)
        env = {"PATH": path}
        for key, value in request.items():
            if key in allowed and isinstance(value, str) and re.fullmatch(allowed[key], value):
                env[key] = value
        # The script's output goes to our stderr (the daemon's log): stdout carries the replies.
        code = subprocess.run([script], env=env, timeout=timeout, stdin=subprocess.DEVNULL,
                              stdout=sys.stderr.fileno(), check=False).returncode
    except Exception as error:
        print(json.dumps({"error": str(error)}), flush=True)
        continue
    print(json.dumps({"code": code}), flush=True)
"""


class HookRunner:
    """Runs HookScript from a helper started before the privilege drop (Miredo's privproc)."""

    def __init__(self, script: str) -> None:
        self.script = script
        self._process: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        if not os.access(self.script, os.X_OK):
            raise UserError(
                f"HookScript {self.script} is not an executable file; fix the path or chmod +x it"
            )
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-I", "-c", _RUNNER_CODE, self.script, HOOK_PATH,
            json.dumps(HOOK_VARIABLES), str(HOOK_TIMEOUT),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip

    async def run(self, env: dict[str, str]) -> None:
        """Run the script with `env`; failures are logged, never raised."""
        process = self._process
        if process is None or process.stdin is None or process.stdout is None:
            return
        async with self._lock:
            started = time.monotonic()
            try:
                process.stdin.write(json.dumps(env).encode() + b"\n")
                await process.stdin.drain()
                line = await asyncio.wait_for(process.stdout.readline(), HOOK_TIMEOUT + 5)
                answer = json.loads(line) if line else {"error": "the hook helper exited"}
            except (OSError, ValueError, TimeoutError) as error:
                answer = {"error": str(error)}
            elapsed = (time.monotonic() - started) * 1000
            if "error" in answer:
                log.error("hook script %s failed: %s", self.script, answer["error"])
            elif answer.get("code"):
                log.warning(
                    "hook script %s (STATE=%s) exited with status %s",
                    self.script, env.get("STATE"), answer["code"],
                )  # fmt: skip
            else:
                log.info(
                    "hook script %s (STATE=%s) done in %.1f ms",
                    self.script, env.get("STATE"), elapsed,
                )  # fmt: skip

    async def close(self) -> None:
        process = self._process
        self._process = None
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), 5.0)
        except TimeoutError:
            process.kill()
            await process.wait()


# --- the daemon -------------------------------------------------------------------------------


@dataclass(slots=True)
class ClientDaemon:
    """The running client: the core, the loop, the interface and the hook."""

    loaded: Loaded[ClientConfig]
    core: TeredoClient
    servers: tuple[ServerPair, ...]
    service: Service = field(default_factory=Service)
    loop: DataPath | None = None
    kernel: KernelDataPath | None = None
    iface: Any = None  # netlink.InterfaceConfigurator (imported lazily)
    interface: str = ""
    interface_index: int = 0
    hook: HookRunner | None = None
    control: Observers | None = None  # the control socket and metrics endpoint
    discovery: Any = None  # the local discovery UdpSocket
    upnp: UpnpPortMapping | None = None  # our port on the NAT's gateway (RFC 6081 §5.3)
    upnp_thread: threading.Thread | None = None
    random_ports: RandomPortSockets | None = None  # RFC 6081 §5.4/§5.5, as the core asks
    started: float = field(default_factory=time.monotonic)
    configured: IPv6Address | None = None
    configured_mtu: int | None = None
    rs_to_address_ms: float | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    addressed: asyncio.Event = field(default_factory=asyncio.Event)  # set once configured

    @property
    def config(self) -> ClientConfig:
        return self.loaded.config

    # -- events -> interface ---------------------------------------------------------------

    def on_events(self) -> None:
        """After every flush of the loop: open, close and send from the random ports, and apply
        the core's events (in order, one at a time)."""
        if self.random_ports is not None:
            self.random_ports.apply()
        while (event := self.core.next_event()) is not None:
            if isinstance(event, NatBehaviourDetected):
                continue  # logged by the qualifier, shown in the status
            task = asyncio.get_running_loop().create_task(self._apply(event))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _apply(self, event: Qualified | AddressChanged | Offline) -> None:
        async with self.lock:
            try:
                await self._apply_now(event)
            except UserError as error:
                log.error("%s", error)

    async def _apply_now(self, event: ClientEvent) -> None:
        if isinstance(event, Qualified | AddressChanged):
            await self._configure(event)
        elif isinstance(event, Offline):
            await self._withdraw(event.reason)

    async def _configure(self, event: Qualified | AddressChanged) -> None:
        await self.iface.configure_client(event.address, event.mtu)
        await self._configured(event, time.monotonic())

    async def adopt(self, start: ClientStart) -> None:
        """Take over what the launch did (`teredo.programs.client_start`): the address it
        configured is announced as if configured here (log, READY=1, hook); an event it left
        is applied in order, before those the core gives the loop."""
        async with self.lock:
            try:
                if start.qualified is not None and start.addressed_at is not None:
                    await self._configured(start.qualified, start.addressed_at)
                elif start.pending is not None:
                    await self._apply_now(start.pending)
            except UserError as error:
                log.error("%s", error)

    async def _configured(self, event: Qualified | AddressChanged, addressed_at: float) -> None:
        """The interface has the address of `event` (since `addressed_at`): say so."""
        old_address, old_mtu = self.configured, self.configured_mtu
        self.configured, self.configured_mtu = event.address, event.mtu
        if self.kernel is not None:
            self.kernel.set_local_addresses([event.address.packed])
        if isinstance(event, Qualified):
            elapsed = (addressed_at - event.solicited_at) * 1000
            self.rs_to_address_ms = round(elapsed, 2)
            log.info(
                "address %s configured on %s (MTU %d) %.1f ms after the router solicitation "
                "that qualified (server RTT %.1f ms)",
                event.address, self.interface, event.mtu, elapsed, event.rtt * 1000,
                extra={  # the event's fields, for LogFormat json
                    "event": "qualified", "address": str(event.address),
                    "interface": self.interface, "mtu": event.mtu,
                    "rs_to_address_ms": self.rs_to_address_ms,
                    "server_rtt_ms": round(event.rtt * 1000, 3),
                },
            )  # fmt: skip
        else:
            log.info(
                "address %s replaces %s on %s", event.address, event.old, self.interface,
                extra={
                    "event": "address_changed", "address": str(event.address),
                    "old_address": str(event.old), "interface": self.interface,
                },
            )  # fmt: skip
        self.addressed.set()
        self.service.ready(self.status_line())
        if self.hook is not None:
            await self.hook.run(self._hook_env("up", old_address, old_mtu))

    def attach_kernel(self, kernel: KernelDataPath) -> None:
        """The kernel's data path, loaded while the client qualified, takes over established
        peers; told the address if it is already configured (else `_configure` tells it)."""
        assert self.loop is not None
        self.kernel = kernel
        self.loop.attach_kernel(kernel)
        if self.configured is not None:
            kernel.set_local_addresses([self.configured.packed])

    async def _withdraw(self, reason: str, final: bool = False) -> None:
        old_address, old_mtu = self.configured, self.configured_mtu
        if self.kernel is not None:
            self.kernel.set_local_addresses([])
        await self.iface.undo()
        self.configured = self.configured_mtu = None
        if not final:
            self.service.status(self.status_line(reason))
        if old_address is not None:
            log.log(
                logging.INFO if final else logging.WARNING,
                "address %s withdrawn from %s: %s", old_address, self.interface, reason,
                extra={
                    "event": "withdrawn", "address": str(old_address),
                    "interface": self.interface, "reason": reason,
                },
            )  # fmt: skip
        if self.hook is not None and (old_address is not None or final):
            await self.hook.run(
                self._hook_env("destroy" if final else "down", old_address, old_mtu)
            )

    def _hook_env(
        self, state: str, old_address: IPv6Address | None = None, old_mtu: int | None = None
    ) -> dict[str, str]:
        """Miredo's client-hook variables for `state`, with the OLD_* ones."""
        env = {
            "STATE": state,
            "IFACE": self.interface,
            "IFINDEX": str(self.interface_index),
            "LLADDRESS": str(CLIENT_LINK_LOCAL),
            "OLD_STATE": "up" if old_address is not None else "down",
        }
        if state == "up" and self.configured is not None:
            env["ADDRESS"] = str(self.configured)
            env["MTU"] = str(self.configured_mtu)
        if old_address is not None:
            env["OLD_ADDRESS"] = str(old_address)
            env["OLD_LLADDRESS"] = str(CLIENT_LINK_LOCAL)
        if old_mtu is not None:
            env["OLD_MTU"] = str(old_mtu)
        return env

    # -- status and reload -----------------------------------------------------------------

    def status_line(self, reason: str | None = None) -> str:
        """systemd's STATUS=: state, address, server, NAT."""
        core = self.core.status()
        words = [str(core["state"])]
        if self.configured is not None:
            words.append(f"address {self.configured} on {self.interface}")
        elif reason:
            words.append(f"({reason})")
        words.append(f"server {core['server']}")
        words.append(f"NAT {core['nat']}")
        return ", ".join(words)

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        core = self.core.status(now)
        peers = sorted(
            self.core.peers.items(), key=lambda item: -max(item[1].last_rx, item[1].last_tx)
        )
        document: dict[str, Any] = {
            "role": "client",
            "state": core["state"],
            "address": core["address"],
            "interface": self.interface,
            "bind": f"{self.loop.udp.local[0]}:{self.loop.udp.local[1]}" if self.loop else "-",
            "data_path": self.loop.description() if self.loop else "-",
            "config": self.loaded.path or "<command line>",
            "servers": server_list(self.servers, self.core.qualifier.server),
            "rs_to_address_ms": self.rs_to_address_ms,
        }
        document.update((key, value) for key, value in core.items() if key not in document)
        document["peer_list"] = [
            summarize_peer(address, peer, now, self.core.peer_extensions(address))
            for address, peer in peers[:MAX_PEERS_IN_STATUS]
        ]
        io = self.loop.counters() if self.loop is not None else {}
        if self.random_ports is not None:
            io.update(self.random_ports.counters())
        document["counters"] = merge_counters(core["counters"], io)
        document["drops"] = dict(sorted(core["drops"].items()))
        return document

    def reload(self) -> None:
        """SIGHUP: new servers, timers and limits; say what needs a restart."""
        self.loaded = reload_config(
            self.loaded,
            load_client_config,
            {
                "interface_name": "InterfaceName",
                "bind_address": "BindAddress",
                "bind_port": "BindPort",
                "offload": "Offload",
                "control_socket": "ControlSocket",
                "user": "User",
                "hook_script": "HookScript",
                "local_discovery": "LocalDiscovery",
                "upnp": "UPnP",
            },
        )
        kept = self.loaded.config
        servers = resolve_servers(kept)
        try:
            key = client_key(kept)
        except UserError as error:  # e.g. a root-only SharedSecretFile, now that we are not
            key = self.core.client_settings.key
            log.warning("%s; the client key read at start stays in use", error)
        self.core.reconfigure_client(client_settings(kept, servers, key), time.monotonic())
        self.servers = servers
        if self.loop is not None:
            self.loop.flush()
        log.info(
            "reloaded: servers %s, refresh every %d s, at most %d peers",
            ", ".join(str(s) for s in servers), kept.refresh_interval, kept.max_peers,
        )  # fmt: skip


async def serve(
    loaded: Loaded[ClientConfig], service: Service, start: ClientStart | None = None
) -> int:
    """The client until SIGTERM/SIGINT (`teredo.programs.service.run_service` calls it), taking
    over what the launch opened and configured (`start`, `teredo.programs.client_start`), or
    opening it all itself when there was none."""
    config = loaded.config
    use_one_arena()  # before the UPnP and kernel path threads: no arena left behind by each
    daemon: ClientDaemon | None = None
    shutdown: asyncio.Task[Any] | None = None  # the signal handlers (catch_shutdown)
    try:
        if start is None:
            service.status("resolving the Teredo servers")
            servers = await retry(lambda: resolve_servers(config), service)
            key = client_key(config)  # before dropping privileges: the file may be root's
            start = await retry(lambda: open_client(config, servers, key), service)
        core, udp, tun = start.core, start.udp, start.tun
        servers = start.servers
        daemon = ClientDaemon(
            loaded=loaded, core=core, servers=servers, service=service, started=start.opened
        )
        daemon.interface = tun.name
        daemon.interface_index = start.interface_index
        daemon.iface = start.iface
        daemon.discovery = start.discovery
        if config.hook_script is not None:
            daemon.hook = HookRunner(config.hook_script)
            await daemon.hook.start()
        daemon.control = await start_observers(config, daemon.status, started=daemon.started)
        _warn_if_native_ipv6(tun.name)
        if config.upnp:
            from teredo.adapters.upnp import UpnpPortMapping

            daemon.upnp = UpnpPortMapping.load()  # imports: before the privilege drop
        daemon.loop = DataPath(core, udp, tun, after_flush=daemon.on_events)
        running = asyncio.get_running_loop()
        daemon.random_ports = RandomPortSockets(
            core, udp.local[0], running.add_reader, running.remove_reader, daemon.loop.flush
        )
        if daemon.upnp is not None:
            await _map_upnp(daemon, start.local)  # in a thread: qualification does not wait
        if not start.started:
            core.start(time.monotonic())
        # Signals are handled before the server can answer: the address, and READY=1, may come
        # while the kernel path loads, and a SIGTERM right after must find its handler.
        signals = catch_shutdown(on_reload=service.reloading(daemon.reload))
        shutdown = signals
        # The launch's address (or first event) before anything the loop gives: in order.
        adopted = running.create_task(daemon.adopt(start))
        daemon.tasks.add(adopted)
        adopted.add_done_callback(daemon.tasks.discard)
        daemon.loop.start()  # the router solicitation leaves (if the launch did not send it)
        if daemon.discovery is not None:
            _watch_discovery(daemon)
        if config.offload:
            # Loaded in a thread once the address is configured (or after KERNEL_PATH_WAIT
            # without it): its Python part (imports, libbpf's calls set up) holds the GIL in
            # stretches that delayed the address by ~5 ms when it ran during qualification.
            # Packets take the user-space path meanwhile; privileges are dropped after it.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(daemon.addressed.wait(), KERNEL_PATH_WAIT)
            kernel = await open_kernel_path_meanwhile(
                "client", tun=tun, udp=udp, prefix=core.settings.prefix, max_peers=config.max_peers
            )
            if kernel is not None:
                daemon.attach_kernel(kernel)
        drop_privileges(config.user, keep=("CAP_NET_ADMIN",))
        # The address may already be up (and READY=1 sent) while the kernel path loaded.
        service.started(
            daemon.status_line() if daemon.configured else f"qualifying with {servers[0]}"
        )
        await signals
        service.stopping()
    finally:
        if shutdown is not None and not shutdown.done():  # the start failed: handlers go
            shutdown.cancel()
            await asyncio.wait([shutdown])
        if daemon is not None:
            await _shutdown(daemon)
        elif start is not None and start.discovery is not None:
            start.discovery.close()
        if start is not None:
            start.tun.close()
            start.udp.close()
    return 0


def _warn_if_native_ipv6(interface: str) -> None:
    """RFC 4380 §5.5: Teredo is the last resort, not for a host with other IPv6. Say so when
    this host already has a global IPv6 address elsewhere (the metric-1029 default route keeps
    native routes preferred meanwhile)."""
    from teredo.adapters.netlink import host_addresses
    from teredo.core.address import TEREDO_PREFIX

    try:
        native = [a for a in host_addresses(exclude_interface=interface) if a not in TEREDO_PREFIX]
    except (OSError, UserError):
        return
    if native:
        log.warning(
            "this host already has native IPv6 (%s): RFC 4380 §5.5 says not to run a Teredo "
            "client then; native routes stay preferred over the tunnel's metric-1029 default",
            native[0],
        )


def _watch_discovery(daemon: ClientDaemon) -> None:
    """Feed datagrams sent to 224.0.0.253:3544 to the core (RFC 4380 §5.2.8)."""
    core, loop, sock = daemon.core, daemon.loop, daemon.discovery
    assert loop is not None
    group = str(DISCOVERY_GROUP)

    def handle(view: memoryview, source: tuple[str, int], destination: str) -> None:
        if destination == group:
            core.receive_discovery(bytes(view), source, time.monotonic())
        else:
            core.drop("discovery_unicast")  # RFC 4380 §5.2.8: discovery bubbles come by multicast

    def readable() -> None:
        sock.drain_pktinfo(handle)
        loop.flush()

    asyncio.get_running_loop().add_reader(sock.fileno(), readable)


async def _map_upnp(daemon: ClientDaemon, local: tuple[str, int]) -> None:
    """Start mapping our port on the NAT's UPnP gateway (RFC 6081 §5.3.3) before qualifying,
    and give the mapping to the core when the gateway has answered.

    The calls block (SSDP discovery listens up to `teredo.adapters.upnp.DISCOVERY_DELAY_MS`),
    so they run in a thread while the event loop goes on; a plain thread, because
    asyncio.to_thread's executor imports modules on first use, which may no longer be readable
    once privileges are dropped. Qualification does not wait for it: a gateway answers in
    about a second, a LAN without one would hold every start back for miniupnpc's whole
    discovery (about 4 s), and a mapping that comes after qualifying is still used, offered as
    an alternate address (RFC 6081 §5.6) and for §5.3.4's rule. The price, with a NAT that
    gives the mapped port to the client's own traffic only once the mapping exists: the first
    qualification sees another port, and the address follows the mapping at the next refresh."""
    upnp = daemon.upnp
    assert upnp is not None
    loop = asyncio.get_running_loop()

    def finish(mapping: tuple[str, int] | None) -> None:
        release_free_memory()  # what miniupnpc's discovery freed: ~0.2 MiB resident otherwise
        if mapping is not None:
            daemon.core.set_upnp_mapping(mapping)

    def work() -> None:
        mapping = upnp.add(local)
        # RuntimeError: the daemon stopped meanwhile; `_unmap_upnp` removes the mapping.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(finish, mapping)

    daemon.upnp_thread = threading.Thread(target=work, name="teredo-upnp", daemon=True)
    daemon.upnp_thread.start()


def _unmap_upnp(daemon: ClientDaemon) -> None:
    """Delete the mapping at shutdown (RFC 6081 §5.3.5), after a mapping still being made."""
    if daemon.upnp_thread is not None:
        daemon.upnp_thread.join(UPNP_SHUTDOWN_WAIT)
    if daemon.upnp is not None:
        daemon.upnp.remove()


async def _shutdown(daemon: ClientDaemon) -> None:
    if daemon.loop is not None:
        daemon.loop.stop()
    if daemon.random_ports is not None:
        daemon.random_ports.close()
    if daemon.upnp_thread is not None:
        _unmap_upnp(daemon)
    if daemon.discovery is not None:
        asyncio.get_running_loop().remove_reader(daemon.discovery.fileno())
        daemon.discovery.close()
    daemon.core.stop()
    for task in list(daemon.tasks):
        task.cancel()
    async with daemon.lock:
        if daemon.iface is not None:
            await daemon._withdraw("shutting down", final=True)
    if daemon.kernel is not None:
        daemon.kernel.close()
    if daemon.control is not None:
        await daemon.control.close()
    if daemon.hook is not None:
        await daemon.hook.close()
    if daemon.loop is None:  # the start failed: its error is the one thing to say
        return
    status = daemon.core.status()
    counters = status["counters"]
    log.info(
        "sent %d and received %d packets through the tunnel; %d drops",
        daemon.core.fast_tx + counters.get("sent", 0) + counters.get("sent_from_queue", 0),
        daemon.core.fast_rx + counters.get("received", 0),
        sum(status["drops"].values()),
    )


__all__ = [
    "HOOK_VARIABLES",
    "SECRET_BYTES",
    "ClientDaemon",
    "HookRunner",
    "client_settings",
    "load_client_config",
    "resolve_servers",
    "serve",
]
