"""The lab's Python API: build, run roles in, query and tear down a Teredo lab.

    with Lab("t1", nat1="symmetric", server="miredo") as lab:   # up() on entry, down() on exit
        lab.ping("cli1", NATIVE_IPV6)
        lab.teredo_address("cli2")

`Lab.attach(name)` picks up a lab another process brought up (from its state file).
`Lab(..., generator=True)` adds the benchmarks' generator node "gen" (topology.py,
generator.py); `interface_counters` and `counters` read what the kernel counted in a node.
`Lab(..., relays=2)` has two relay sites, relay1 and relay2, announcing the Teredo prefix to the
router by BGP (bgp.py); `bgp_sessions` and `preferred_relay` say how the router sees them.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from types import FrameType
from typing import Any, Final

from teredo.core.address import TeredoAddress, parse_teredo_address
from teredo.core.errors import ParseError, UsageError, UserError
from teredo.lab import bgp, netns, processes, upnp
from teredo.lab.generator import generator_ruleset, read_counters, sink_ruleset
from teredo.lab.nat import nat_ruleset
from teredo.lab.processes import ProcessInfo
from teredo.lab.roles import Impl, RoleLaunch, resolve_impl, role_launch, roles_for
from teredo.lab.state import (
    DEFAULT_NAME,
    LabState,
    RoleRecord,
    check_name,
    claim,
    load,
    save,
    state_dir,
)
from teredo.lab.topology import (
    DEFAULT_NAT1,
    DEFAULT_NAT2,
    EVERY_NODE,
    GENERATOR_NODE,
    RELAY_SITES,
    SERVER_IPV4,
    SERVER_IPV4_2,
    TEREDO_INTERFACE,
    TEREDO_PREFIX,
    NatKind,
    Topology,
    build_topology,
    relay_nodes,
    resolve_node,
)

logger = logging.getLogger(__name__)

READY_TIMEOUT: Final = 20.0  # seconds; a Miredo client tries 3 times 4 s apart (docs/lab-notes.md)
POLL_INTERVAL: Final = 0.05
TUNNEL_GONE_TIMEOUT: Final = 5.0  # seconds a stopped client's TUN device may take to go
SETTLE_TIMEOUT: Final = 10.0  # seconds for every link to get carrier and a link-local address
TEREDO_PORT: Final = 3544  # RFC 4380 §2.7

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class PingResult:
    source: str
    destination: str
    transmitted: int
    received: int
    rtt_avg_ms: float | None
    output: str

    @property
    def ok(self) -> bool:
        """A path works when at least one reply came back (the first may be lost to bubbles)."""
        return self.received >= 1


def _quiet(message: str) -> None:
    logger.info("%s", message)


class Lab:
    """One lab: eight namespaces named `<name>-<node>` (nine with the generator) and the roles
    running in them.

    `ours_config` adds configuration lines for this project's daemons, by role (e.g.
    `{"relay": ["MaxPeers 1100000"]}`; with two relay sites "relay" applies to both); Miredo's
    roles never get them (it knows none of our directives)."""

    def __init__(
        self,
        name: str = DEFAULT_NAME,
        *,
        nat1: NatKind | str = DEFAULT_NAT1,
        nat2: NatKind | str = DEFAULT_NAT2,
        server: str = "auto",
        relay: str = "auto",
        client1: str = "auto",
        client2: str = "auto",
        ready_timeout: float = READY_TIMEOUT,
        progress: Progress | None = None,
        generator: bool = False,
        ours_config: dict[str, list[str]] | None = None,
        relays: int = 1,
        same_nat: bool = False,
        hairpinning: bool = True,
    ) -> None:
        self.name = check_name(name)
        self.generator = generator
        if relays not in (1, len(RELAY_SITES)):
            raise UsageError(f"a lab has 1 or {len(RELAY_SITES)} relays, not {relays}")
        self.relays = relays
        self.hairpinning = hairpinning
        self.roles = roles_for(relays)
        self.ours_config = {role: list(lines) for role, lines in (ours_config or {}).items()}
        unknown = sorted(set(self.ours_config) - set(self.roles) - {"relay"})
        if unknown:
            raise UsageError(
                f"ours_config names no role {unknown[0]!r}; roles are {', '.join(self.roles)}"
            )
        try:
            self.topology: Topology = build_topology(
                NatKind(nat1),
                NatKind(nat2),
                generator=generator,
                relays=relays,
                same_nat=same_nat,
            )
        except ValueError as error:
            raise UsageError(f"{error}; NAT kinds are {', '.join(NatKind)}") from None
        choices = {"server": server, "client1": client1, "client2": client2}
        choices.update((node, relay) for node in relay_nodes(relays))
        self.impls = {role: resolve_impl(role, choices[role]) for role in self.roles}
        if relays > 1:
            bgp.require_bird()
        if any(site.kind.upnp for site in self.topology.sites):
            upnp.require_miniupnpd()
        self.ready_timeout = ready_timeout
        self.progress: Progress = progress or _quiet
        self.state: LabState | None = None

    # -- naming -----------------------------------------------------------------------------

    @property
    def directory(self) -> Path:
        return state_dir(self.name)

    @property
    def nodes(self) -> list[str]:
        """The names of this lab's nodes, in the order they are built."""
        return [node.name for node in self.topology.nodes]

    def namespace(self, node: str) -> str:
        """The namespace of a node (node names and aliases such as "client1" are accepted)."""
        try:
            name = resolve_node(node)
        except KeyError:
            name = ""
        if name not in self.nodes:
            aliases = "server, native, client1, client2" + (", generator" if self.generator else "")
            raise UsageError(
                f"no node {node!r} in the lab; nodes are {', '.join(self.nodes)} ({aliases})"
            )
        return f"{self.name}-{name}"

    @property
    def namespaces(self) -> list[str]:
        return [f"{self.name}-{node}" for node in self.nodes]

    @property
    def possible_namespaces(self) -> list[str]:
        """Every namespace a lab of this name may have, optional nodes included: what a
        teardown looks for, whether or not this object was built with them."""
        return [f"{self.name}-{node}" for node in EVERY_NODE]

    @classmethod
    def attach(cls, name: str = DEFAULT_NAME, progress: Progress | None = None) -> Lab:
        """The lab named `name` that some process brought up."""
        state = load(name)
        if state is None:
            raise UserError(f"no lab named {name!r} is up; start one with `teredo lab up`")
        lab = cls(
            name,
            nat1=state.nat1,
            nat2=state.nat2,
            progress=progress,
            generator=GENERATOR_NODE in state.namespaces,
            ours_config=state.ours_config,
            relays=len(RELAY_SITES) if RELAY_SITES[0] in state.namespaces else 1,
            same_nat=state.same_nat,
            hairpinning=state.hairpinning,
        )
        lab.impls = {
            role: Impl(record.impl) for role, record in state.roles.items() if role in lab.roles
        }
        lab.state = state
        return lab

    def __enter__(self) -> Lab:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    @property
    def nat_description(self) -> str:
        """E.g. "NAT1 symmetric, NAT2 fullcone", or "both clients behind NAT1 symmetric
        (hairpinning no)" with `same_nat`."""
        first, second = (site.kind.value for site in self.topology.sites)
        if self.topology.same_nat:
            hairpinning = "yes" if self.hairpinning else "no"
            return f"both clients behind NAT1 {first} (hairpinning {hairpinning})"
        return f"NAT1 {first}, NAT2 {second}"

    # -- bring up ---------------------------------------------------------------------------

    def up(self) -> None:
        """Build the namespaces, links and NATs, start the roles and wait until all are ready.

        On any failure, or Ctrl-C, everything built so far is torn down (the logs are kept)
        before the exception propagates.
        """
        taken = [ns for ns in self.namespaces if netns.namespace_exists(ns)]
        if taken:
            raise UsageError(
                f"network namespace {taken[0]} already exists; run "
                f"`teredo lab down --name {self.name}` or choose another --name"
            )
        nat1, nat2 = (site.kind.value for site in self.topology.sites)
        state = LabState(
            self.name,
            nat1,
            nat2,
            namespaces={node: f"{self.name}-{node}" for node in self.nodes},
            ours_config=self.ours_config,
            same_nat=self.topology.same_nat,
            hairpinning=self.hairpinning,
        )
        claim(state)
        self.state = state
        try:
            with terminate_as_interrupt():
                started = time.monotonic()
                self._build()
                self.progress(
                    f"built {len(self.nodes)} namespaces {self.name}-*, {self.nat_description} "
                    f"({time.monotonic() - started:.1f} s)"
                )
                if self.relays > 1:
                    self._start_bgp()
                self._start_upnp()
                self._start_roles(("server", *relay_nodes(self.relays)))
                if self.relays > 1:
                    self._wait_routed(time.monotonic())
                self._start_roles(("client1", "client2"))
                state.phase = "up"
                save(state)
        except BaseException:
            state.phase = "failed"
            self.down(keep_logs=True)
            raise

    def _build(self) -> None:
        """Namespaces, sysctls, veths, addresses, routes and NAT rulesets, then wait for links.

        A failing kernel call becomes one sentence naming the step (no traceback).
        """
        topology = self.topology
        step = "start"
        try:
            for node in topology.nodes:
                namespace = self.namespace(node.name)
                step = f"create network namespace {namespace}"
                netns.create_namespace(namespace)
                # Before any interface exists, so that "default" applies to every one of them.
                step = f"set sysctls in {namespace}"
                netns.write_sysctls(namespace, node.sysctls)
            for link in topology.links:
                step = (
                    f"create veth {link.node_a}:{link.ifname_a} <-> {link.node_b}:{link.ifname_b}"
                )
                netns.create_veth(
                    self.namespace(link.node_a),
                    link.ifname_a,
                    self.namespace(link.node_b),
                    link.ifname_b,
                )
            for node in topology.nodes:
                for interface in node.interfaces:
                    step = f"configure {node.name}:{interface.name}"
                    netns.configure_interface(
                        self.namespace(node.name),
                        interface.name,
                        interface.addresses,
                        interface.wire_segments,
                    )
            for node in topology.nodes:
                for route in node.routes:
                    step = f"add route {route.destination} via {route.gateway} in {node.name}"
                    netns.add_route(
                        self.namespace(node.name), route.destination, route.gateway, route.table
                    )
                for rule in node.rules:
                    step = f"add rule iif {rule.iif} to {rule.destination} in {node.name}"
                    netns.add_rule(
                        self.namespace(node.name), rule.iif, rule.destination, rule.table
                    )
        except UserError:
            raise
        except Exception as error:  # OSError, pyroute2's NetlinkError
            raise UserError(
                f"could not {step}: {error}; the lab needs root with CAP_SYS_ADMIN and "
                "CAP_NET_ADMIN and a kernel with network namespaces, veth and IPv6"
            ) from error
        for site in topology.sites:
            box = topology.box_sites(site.nat_node)
            if site is not box[0]:
                continue  # one ruleset per box
            ruleset = nat_ruleset(
                site.kind,
                site.lan_network,
                site.wan.ip,
                site.client.ip,
                second_lan=box[1].lan_network if len(box) > 1 else None,
                hairpinning=self.hairpinning,
            )
            if ruleset is not None:
                netns.load_nftables(self.namespace(site.nat_node), ruleset)
        if self.generator:
            netns.load_nftables(self.namespace(GENERATOR_NODE), generator_ruleset())
            netns.load_nftables(self.namespace("v6"), sink_ruleset())
        self._wait_settled()

    def _wait_settled(self) -> None:
        """Wait until every link has carrier and a usable IPv6 link-local address.

        Otherwise the first packet a router forwards, or the first echo test a Teredo server
        relays for a client, can wait a second for neighbour discovery (netns.py explains).
        """
        deadline = time.monotonic() + SETTLE_TIMEOUT
        pending = list(self.namespaces)
        while pending:
            pending = [ns for ns in pending if netns.unsettled_interfaces(ns)]
            if not pending:
                return
            if time.monotonic() > deadline:
                interfaces = ", ".join(netns.unsettled_interfaces(pending[0]))
                raise UserError(
                    f"the links {interfaces} in {pending[0]} did not come up within "
                    f"{SETTLE_TIMEOUT:g} s; the kernel may lack veth or IPv6 support"
                )
            raise_if_interrupted()
            time.sleep(POLL_INTERVAL)

    def _start_roles(self, roles: Sequence[str]) -> None:
        assert self.state is not None
        started = time.monotonic()
        for role in roles:
            self._launch(self._role_launch(role, self.impls[role]))
        self._wait_ready(roles, started)

    def _role_launch(self, role: str, impl: Impl) -> RoleLaunch:
        extra: list[str] = []
        if impl is Impl.OURS:
            if self.roles[role][1] == "relay" and role != "relay":
                extra += self.ours_config.get("relay", [])
            extra += self.ours_config.get(role, [])
        return role_launch(role, impl, self.directory, extra)

    def _start_bgp(self) -> None:
        """BIRD on the router and at every relay site (bgp.py), ready to answer birdc."""
        assert self.state is not None
        started = time.monotonic()
        roles = []
        for node in bgp.bgp_nodes(self.relays):
            role = bgp.bgp_role(node)
            config = self.directory / f"{node}-bird.conf"
            control = self.directory / f"{node}-bird.ctl"
            pid_file = self.directory / f"{node}-bird.pid"
            log_path = self.directory / f"{node}-bird.log"
            config.write_text(bgp.bird_config(node, self.relays))
            control.unlink(missing_ok=True)
            argv = bgp.bird_argv(config, control, pid_file)
            info = processes.launch(self.namespace(node), argv, log_path)
            self.state.roles[role] = RoleRecord(
                role=role,
                node=node,
                kind="bgp",
                impl="bird",
                argv=list(argv),
                config=str(config),
                log=str(log_path),
                pid=info.pid,
                starttime=info.starttime,
                pidfile=str(pid_file),
                control_socket=str(control),
            )
            save(self.state)
            roles.append(role)
        self._wait_ready(roles, started)

    def _start_upnp(self) -> None:
        """miniupnpd on every NAT box with a UPnP IGD (upnp.py), ready on the SSDP port."""
        assert self.state is not None
        started = time.monotonic()
        roles = []
        for site in self.topology.sites:
            box = self.topology.box_sites(site.nat_node)
            if not site.kind.upnp or site is not box[0]:
                continue
            role = upnp_role(site.nat_node)
            config = self.directory / f"{site.nat_node}-miniupnpd.conf"
            leases = self.directory / f"{site.nat_node}-miniupnpd.leases"
            pid_file = self.directory / f"{site.nat_node}-miniupnpd.pid"
            log_path = self.directory / f"{site.nat_node}-miniupnpd.log"
            config.write_text(
                upnp.miniupnpd_config(
                    self.name,
                    site.nat_node,
                    [(s.lan_ifname, s.lan_network) for s in box],
                    str(leases),
                )
            )
            argv = upnp.miniupnpd_argv(str(config), str(pid_file))
            info = processes.launch(self.namespace(site.nat_node), argv, log_path)
            self.state.roles[role] = RoleRecord(
                role=role,
                node=site.nat_node,
                kind="upnp",
                impl=upnp.PROGRAM,
                argv=list(argv),
                config=str(config),
                log=str(log_path),
                pid=info.pid,
                starttime=info.starttime,
                pidfile=str(pid_file),
            )
            save(self.state)
            roles.append(role)
        if roles:
            self._wait_ready(roles, started)

    def _wait_routed(self, started: float) -> None:
        """Wait until the router's route to the Teredo prefix comes from BGP, from the
        preferred site (every site announces by then: the others' sessions come up alike)."""
        deadline = started + self.ready_timeout
        while (preferred := self.preferred_relay()) != RELAY_SITES[0]:
            if time.monotonic() > deadline:
                raise UserError(
                    f"{RELAY_SITES[0]} did not announce {TEREDO_PREFIX} to the router by BGP "
                    f"within {self.ready_timeout:g} s (the router prefers {preferred or 'none'}); "
                    f"read the *-bird.log and relay logs in {self.directory}"
                )
            raise_if_interrupted()
            time.sleep(POLL_INTERVAL)
        self.progress(
            f"router: {TEREDO_PREFIX} by BGP via {preferred} ({time.monotonic() - started:.1f} s)"
        )

    def site_down(self, node: str) -> None:
        """Take a node's link to the router down from inside it: the site goes dark."""
        netns.set_link_down(self.namespace(node), "eth0")

    def site_up(self, node: str) -> None:
        """Bring a node's link back with its addresses and routes."""
        spec = self.topology.node(resolve_node(node))
        interface = next(i for i in spec.interfaces if i.name == "eth0")
        routes = [(r.destination, r.gateway) for r in spec.routes if r.table is None]
        netns.restore_interface(self.namespace(node), "eth0", interface.addresses, routes)

    def bgp_sessions(self) -> list[bgp.BgpSession]:
        """Every BGP session as seen by each BIRD of the lab (none with one relay)."""
        state = self._require_state()
        sessions = []
        for node in bgp.bgp_nodes(self.relays):
            record = state.roles.get(bgp.bgp_role(node))
            if record is None or record.control_socket is None:
                continue
            output = bgp.birdc(self.namespace(node), record.control_socket, "show", "protocols")
            if output is not None:
                sessions += bgp.parse_protocols(node, output)
        return sessions

    def preferred_relay(self) -> str | None:
        """The relay site whose route the router's BIRD prefers for the Teredo prefix."""
        state = self._require_state()
        record = state.roles.get(bgp.bgp_role(bgp.ROUTER_NODE))
        if record is None or record.control_socket is None:
            return None
        output = bgp.birdc(
            self.namespace(bgp.ROUTER_NODE),
            record.control_socket,
            "show",
            "route",
            "for",
            str(TEREDO_PREFIX),
        )
        return bgp.parse_best_route(output) if output is not None else None

    def _launch(self, launch: RoleLaunch) -> None:
        assert self.state is not None
        launch.config_path.write_text(launch.config_text)
        if launch.pid_path is not None:
            launch.pid_path.unlink(missing_ok=True)
        if launch.control_socket is not None:
            launch.control_socket.unlink(missing_ok=True)
        info = processes.launch(self.namespace(launch.node), launch.argv, launch.log_path)
        self.state.roles[launch.role] = RoleRecord(
            role=launch.role,
            node=launch.node,
            kind=launch.kind,
            impl=launch.impl.value,
            argv=list(launch.argv),
            config=str(launch.config_path),
            log=str(launch.log_path),
            pid=info.pid,
            starttime=info.starttime,
            pidfile=str(launch.pid_path) if launch.pid_path else None,
            control_socket=str(launch.control_socket) if launch.control_socket else None,
        )
        save(self.state)

    def _wait_ready(self, roles: Sequence[str], started: float) -> None:
        assert self.state is not None
        pending = list(roles)
        deadline = started + self.ready_timeout
        while pending:
            for role in list(pending):
                record = self.state.roles[role]
                what = _READY_WHAT[record.kind]
                if not self._alive(record):
                    raise UserError(
                        f"the {role} ({record.impl}) on node {record.node} exited before it "
                        f"{what}; read {record.log}"
                    )
                detail = self._ready(record)
                if detail is not None:
                    pending.remove(role)
                    self.progress(
                        f"{role} ({record.impl}) on {record.node}: {detail} "
                        f"({time.monotonic() - started:.1f} s)"
                    )
            if pending and time.monotonic() > deadline:
                record = self.state.roles[pending[0]]
                raise UserError(
                    f"the {record.role} ({record.impl}) on node {record.node} did not "
                    f"{_READY_WHAT[record.kind]} within {self.ready_timeout:g} s; read {record.log}"
                )
            if pending:
                raise_if_interrupted()
            time.sleep(POLL_INTERVAL)

    def _ready(self, record: RoleRecord) -> str | None:
        """A short description of the role's readiness, or None while it is not ready."""
        namespace = self.namespace(record.node)
        if record.kind == "server":
            assert record.pid is not None
            bound = _udp_bound(record.pid)
            wanted = {SERVER_IPV4, SERVER_IPV4_2}
            if all(
                (a, TEREDO_PORT) in bound or (IPv4Address(0), TEREDO_PORT) in bound for a in wanted
            ):
                return f"listening on {SERVER_IPV4}:{TEREDO_PORT} and {SERVER_IPV4_2}:{TEREDO_PORT}"
            return None
        if record.kind == "upnp":
            assert record.pid is not None
            if (IPv4Address(0), upnp.SSDP_PORT) in _udp_bound(record.pid):
                return f"UPnP IGD answering SSDP on port {upnp.SSDP_PORT}"
            return None
        if record.kind == "bgp":
            if record.control_socket is None:
                return None
            if bgp.birdc(namespace, record.control_socket, "show", "status") is None:
                return None
            return "BIRD answers"
        if record.kind == "relay":
            interface = netns.interface_state(namespace, TEREDO_INTERFACE)
            if interface is not None and interface[0]:
                return f"interface {TEREDO_INTERFACE} up"
            return None
        address = self.teredo_address(record.node)
        if address is None:
            return None
        return f"qualified as {address} ({describe_teredo(address)})"

    # -- tear down --------------------------------------------------------------------------

    def down(self, keep_logs: bool = False) -> list[str]:
        """Stop the roles (by pid), remove the namespaces and the state; say what was done.

        Signals are held off meanwhile, so a second Ctrl-C cannot leave half a lab behind.
        """
        with _signals_held():
            return self._teardown(keep_logs)

    def _teardown(self, keep_logs: bool) -> list[str]:
        state = self.state or load(self.name)
        done: list[str] = []
        namespaces = self.possible_namespaces
        if state is not None:
            infos = [
                ProcessInfo(r.pid, r.starttime, state.namespaces.get(r.node, ""))
                for r in state.roles.values()
                if r.pid is not None and r.starttime is not None
            ]
            if infos:
                killed = processes.stop(infos, namespaces)
                done.append(
                    f"stopped {len(infos)} roles" + (f" ({len(killed)} killed)" if killed else "")
                )
        leftovers = netns.processes_in(namespaces)
        if leftovers:
            logger.info("stopping leftover processes in the lab: %s", leftovers)
            processes.stop_pids(leftovers)
            done.append(f"stopped {len(leftovers)} other processes left in the lab's namespaces")
        removed = 0
        for namespace in namespaces:
            if netns.namespace_exists(namespace):
                netns.remove_namespace(namespace)
                removed += 1
        if removed:
            done.append(f"removed {removed} namespaces {self.name}-*")
        directory = self.directory
        if directory.exists():
            if keep_logs:
                for path in directory.iterdir():
                    if path.suffix not in (".log", ".conf"):
                        path.unlink(missing_ok=True)
            else:
                shutil.rmtree(directory, ignore_errors=True)
        self.state = None
        return done

    # -- use --------------------------------------------------------------------------------

    def exec(
        self,
        node: str,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        input: str | None = None,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in a node and capture its output."""
        return subprocess.run(
            ["ip", "netns", "exec", self.namespace(node), *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            check=check,
        )

    def ping(
        self,
        source: str,
        destination: IPv6Address | str,
        *,
        count: int = 4,
        interval: float = 0.3,
        wait: float = 2.0,
    ) -> PingResult:
        """ping -6 from a node; `ok` when at least one reply came back."""
        argv = ["ping", "-6", "-n", "-c", str(count), "-i", f"{interval:g}", "-W", f"{wait:g}"]
        result = self.exec(source, [*argv, str(destination)], timeout=count * interval + wait + 10)
        return parse_ping(source, str(destination), result.stdout + result.stderr)

    def teredo_address(self, node: str) -> IPv6Address | None:
        """The node's global Teredo address (2001::/32 on interface "teredo"), if it has one."""
        addresses = netns.global_addresses_in(self.namespace(node), TEREDO_INTERFACE, TEREDO_PREFIX)
        for address in addresses or []:
            if not address.is_link_local:
                return address
        return None

    def restart_role(self, role: str) -> float:
        """Stop one role and start it again in a fresh process, waiting until it is ready.

        Returns the wall-clock time (`time.time()`) just before the new process was started,
        so that a benchmark can time the launch against timestamped events.
        """
        state = self._require_state()
        record = state.roles[role]
        if record.pid is not None and record.starttime is not None:
            processes.stop(
                [ProcessInfo(record.pid, record.starttime, self.namespace(record.node))],
                self.namespaces,
            )
        self._wait_tunnels_gone([record])
        started = time.monotonic()
        launched_at = time.time()
        self._launch(self._role_launch(role, Impl(record.impl)))
        self._wait_ready([role], started)
        return launched_at

    def signal_role(self, role: str, signum: int) -> list[int]:
        """Send a signal to a role's processes (kill -9 of a relay, say); the pids signalled."""
        record = self._require_state().roles[role]
        if record.pid is None or record.starttime is None:
            return []
        info = ProcessInfo(record.pid, record.starttime, self.namespace(record.node))
        return processes.signal_group(info, self.namespaces, signum)

    def restart_roles(self, roles: Sequence[str]) -> None:
        """Restart several roles at once (stopped together, then started together)."""
        state = self._require_state()
        infos = []
        for role in roles:
            record = state.roles[role]
            if record.pid is not None and record.starttime is not None:
                infos.append(ProcessInfo(record.pid, record.starttime, self.namespace(record.node)))
        processes.stop(infos, self.namespaces)
        self._wait_tunnels_gone([state.roles[role] for role in roles])
        started = time.monotonic()
        for role in roles:
            self._launch(self._role_launch(role, Impl(state.roles[role].impl)))
        self._wait_ready(roles, started)

    def _wait_tunnels_gone(self, records: Sequence[RoleRecord]) -> None:
        """Wait (a bounded while) until stopped clients' tunnel interfaces are gone: the kernel
        may remove a TUN device a moment after its process exits, and a new client's readiness
        must not be read from the old one's address."""
        deadline = time.monotonic() + TUNNEL_GONE_TIMEOUT
        pending = [self.namespace(r.node) for r in records if r.kind == "client"]
        while pending and time.monotonic() < deadline:
            pending = [ns for ns in pending if netns.interface_state(ns, TEREDO_INTERFACE)]
            if pending:
                time.sleep(POLL_INTERVAL)

    def interface_counters(self, node: str, interface: str = "eth0") -> dict[str, int]:
        """The kernel's counters of one interface of a node (rx_packets, tx_packets, ...)."""
        counters = netns.interface_counters(self.namespace(node))
        if interface not in counters:
            raise UserError(f"node {node} has no interface {interface!r}; is the lab up?")
        return counters[interface]

    def counters(self, node: str) -> dict[str, int]:
        """Packets per named nftables counter in a node (generator.py names them)."""
        return read_counters(self.namespace(node))

    def _require_state(self) -> LabState:
        if self.state is None:
            raise UserError(f"the lab {self.name!r} is not up")
        return self.state

    @staticmethod
    def _alive(record: RoleRecord) -> bool:
        if record.pid is None or record.starttime is None:
            return False
        return processes.is_alive(ProcessInfo(record.pid, record.starttime, ""))

    def status(self) -> dict[str, Any]:
        """Nodes, NAT kinds, roles (pid, alive, implementation) and decoded Teredo addresses."""
        state = self._require_state()
        nodes = []
        for node in self.topology.nodes:
            namespace = self.namespace(node.name)
            entry: dict[str, Any] = {
                "node": node.name,
                "namespace": namespace,
                "kind": node.kind,
                "exists": netns.namespace_exists(namespace),
                "addresses": [str(a) for i in node.interfaces for a in i.addresses],
            }
            if node.kind == "nat":
                entry["nat"] = self.topology.site(node.name).kind.value
            nodes.append(entry)
        roles = []
        upnp_roles = sorted({upnp_role(s.nat_node) for s in self.topology.sites if s.kind.upnp})
        bgp_roles = [bgp.bgp_role(n) for n in bgp.bgp_nodes(self.relays)]
        for role in [*self.roles, *bgp_roles, *upnp_roles]:
            record = state.roles.get(role)
            if record is None:
                continue
            alive = self._alive(record)
            entry = {
                "role": role,
                "node": record.node,
                "impl": record.impl,
                "pid": record.pid,
                "alive": alive,
                "config": record.config,
                "log": record.log,
                "control_socket": record.control_socket,
            }
            if record.kind == "client":
                address = self.teredo_address(record.node) if alive else None
                entry["teredo"] = teredo_json(address) if address else None
            roles.append(entry)
        document = {
            "name": self.name,
            "phase": state.phase,
            "state_dir": str(self.directory),
            "nat": {site.nat_node: site.kind.value for site in self.topology.sites},
            "same_nat": self.topology.same_nat,
            "hairpinning": self.hairpinning if self.topology.same_nat else None,
            "nodes": nodes,
            "roles": roles,
        }
        if self.relays > 1:
            document["bgp"] = {
                "sessions": [
                    {
                        "node": s.node,
                        "peer": s.peer,
                        "state": s.state,
                        "info": s.info,
                        "established": s.established,
                    }
                    for s in self.bgp_sessions()
                ],
                "preferred_relay": self.preferred_relay(),
            }
        return document


_READY_WHAT: Final = {
    "server": f"listened on UDP {TEREDO_PORT} on both server addresses",
    "relay": f"brought its {TEREDO_INTERFACE} interface up",
    "bgp": "answered birdc",
    "upnp": f"listened for SSDP on UDP {upnp.SSDP_PORT}",
    "client": f"got a Teredo address on its {TEREDO_INTERFACE} interface",
}


def upnp_role(nat_node: str) -> str:
    """The name of the UPnP IGD role on a NAT box (e.g. "upnp1" on nat1)."""
    return "upnp" + nat_node.removeprefix("nat")


def _udp_bound(pid: int) -> set[tuple[IPv4Address, int]]:
    """(address, port) of the IPv4 UDP sockets in the network namespace of `pid`."""
    bound = set()
    try:
        lines = Path(f"/proc/{pid}/net/udp").read_text().splitlines()[1:]
    except OSError:
        return set()
    for line in lines:
        local = line.split()[1]
        address, port = local.split(":")
        # /proc prints the network-order address as a host-order integer.
        packed = struct.pack("=I", int(address, 16))
        bound.add((IPv4Address(socket.inet_ntoa(packed)), int(port, 16)))
    return bound


def decode_teredo(address: IPv6Address | str) -> TeredoAddress | None:
    try:
        return parse_teredo_address(address)
    except ParseError:
        return None


def describe_teredo(address: IPv6Address) -> str:
    decoded = decode_teredo(address)
    if decoded is None:
        return "not a Teredo address"
    cone = "cone" if decoded.cone else "not cone"
    return f"server {decoded.server}, mapped {decoded.mapped_address}:{decoded.mapped_port}, {cone}"


def teredo_json(address: IPv6Address) -> dict[str, Any]:
    decoded = decode_teredo(address)
    if decoded is None:
        return {"address": str(address)}
    return {
        "address": str(address),
        "server": str(decoded.server),
        "mapped_address": str(decoded.mapped_address),
        "mapped_port": decoded.mapped_port,
        "cone": decoded.cone,
        "flags": decoded.flags,
    }


_PING_COUNTS = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")
_PING_RTT = re.compile(r"= [\d.]+/([\d.]+)/[\d.]+/[\d.]+ ms")


def parse_ping(source: str, destination: str, output: str) -> PingResult:
    """Read iputils ping's summary: packets sent and received, and the average RTT."""
    counts = _PING_COUNTS.search(output)
    rtt = _PING_RTT.search(output)
    return PingResult(
        source=source,
        destination=destination,
        transmitted=int(counts.group(1)) if counts else 0,
        received=int(counts.group(2)) if counts else 0,
        rtt_avg_ms=float(rtt.group(1)) if rtt else None,
        output=output,
    )


_interrupted = threading.Event()


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    _interrupted.set()
    raise KeyboardInterrupt


def raise_if_interrupted() -> None:
    """Raise KeyboardInterrupt again if a signal arrived whose exception was swallowed.

    A signal handler's exception surfaces wherever the main thread happens to be, and when that
    is a `__del__` (a garbage-collected asyncio loop, say) Python prints it and carries on. The
    flag keeps the interruption from being lost: long-running steps call this at safe points.
    """
    if _interrupted.is_set():
        raise KeyboardInterrupt


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP unwind like Ctrl-C, so `up` tears down what it built."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _interrupted.clear()
    signums = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.signal(s, _raise_interrupt) for s in signums}
    try:
        yield
        raise_if_interrupted()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signums = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in signums}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
