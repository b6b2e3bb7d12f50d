"""`teredo server`: the Teredo server daemon around the sans-I/O core `teredo.core.server` (the
command line and the service frame are `teredo.programs.service`).

What it does, in order:

1. reads ``miredo-server.conf`` unchanged (``ServerBindAddress``, ``ServerBindAddress2`` = the next
   address by default, ``Prefix``, ``InterfaceMTU``, ``SyslogFacility``; our ``ControlSocket``,
   ``User``, ``AllowPrivateAddresses``, ``RateLimit``); the ADDRESS argument overrides
   ``ServerBindAddress``;
2. logs to syslog when detached (as Miredo does), else to stderr unless the file sets
   ``SyslogFacility``;
3. binds UDP 3544 on both addresses (RFC 4380 §5.3: clients use both; retried with backoff while
   an address is not yet on the host) and opens a raw IPv6 socket
   (``AF_INET6, SOCK_RAW, IPPROTO_RAW``: the IPv6 header is ours) to emit the clients' echo tests
   natively (RFC 4380 §5.2.9, §5.3.1);
4. listens on the control socket (``teredo status``), then drops privileges to ``User``: nothing
   needs root once the sockets are open;
5. runs until SIGTERM/SIGINT; SIGHUP re-reads the file and applies what needs no new socket
   (``Prefix``, ``InterfaceMTU``, ``AllowPrivateAddresses``, ``RateLimit``, ``SyslogFacility``);
   other changes are logged as needing a restart.

The data path works in batches (`teredo.core.server.ServerBatch`): when a socket is readable,
`recv_batch` reads up to BATCH_SIZE datagrams into one buffer (one `recvmmsg`), the core's
`receive_batch` has the answer function write the RAs for the common Router Solicitations
straight into the batch's output buffer from a template and sends everything else through the
per-datagram path, and `send_batch` sends the answers of each socket (one `sendmmsg`). The three
functions and the rate limiter are C where the accelerator was built, their pure-Python twins
otherwise (`teredo.adapters.accel`); the results are the same.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any, Final

from teredo.adapters import accel
from teredo.adapters.buffers import lazy_buffer
from teredo.adapters.daemon import catch_shutdown
from teredo.adapters.privileges import drop_privileges
from teredo.adapters.udp import UdpSocket, interface_holding, open_udp_socket
from teredo.core.address import TEREDO_PORT
from teredo.core.config import DEFAULT_SERVER_CONFIG_PATH, ServerConfig, parse_server_config
from teredo.core.errors import UserError
from teredo.core.record import replace as replace_record
from teredo.core.server import (
    ANSWER_SLOT_BYTES,
    RATE_LIMIT_BURST,
    SLOT_BYTES,
    ServerBatch,
    ServerSettings,
    TeredoServer,
)
from teredo.programs.keys import client_keys
from teredo.programs.loading import Loaded, load, reload_config
from teredo.programs.observers import Observers, start_observers
from teredo.programs.service import Service, retry

log = logging.getLogger(__name__)

NATIVE_SOCKET_BUFFER: Final = 1 << 20
# Receive buffer of each server socket (the kernel counts twice this in packet overhead): a
# flooded server that loses the CPU for a while should find what it would have answered still
# queued, not dropped. 16 MiB holds some 100 ms of a flood at the rate it answers, which is also
# the longest a real client's RS waits behind it.
SERVER_BUFFER_BYTES: Final = 16 << 20
# Batches read per readiness callback: up to 4 * BATCH_SIZE datagrams, so that one flooded
# socket cannot starve the other and the control socket.
BATCHES_PER_WAKEUP: Final = 4


def load_server_config(config_path: str | None, address: str | None) -> Loaded[ServerConfig]:
    """Read the configuration the way `teredo server [-c FILE] [ADDRESS]` does."""
    return load(
        config_path,
        address,
        default_path=DEFAULT_SERVER_CONFIG_PATH,
        parse=lambda text, source, address: parse_server_config(text, source, address=address),
        missing=(
            f"there is no {DEFAULT_SERVER_CONFIG_PATH}; give a configuration file with -c "
            "FILE, or the server's primary IPv4 address as `teredo server ADDRESS`"
        ),
    )


def settings_from_config(config: ServerConfig) -> ServerSettings:
    """RateLimit N: N answers per second per IPv4 address after a burst of 2 N; 0: no limit."""
    rate = config.rate_limit
    return ServerSettings(
        primary=config.server_bind_address,
        secondary=config.server_bind_address2,
        prefix=config.prefix,
        mtu=config.interface_mtu,
        allow_private=config.allow_private_addresses,
        rate_per_second=float(rate) if rate else None,
        rate_burst=2.0 * rate if rate else RATE_LIMIT_BURST,
        require_authentication=config.require_authentication,
    )


def new_core(config: ServerConfig) -> TeredoServer:
    """The server core for `config`, with the rate limiter that goes with the answer function."""
    core = TeredoServer(settings_from_config(config), accel.new_rate_limiter)
    if config.client_key_file is not None:  # read before dropping privileges: root's file
        core.set_client_keys(client_keys(config.client_key_file))
    return core


class NativeSocket:
    """A raw IPv6 socket that sends whole IPv6 packets (IPPROTO_RAW implies the header is ours)."""

    def __init__(self) -> None:
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
        except PermissionError:
            raise UserError(
                "cannot open a raw IPv6 socket to forward echo tests natively: permission "
                "denied; run teredo server as root (it drops privileges after start-up)"
            ) from None
        except OSError as error:
            raise UserError(
                f"cannot open a raw IPv6 socket to forward echo tests natively: "
                f"{error.strerror}; the server needs IPv6 enabled on this host"
            ) from None
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, NATIVE_SOCKET_BUFFER)
        except OSError as error:  # pragma: no cover - the default buffer works too
            log.debug("cannot enlarge the raw socket's send buffer: %s", error)
        self.sock = sock
        self.sent = 0
        self.send_errors = 0

    def send(self, packet: bytes) -> bool:
        destination = socket.inet_ntop(socket.AF_INET6, packet[24:40])
        try:
            self.sock.sendto(packet, (destination, 0))
        except OSError as error:
            self.send_errors += 1
            if error.errno not in (errno.EAGAIN, errno.ENOBUFS):
                log.debug("cannot send natively to %s: %s", destination, error)
            return False
        self.sent += 1
        return True

    def close(self) -> None:
        self.sock.close()


@dataclass(slots=True)
class ServerDaemon:
    """The running server: the core, its sockets, and the glue between them."""

    loaded: Loaded[ServerConfig]
    core: TeredoServer
    clock: Callable[[], float]
    sockets: dict[IPv4Address, UdpSocket] = field(default_factory=dict)
    native: NativeSocket | None = None
    control: Observers | None = None  # the control socket and metrics endpoint
    started: float = field(default_factory=time.monotonic)
    batch: ServerBatch = field(default_factory=lambda: ServerBatch(allocate=lazy_buffer))

    @property
    def config(self) -> ServerConfig:
        return self.loaded.config

    # -- data path -----------------------------------------------------------------------------

    def on_readable(self, local: IPv4Address) -> None:
        udp = self.sockets[local]
        core, batch = self.core, self.batch
        now = self.clock()
        receive, answer = accel.recv_batch, accel.answer_solicitations
        for _ in range(BATCHES_PER_WAKEUP):
            count, error = receive(udp.sock, batch.data, SLOT_BYTES, batch.records, batch.size)
            if count:
                answers = core.receive_batch(batch, count, local, now, answer)
                if answers:
                    self.send_answers(answers)
                if core.has_output:
                    self.flush()
            if error == errno.EAGAIN:
                break
            if error:
                # A queued ICMP error (ECONNREFUSED...) surfaces here; it is not fatal.
                udp.receive_errors += 1
                log.debug("receiving on %s failed: %s", local, os.strerror(error))

    def send_answers(self, answers: int) -> None:
        """Send the batch's answers, each from the socket its record names (0: primary)."""
        settings, batch, send = self.core.settings, self.batch, accel.send_batch
        for which, local in enumerate((settings.primary, settings.secondary)):
            udp = self.sockets[local]
            _, eagain, enobufs, errors = send(
                udp.sock, batch.out, ANSWER_SLOT_BYTES, batch.out_records, answers, which
            )
            if eagain or enobufs or errors:
                udp.send_eagain += eagain
                udp.send_enobufs += enobufs
                udp.send_errors += errors

    def flush(self) -> None:
        for datagram in self.core.datagrams_to_send():
            udp = self.sockets[datagram.source]
            udp.send(datagram.data, datagram.destination)
        if self.native is not None:
            for packet in self.core.native_packets_to_send():
                self.native.send(packet)

    # -- operations ----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        core = self.core
        settings = core.settings
        counters: dict[str, int] = dict(sorted(core.counters.items()))
        for local, udp in self.sockets.items():
            for name, value in udp.counters().items():
                if value:
                    counters[f"udp_{local}_{name}"] = value
        if self.native is not None:
            counters["native_sent"] = self.native.sent
            if self.native.send_errors:
                counters["native_send_errors"] = self.native.send_errors
        return {
            "role": "server",
            "state": "serving",
            "primary": f"{settings.primary}:{TEREDO_PORT}",
            "secondary": f"{settings.secondary}:{TEREDO_PORT}",
            "client_prefix": str(core.client_prefix),
            "link_local": str(core.link_local),
            "mtu": settings.mtu,
            "allow_private_addresses": settings.allow_private,
            "rate_limit": settings.rate_per_second or 0,
            "require_authentication": settings.require_authentication,
            "client_keys": core.client_key_count,
            "accelerated": accel.ACCELERATED,
            "config": self.loaded.path or "(none)",
            "counters": counters,
            "drops": dict(sorted(core.drops.items())),
            # The limiter's table: every source heard from recently has a bucket there, limited
            # or not (what was refused is drops["rate_limited"]).
            "rate_limit_sources_tracked": core.rate_limit_entries,
        }

    def reload(self) -> None:
        """SIGHUP: apply what can change without new sockets; say what needs a restart."""
        old = self.config
        # Kept: what is bound or set up once (the control socket, the user, the addresses).
        loaded = reload_config(
            self.loaded, load_server_config, {"control_socket": "ControlSocket", "user": "User"}
        )
        new = loaded.config
        if (new.server_bind_address, new.server_bind_address2) != (
            old.server_bind_address,
            old.server_bind_address2,
        ):
            log.warning(
                "ServerBindAddress changed to %s and %s: restart teredo server to bind them; "
                "still serving on %s and %s",
                new.server_bind_address,
                new.server_bind_address2,
                old.server_bind_address,
                old.server_bind_address2,
            )
        kept = replace_record(
            new,
            server_bind_address=old.server_bind_address,
            server_bind_address2=old.server_bind_address2,
        )
        settings = settings_from_config(kept)
        self._reload_keys(kept)
        self.core.reconfigure(settings)
        self.loaded = replace_record(loaded, config=kept)
        log.info(
            "reloaded: advertising %s, MTU %d, private addresses %s, rate limit %s",
            self.core.client_prefix,
            settings.mtu,
            "allowed" if settings.allow_private else "refused",
            _rate_limit(settings),
        )

    def _reload_keys(self, config: ServerConfig) -> None:
        """SIGHUP re-reads ClientKeyFile; a file that cannot be read keeps the keys in use."""
        if config.client_key_file is None:
            self.core.set_client_keys(None)
            return
        try:
            keys = client_keys(config.client_key_file)
        except UserError as error:
            log.warning("%s; the %d client keys in use are kept", error, self.core.client_key_count)
            return
        self.core.set_client_keys(keys)
        log.info("client keys: %d from %s", len(keys), config.client_key_file)

    def close(self) -> None:
        for udp in self.sockets.values():
            udp.close()
        self.sockets.clear()
        if self.native is not None:
            self.native.close()
            self.native = None


def _rate_limit(settings: ServerSettings) -> str:
    if settings.rate_per_second is None:
        return "off"
    return f"{settings.rate_per_second:g}/s per IPv4 address (burst {settings.rate_burst:g})"


def _add_address_advice(config: ServerConfig, address: IPv4Address) -> str:
    """What to do when `address` is not on this host. Not "0.0.0.0": a server answers from the
    address a client asked, so it binds the two addresses themselves. For the second address,
    the interface and prefix length of the first make the `ip addr add` command exact."""
    first, second = config.server_bind_address, config.server_bind_address2
    if address == first:
        return (
            f"a Teredo server needs two consecutive public IPv4 addresses on this host: add "
            f"them to its interface (ip addr add {first}/32 dev IFACE; ip addr add {second}/32 "
            f"dev IFACE), or set ServerBindAddress to the first of two it has"
        )
    where = interface_holding(first)
    device, length = where if where is not None else ("IFACE", 32)
    return (
        f"a Teredo server needs it besides {first}: add it to the interface that has {first} "
        f"(ip addr add {address}/{length} dev {device})"
    )


async def serve(loaded: Loaded[ServerConfig], service: Service) -> int:
    """The server until SIGTERM/SIGINT (`teredo.programs.service.run_service` calls it)."""
    loop = asyncio.get_running_loop()
    config = loaded.config
    daemon = ServerDaemon(loaded=loaded, core=new_core(config), clock=loop.time)
    try:
        for local, setting in (
            (config.server_bind_address, "ServerBindAddress"),
            (config.server_bind_address2, "ServerBindAddress2"),
        ):
            daemon.sockets[local] = await retry(
                functools.partial(
                    open_udp_socket,
                    local,
                    TEREDO_PORT,
                    buffer_bytes=SERVER_BUFFER_BYTES,
                    address_setting=setting,
                    port_setting=None,
                    not_local_fix=_add_address_advice(config, local),
                ),
                service,
            )
        daemon.native = NativeSocket()
        daemon.control = await start_observers(config, daemon.status, started=daemon.started)
        drop_privileges(config.user)
        for local, udp in daemon.sockets.items():
            loop.add_reader(udp.fileno(), daemon.on_readable, local)
        log.info(
            "Teredo server on %s:%d and %s:%d, advertising %s (MTU %d), rate limit %s, "
            "C accelerators %s",
            config.server_bind_address,
            TEREDO_PORT,
            config.server_bind_address2,
            TEREDO_PORT,
            daemon.core.client_prefix,
            config.interface_mtu,
            _rate_limit(daemon.core.settings),
            "on" if accel.ACCELERATED else "off",
        )
        # Signals are handled before READY=1 and the line saying we serve: a SIGTERM right
        # after them must find the handlers.
        signals = catch_shutdown(on_reload=service.reloading(daemon.reload))
        service.ready(
            f"serving on {config.server_bind_address} and {config.server_bind_address2}, "
            f"prefix {daemon.core.client_prefix}"
        )
        await signals
        service.stopping()
    finally:
        for udp in daemon.sockets.values():
            loop.remove_reader(udp.fileno())
        if daemon.control is not None:
            await daemon.control.close()
        daemon.close()
        if daemon.core.counters:
            log.info(
                "served %d datagrams, %d dropped",
                daemon.core.counters["received"],
                sum(daemon.core.drops.values()),
            )
    return 0
