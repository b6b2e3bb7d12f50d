"""The kernel data path's loader: `teredo/bpf/datapath.bpf.c` in the kernel, and its maps.

Theory of operation
-------------------
`KernelDataPath.open(...)` loads the compiled object (`datapath.bpf.o`, built at install time
next to its source when clang and the libbpf headers were there), sizes the peer map, writes
the settings, and attaches `teredo_decap` to the ingress of each IPv4 interface and
`teredo_encap` to the egress of the TUN interface. From then on the kernel decapsulates and
encapsulates for the peers the daemon puts in the map (`set_peer`), and passes everything else
to the daemon as before (what it takes and passes: `teredo.bpf.datapath`). The daemon keeps
in the map exactly its *established* peers (trusted, nothing queued, RFC 4380 §5.2.3), reads
back their last reception times (`last_rx`, `last_rx_batch`: the kernel updates them for the
packets it takes, in CLOCK_MONOTONIC, the clock of `time.monotonic()`), and removes a peer
when it is no longer established or expires.

Any reason the data path cannot be used (no object built, libbpf missing, no permission, a
kernel too old, the verifier's refusal, an interface that is not Ethernet) is one
`KernelDataPathUnavailable` with a one-sentence reason: the daemon logs it and keeps its
user-space path, which is always complete on its own.

Why ctypes and the system libbpf (`libbpf.so.1`, Debian's libbpf1): libbpf does the
relocations of maps into the programs, BTF, and the TC plumbing, all of which a loader of our
own would have to redo and keep up with the kernel; ctypes needs no build step and no Python
dependency. Only stable libbpf 1.x entry points are used.

How it attaches, and why not always clsact: on Linux >= 6.6 through *tcx links*
(`bpf_link_create` with BPF_TCX_INGRESS/EGRESS): a link belongs to its file descriptor, so a
daemon that crashes or is killed leaves nothing behind; a clsact filter would outlive it and
keep redirecting its peers' datagrams into a TUN interface that no longer exists. On 6.3-6.5
it falls back to clsact filters (`bpf_tc_hook_create`, `bpf_tc_attach`), and `close()`
detaches them and removes the clsact qdisc only if it created it. Either kind runs after
the other TC programs already attached (`attach_mode` forces one).

Privileges: loading needs root (CAP_BPF and CAP_NET_ADMIN); open it before the daemon drops
privileges. The map file descriptors stay valid after the drop, and map updates through them
need no capability (Linux >= 6.5; the tests check it with CAP_NET_ADMIN kept). Closing tcx
links needs none either; detaching clsact filters needs CAP_NET_ADMIN.

Why GSO packets are not encapsulated: `bpf_skb_adjust_room` with
BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | ENCAP_L4_UDP | FIXED_GSO marks a super-packet as a UDP tunnel
(SKB_GSO_UDP_TUNNEL) for the kernel to cut into Teredo datagrams at the egress device. Tried on
Linux 6.18 with a UDP_SEGMENT super-packet routed into the TUN device: the veth dropped it at
transmission (its tx_dropped counter), through bpf_redirect and bpf_redirect_neigh alike, and
nothing reached the peer. Had it passed, a veth hands an uncut super-packet, with partial inner
checksums, to the namespace on its other side, whose Teredo socket would read it as one 64 KiB
datagram. Only a network card (or the software segmentation in front of one) would cut it
right, and the program cannot tell which kind of device the route ends in. Super-packets go
to user space, which cuts them itself (`teredo.core.offload`).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import mmap
import os
import socket
import sys
from collections.abc import Iterable, Iterator
from ipaddress import IPv6Network
from socket import inet_aton
from typing import Any, Final, Literal

from teredo.bpf.datapath import (
    COUNTER_NAMES,
    PEER_TRUSTED,
    PEER_VALUE,
    DataPathSettings,
    PeerEntry,
    Role,
)
from teredo.core.address import TEREDO_PREFIX, Endpoint
from teredo.core.errors import UserError
from teredo.core.peers import PEER_VALIDITY

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_PEERS",
    "OBJECT_PATH",
    "KernelDataPath",
    "KernelDataPathUnavailable",
    "TestRun",
    "ipv4_interfaces",
]

# A string, not a pathlib.Path: pathlib (and the urllib.parse it imports) would cost a daemon
# 0.3 MiB for this one path.
OBJECT_PATH: Final = os.path.join(
    os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "bpf", "datapath.bpf.o"
)
LIBBPF: Final = "libbpf.so.1"
DEFAULT_MAX_PEERS: Final = 65536
MAX_LOCAL_ADDRESSES: Final = 256
MINIMUM_KERNEL: Final = (6, 3)  # BPF_F_ADJ_ROOM_DECAP_L3_IPV6
BATCH_ENTRIES: Final = 4096

AttachMode = Literal["auto", "tcx", "clsact"]
Program = Literal["decap", "encap"]

# <linux/bpf.h>
BPF_ANY: Final = 0
BPF_TCX_INGRESS: Final = 46
BPF_TCX_EGRESS: Final = 47
BPF_TC_INGRESS: Final = 1
BPF_TC_EGRESS: Final = 2
TC_ACT_OK: Final = 0
TC_ACT_SHOT: Final = 2
TC_ACT_REDIRECT: Final = 7
ARPHRD_ETHER: Final = 1
SIOCGIFHWADDR: Final = 0x8927
SIOCGIFADDR: Final = 0x8915
ANY: Final = "0.0.0.0"
ENOTSUPP: Final = 524  # the kernel-internal errno of an unsupported operation
ADDRESS_BYTES: Final = 16
_PEER_VALUE_BYTES: Final = 16
_PEER_VALUE_PACK: Final = PEER_VALUE.pack_into
_LOG_BYTES: Final = 1 << 20


class KernelDataPathUnavailable(UserError):
    """The kernel data path cannot be used here; the message says why, in one sentence."""


class TestRun:
    """The result of one BPF_PROG_TEST_RUN: the program's return code and the packet after
    it (the program may have changed it)."""

    __test__ = False  # not a pytest class

    __slots__ = ("action", "duration_ns", "packet")

    def __init__(self, action: int, packet: bytes, duration_ns: int = 0) -> None:
        self.action = action
        self.packet = packet
        self.duration_ns = duration_ns  # the kernel's average per repetition

    def __repr__(self) -> str:
        return f"TestRun(action={self.action}, packet={self.packet.hex()})"


class _OpenOptions(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("object_name", ctypes.c_char_p),
        ("relaxed_maps", ctypes.c_bool),
        ("pin_root_path", ctypes.c_char_p),
        ("unused", ctypes.c_uint32),
        ("kconfig", ctypes.c_char_p),
        ("btf_custom_path", ctypes.c_char_p),
        ("kernel_log_buf", ctypes.c_void_p),
        ("kernel_log_size", ctypes.c_size_t),
        ("kernel_log_level", ctypes.c_uint32),
    ]


class _TcHook(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("ifindex", ctypes.c_int),
        ("attach_point", ctypes.c_int),
        ("parent", ctypes.c_uint32),
    ]


class _TcOptions(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("prog_fd", ctypes.c_int),
        ("flags", ctypes.c_uint32),
        ("prog_id", ctypes.c_uint32),
        ("handle", ctypes.c_uint32),
        ("priority", ctypes.c_uint32),
    ]


class _TestRunOptions(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


class _BatchOptions(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("elem_flags", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    ]


_P = ctypes.c_void_p
_I = ctypes.c_int
_SIGNATURES: Final[dict[str, tuple[Any, list[Any]]]] = {
    "libbpf_set_print": (_P, [_P]),
    "libbpf_num_possible_cpus": (_I, []),
    "bpf_object__open_file": (_P, [ctypes.c_char_p, _P]),
    "bpf_object__load": (_I, [_P]),
    "bpf_object__close": (None, [_P]),
    "bpf_object__find_map_by_name": (_P, [_P, ctypes.c_char_p]),
    "bpf_object__find_program_by_name": (_P, [_P, ctypes.c_char_p]),
    "bpf_map__set_max_entries": (_I, [_P, ctypes.c_uint32]),
    "bpf_map__fd": (_I, [_P]),
    "bpf_program__fd": (_I, [_P]),
    "bpf_map_update_elem": (_I, [_I, _P, _P, ctypes.c_uint64]),
    "bpf_map_lookup_elem": (_I, [_I, _P, _P]),
    "bpf_map_delete_elem": (_I, [_I, _P]),
    "bpf_map_get_next_key": (_I, [_I, _P, _P]),
    "bpf_map_lookup_batch": (_I, [_I, _P, _P, _P, _P, _P, _P]),
    "bpf_prog_test_run_opts": (_I, [_I, _P]),
    "bpf_link_create": (_I, [_I, _I, _I, _P]),
    "bpf_tc_hook_create": (_I, [_P]),
    "bpf_tc_hook_destroy": (_I, [_P]),
    "bpf_tc_attach": (_I, [_P, _P]),
    "bpf_tc_detach": (_I, [_P, _P]),
}

_libbpf: ctypes.CDLL | None = None


def _library() -> ctypes.CDLL:
    """libbpf through ctypes, its functions typed, its messages silenced (errors are ours)."""
    global _libbpf
    if _libbpf is None:
        try:
            library = ctypes.CDLL(LIBBPF, use_errno=True)
        except OSError:
            raise KernelDataPathUnavailable(
                f"{LIBBPF} is not installed; install it (Debian: apt-get install libbpf1) to "
                "use the kernel data path"
            ) from None
        for name, (result, arguments) in _SIGNATURES.items():
            function = getattr(library, name)
            function.restype = result
            function.argtypes = arguments
        library.libbpf_set_print(None)
        _libbpf = library
    return _libbpf


def _failure(result: int) -> int:
    """The errno of a failed libbpf call (libbpf 1.x returns -errno and sets errno)."""
    return -result if result < 0 else ctypes.get_errno() or errno.EIO


# capabilities(7) numbers: what loading and attaching the programs takes. CAP_PERFMON lets the
# verifier accept the programs' pointer arithmetic; CAP_SYS_ADMIN stands for both BPF ones.
_CAP_NET_ADMIN: Final = 12
_CAP_SYS_ADMIN: Final = 21
_CAP_PERFMON: Final = 38
_CAP_BPF: Final = 39


def missing_capabilities(proc_status: str) -> list[str]:
    """The capabilities the kernel data path needs that `proc_status` (the text of
    /proc/self/status) says this process lacks, by name."""
    effective = 0
    for line in proc_status.splitlines():
        if line.startswith("CapEff:"):
            effective = int(line.split()[1], 16)
    has = {bit for bit in range(64) if effective >> bit & 1}
    missing = [] if _CAP_NET_ADMIN in has else ["CAP_NET_ADMIN"]
    if _CAP_SYS_ADMIN not in has:
        missing += [name for bit, name in ((_CAP_BPF, "CAP_BPF"), (_CAP_PERFMON, "CAP_PERFMON"))
                    if bit not in has]  # fmt: skip
    return missing


def _missing_capabilities() -> list[str]:
    try:
        with open("/proc/self/status") as status:
            return missing_capabilities(status.read())
    except OSError:
        return []


def _kernel_version() -> tuple[int, int]:
    release = os.uname().release
    try:
        major, minor = release.split(".")[:2]
        return int(major), int("".join(c for c in minor if c.isdigit()) or 0)
    except ValueError:
        return (0, 0)


def _interface_type(ifindex: int) -> int:
    """The ARPHRD_* type of an interface of this network namespace (SIOCGIFHWADDR: sysfs
    shows the namespace that mounted it), or -1."""
    try:
        name = socket.if_indextoname(ifindex).encode()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            answer = fcntl.ioctl(probe, SIOCGIFHWADDR, name.ljust(40, b"\0"))
    except OSError:
        return -1
    return int.from_bytes(answer[16:18], sys.byteorder)


def _interface_address(ifindex: int) -> str:
    """The primary IPv4 address of an interface (SIOCGIFADDR), or 0.0.0.0."""
    try:
        name = socket.if_indextoname(ifindex).encode()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            answer = fcntl.ioctl(probe, SIOCGIFADDR, name.ljust(40, b"\0"))
    except OSError:
        return ANY
    return socket.inet_ntoa(answer[20:24])


def ipv4_interfaces(bound: str) -> list[int]:
    """The Ethernet interfaces a daemon bound to `bound` receives its datagrams on: the one
    holding that IPv4 address, or with 0.0.0.0 every Ethernet interface with an IPv4 address
    (the interface indexes, for `KernelDataPath.open`)."""
    found = []
    for ifindex, _ in socket.if_nameindex():
        if _interface_type(ifindex) != ARPHRD_ETHER:
            continue
        address = _interface_address(ifindex)
        if address != ANY and (bound in (ANY, address)):
            found.append(ifindex)
    return found


class _Attachment:
    """One program attached to one interface: a tcx link, or a clsact filter."""

    __slots__ = ("created_qdisc", "hook", "link_fd", "options")

    def __init__(
        self,
        *,
        link_fd: int = -1,
        hook: _TcHook | None = None,
        options: _TcOptions | None = None,
        created_qdisc: bool = False,
    ) -> None:
        self.link_fd = link_fd
        self.hook = hook
        self.options = options
        self.created_qdisc = created_qdisc


class KernelDataPath:
    """The loaded data path, its maps and its attachments. Build it with `open` (loaded and
    attached) or `load` (loaded only: for `test_run`)."""

    def __init__(self, library: ctypes.CDLL, obj: int, settings: DataPathSettings) -> None:
        self._lib = library
        self._object: int | None = obj
        self.settings = settings
        self._attachments: list[_Attachment] = []
        self._cpus = max(1, library.libbpf_num_possible_cpus())

        def map_fd(name: str) -> int:
            handle = library.bpf_object__find_map_by_name(obj, name.encode())
            return int(library.bpf_map__fd(handle))

        def program_fd(name: str) -> int:
            handle = library.bpf_object__find_program_by_name(obj, name.encode())
            return int(library.bpf_program__fd(handle))

        self._peers = map_fd("peers")
        self._local_addresses = map_fd("local_addresses")
        self._settings = map_fd("settings")
        self._counters = map_fd("counters")
        self._decap = program_fd("teredo_decap")
        self._encap = program_fd("teredo_encap")
        self._local: set[bytes] = set()
        self._key = ctypes.create_string_buffer(ADDRESS_BYTES)  # `set_peer`'s, reused
        self._value = ctypes.create_string_buffer(_PEER_VALUE_BYTES)
        self._update_elem = library.bpf_map_update_elem

    # -- lifecycle ------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        role: Role,
        *,
        tun_ifindex: int,
        ipv4_ifindexes: Iterable[int],
        local: Endpoint,
        prefix: IPv6Network = TEREDO_PREFIX,
        local_addresses: Iterable[bytes] = (),
        max_peers: int = DEFAULT_MAX_PEERS,
        attach_mode: AttachMode = "auto",
        object_path: str | os.PathLike[str] = OBJECT_PATH,
        learn: bool = False,
        allow_private: bool = False,
    ) -> KernelDataPath:
        """Load the data path and attach it: decapsulation at the ingress of each of
        `ipv4_ifindexes` (Ethernet interfaces), encapsulation at the egress of `tun_ifindex`.

        `local` is the daemon's bound UDP socket address; `local_addresses` what a client
        (its Teredo address) or a host-specific relay (the host's addresses) serves. With
        `learn` (relays), the map also learns the new sources the engine would trust, their
        mapping global unless `allow_private` (`teredo.bpf.datapath`).
        Raises `KernelDataPathUnavailable` when it cannot be used.
        """
        interfaces = list(ipv4_ifindexes)
        if not interfaces:
            raise KernelDataPathUnavailable(
                "the kernel data path needs at least one IPv4 interface to attach to"
            )
        for ifindex in interfaces:
            if _interface_type(ifindex) != ARPHRD_ETHER:
                raise KernelDataPathUnavailable(
                    f"interface {ifindex} is not an Ethernet interface; the kernel data path "
                    "attaches to Ethernet interfaces only"
                )
        settings = DataPathSettings(
            role=role,
            local=local,
            prefix=prefix,
            tun_ifindex=tun_ifindex,
            fib_ifindex=interfaces[0],
            validity=PEER_VALIDITY,
            source=local[0] if local[0] != ANY else _interface_address(interfaces[0]),
            learn=learn,
            allow_private=allow_private,
        )
        path = cls.load(settings, max_peers=max_peers, object_path=object_path)
        try:
            path.set_local_addresses(local_addresses)
            for ifindex in interfaces:
                path._attach(path._decap, ifindex, ingress=True, mode=attach_mode)
            path._attach(path._encap, tun_ifindex, ingress=False, mode=attach_mode)
        except BaseException:
            path.close()
            raise
        return path

    @classmethod
    def load(
        cls,
        settings: DataPathSettings,
        *,
        max_peers: int = DEFAULT_MAX_PEERS,
        object_path: str | os.PathLike[str] = OBJECT_PATH,
    ) -> KernelDataPath:
        """Load the programs and maps with `settings`, attached nowhere."""
        if not 1 <= max_peers <= 1 << 26:
            raise KernelDataPathUnavailable(f"max_peers {max_peers} is out of range (1-2^26)")
        version = _kernel_version()
        if version < MINIMUM_KERNEL:
            raise KernelDataPathUnavailable(
                f"Linux {os.uname().release} is too old for the kernel data path; it needs "
                f"{MINIMUM_KERNEL[0]}.{MINIMUM_KERNEL[1]} or later"
            )
        object_name = os.path.basename(object_path)
        if not os.path.exists(object_path):
            raise KernelDataPathUnavailable(
                f"the kernel data path was not built ({object_name} is missing); install "
                "clang and libbpf-dev, then reinstall teredo"
            )
        library = _library()
        # The verifier writes its log only when it refuses the program: in an anonymous mapping
        # the 1 MiB costs no memory unless it does (a zero-filled buffer would, for good).
        log_buffer = (ctypes.c_char * _LOG_BYTES).from_buffer(mmap.mmap(-1, _LOG_BYTES))
        options = _OpenOptions(
            sz=ctypes.sizeof(_OpenOptions),
            kernel_log_buf=ctypes.cast(log_buffer, ctypes.c_void_p),
            kernel_log_size=_LOG_BYTES,
            kernel_log_level=0,
        )
        obj = library.bpf_object__open_file(os.fsencode(object_path), ctypes.byref(options))
        if not obj:
            code = ctypes.get_errno()
            raise KernelDataPathUnavailable(
                f"cannot read {object_name}: {os.strerror(code)}; reinstall teredo"
            )
        try:
            peers = library.bpf_object__find_map_by_name(obj, b"peers")
            library.bpf_map__set_max_entries(peers, max_peers)
            result = library.bpf_object__load(obj)
            if result:
                code = _failure(result)
                verifier = log_buffer.value.decode(errors="replace").strip()
                if verifier:
                    log.debug("verifier log:\n%s", verifier)
                missing = _missing_capabilities()
                if code in (errno.EPERM, errno.EACCES) and (missing or not verifier):
                    # Without CAP_PERFMON the verifier refuses with a log, which once read as
                    # "needs a newer Linux": name what is missing instead.
                    raise KernelDataPathUnavailable(
                        "loading the kernel data path needs CAP_BPF, CAP_PERFMON and "
                        f"CAP_NET_ADMIN (missing: {', '.join(missing) or 'unknown'}); run the "
                        "daemon as root, or add them to the unit's CapabilityBoundingSet"
                    )
                raise KernelDataPathUnavailable(
                    f"the kernel refused the data path program ({os.strerror(code)}); it "
                    f"needs Linux {MINIMUM_KERNEL[0]}.{MINIMUM_KERNEL[1]} or later with BPF "
                    "enabled (the debug log has the verifier's reasons)"
                )
        except BaseException:
            library.bpf_object__close(obj)
            raise
        path = cls(library, obj, settings)
        path.write_settings(settings)
        return path

    def close(self) -> None:
        """Detach everything attached, remove a clsact qdisc created here, free the maps.
        Packets in flight finish; afterwards the daemon's user-space path sees them all."""
        lib = self._lib
        for attachment in reversed(self._attachments):
            if attachment.link_fd >= 0:
                os.close(attachment.link_fd)
                continue
            hook, options = attachment.hook, attachment.options
            assert hook is not None and options is not None
            detach = _TcOptions(
                sz=ctypes.sizeof(_TcOptions), handle=options.handle, priority=options.priority
            )
            result = lib.bpf_tc_detach(ctypes.byref(hook), ctypes.byref(detach))
            if result and _failure(result) != errno.ENOENT:
                log.warning(
                    "could not detach the data path from interface %d: %s",
                    hook.ifindex,
                    os.strerror(_failure(result)),
                )
            if attachment.created_qdisc:
                hook.attach_point = BPF_TC_INGRESS | BPF_TC_EGRESS
                lib.bpf_tc_hook_destroy(ctypes.byref(hook))
        self._attachments.clear()
        if self._object is not None:
            lib.bpf_object__close(self._object)
            self._object = None

    def __enter__(self) -> KernelDataPath:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def attach_modes(self) -> list[str]:
        """How each program is attached, in order ("tcx" or "clsact")."""
        return ["tcx" if a.link_fd >= 0 else "clsact" for a in self._attachments]

    def _attach(self, program: int, ifindex: int, *, ingress: bool, mode: AttachMode) -> None:
        lib = self._lib
        if mode in ("auto", "tcx"):
            kind = BPF_TCX_INGRESS if ingress else BPF_TCX_EGRESS
            fd = lib.bpf_link_create(program, ifindex, kind, None)
            if fd >= 0:
                self._attachments.append(_Attachment(link_fd=fd))
                return
            code = _failure(fd)
            if mode == "tcx" or code not in (errno.EINVAL, errno.EOPNOTSUPP, ENOTSUPP):
                raise self._attach_error(ifindex, code)
        point = BPF_TC_INGRESS if ingress else BPF_TC_EGRESS
        hook = _TcHook(sz=ctypes.sizeof(_TcHook), ifindex=ifindex, attach_point=point)
        result = lib.bpf_tc_hook_create(ctypes.byref(hook))
        created = result == 0
        if result and _failure(result) != errno.EEXIST:
            raise self._attach_error(ifindex, _failure(result))
        options = _TcOptions(sz=ctypes.sizeof(_TcOptions), prog_fd=program)
        result = lib.bpf_tc_attach(ctypes.byref(hook), ctypes.byref(options))
        if result:
            if created:
                hook.attach_point = BPF_TC_INGRESS | BPF_TC_EGRESS
                lib.bpf_tc_hook_destroy(ctypes.byref(hook))
            raise self._attach_error(ifindex, _failure(result))
        self._attachments.append(
            _Attachment(hook=hook, options=_TcOptions(**_fields(options)), created_qdisc=created)
        )

    @staticmethod
    def _attach_error(ifindex: int, code: int) -> KernelDataPathUnavailable:
        if code in (errno.EPERM, errno.EACCES):
            return KernelDataPathUnavailable(
                "attaching the kernel data path needs CAP_NET_ADMIN; run the daemon as root"
            )
        return KernelDataPathUnavailable(
            f"cannot attach the kernel data path to interface {ifindex}: {os.strerror(code)}"
        )

    # -- settings -------------------------------------------------------------------------------

    def write_settings(self, settings: DataPathSettings) -> None:
        """Replace the `settings` record (e.g. a new bound address)."""
        key = ctypes.c_uint32(0)
        value = ctypes.create_string_buffer(settings.pack())
        self._update(self._settings, ctypes.byref(key), value)
        self.settings = settings

    def set_local_addresses(self, addresses: Iterable[bytes]) -> None:
        """What a client (its own Teredo address) or a host-specific relay (the host's
        addresses) serves, and for a client the only source it sends from."""
        wanted = {bytes(address) for address in addresses}
        if any(len(address) != ADDRESS_BYTES for address in wanted):
            raise ValueError("local addresses are 16-byte IPv6 addresses")
        if len(wanted) > MAX_LOCAL_ADDRESSES:
            raise ValueError(f"at most {MAX_LOCAL_ADDRESSES} local addresses")
        one = ctypes.create_string_buffer(b"\x01", 1)
        for address in wanted - self._local:
            self._update(self._local_addresses, ctypes.create_string_buffer(address, 16), one)
        for address in self._local - wanted:
            key = ctypes.create_string_buffer(address, 16)
            self._lib.bpf_map_delete_elem(self._local_addresses, key)
        self._local = wanted

    def _update(self, fd: int, key: Any, value: Any) -> None:
        result = self._lib.bpf_map_update_elem(fd, key, value, BPF_ANY)
        if result:
            raise OSError(_failure(result), os.strerror(_failure(result)))

    # -- peers ----------------------------------------------------------------------------------

    def set_peer(self, address: bytes, mapping: Endpoint, last_rx: float) -> bool:
        """Put an established peer in the map (or update it): its mapping and its last
        reception time on the `time.monotonic()` clock. False when the map is full (the peer
        then stays on the user-space path). This overwrites a newer `last_rx` the kernel may
        have written meanwhile: read it first when that matters."""
        # Every new peer passes here once (about 1.5 µs; new buffers and a PeerEntry each time
        # took 6, a third of a new peer's cost, and a relay primed at 50 000 new peers a second
        # fell behind): the buffers are the object's, the value packed in place.
        key, value = self._key, self._value
        key.raw = address
        _PEER_VALUE_PACK(
            value,
            0,
            inet_aton(mapping[0]),
            mapping[1].to_bytes(2, "big"),
            PEER_TRUSTED,
            round(last_rx * 1e9) & 0xFFFFFFFFFFFFFFFF,
        )
        result = self._update_elem(self._peers, key, value, BPF_ANY)
        if result == 0:
            return True
        code = _failure(result)
        if code in (errno.E2BIG, errno.ENOMEM):
            return False
        raise OSError(code, os.strerror(code))

    def remove_peer(self, address: bytes) -> bool:
        """Take a peer out of the map; False when it was not there."""
        key = ctypes.create_string_buffer(bytes(address), ADDRESS_BYTES)
        return bool(self._lib.bpf_map_delete_elem(self._peers, key) == 0)

    def peer(self, address: bytes) -> PeerEntry | None:
        """A peer's map entry, or None."""
        key = ctypes.create_string_buffer(bytes(address), ADDRESS_BYTES)
        value = ctypes.create_string_buffer(_PEER_VALUE_BYTES)
        if self._lib.bpf_map_lookup_elem(self._peers, key, value):
            return None
        return PeerEntry.unpack(value.raw)

    def learned_peer(self, address: bytes) -> tuple[Endpoint, float] | None:
        """A trusted peer's mapping and last reception time (`time.monotonic()` clock), or
        None: for the daemon to adopt a peer the map learned by itself."""
        entry = self.peer(address)
        if entry is None or not entry.flags & PEER_TRUSTED:
            return None
        return entry.mapping, entry.last_rx_ns / 1e9

    def last_rx(self, address: bytes) -> float | None:
        """A peer's last reception time (`time.monotonic()` clock), or None if not in the map."""
        entry = self.peer(address)
        return None if entry is None else entry.last_rx_ns / 1e9

    def last_rx_batch(self, batch: int = BATCH_ENTRIES) -> Iterator[tuple[bytes, float]]:
        """Every peer's address and last reception time, `batch` entries per system call
        (BPF_MAP_LOOKUP_BATCH): for the idle sweeps over a large table. Entries added or
        removed meanwhile may or may not be seen. A failing call ends the walk (logged): the
        sweeps run from the daemon's timer, which must go on."""
        lib = self._lib
        keys = ctypes.create_string_buffer(batch * ADDRESS_BYTES)
        values = ctypes.create_string_buffer(batch * _PEER_VALUE_BYTES)
        token_in = ctypes.c_uint64(0)
        token_out = ctypes.c_uint64(0)
        options = _BatchOptions(sz=ctypes.sizeof(_BatchOptions))
        first = True
        while True:
            count = ctypes.c_uint32(batch)
            result = lib.bpf_map_lookup_batch(
                self._peers,
                None if first else ctypes.byref(token_in),
                ctypes.byref(token_out),
                keys,
                values,
                ctypes.byref(count),
                ctypes.byref(options),
            )
            code = _failure(result) if result else 0
            if code and code != errno.ENOENT:
                log.warning("reading the kernel's peer map failed: %s", os.strerror(code))
                return
            found = count.value
            raw_keys = keys.raw
            # The values as native u64s: each entry's second one is its last reception.
            times = memoryview(values).cast("B").cast("Q")[1 : 2 * found : 2]
            yield from zip(
                [raw_keys[at : at + ADDRESS_BYTES] for at in range(0, found * ADDRESS_BYTES, 16)],
                [last_rx / 1e9 for last_rx in times],
                strict=True,
            )
            if code == errno.ENOENT:
                return
            token_in.value = token_out.value
            first = False

    # -- counters and test runs -------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """Packets decapsulated, encapsulated, and passed to user space by reason (all CPUs)."""
        lib = self._lib
        key = ctypes.c_uint32(0)
        values = (ctypes.c_uint64 * self._cpus)()
        result = {}
        for index, name in enumerate(COUNTER_NAMES):
            key.value = index
            if lib.bpf_map_lookup_elem(self._counters, ctypes.byref(key), values) == 0:
                result[name] = sum(values)
        return result

    def test_run(self, program: Program, data: bytes, repeat: int = 1) -> TestRun:
        """Run a program on `data` (starting with an Ethernet header) through
        BPF_PROG_TEST_RUN, `repeat` times: nothing is sent or redirected; maps are read and
        written. For tests and for measuring the program's own cost."""
        fd = self._decap if program == "decap" else self._encap
        data_in = ctypes.create_string_buffer(bytes(data), len(data))
        out_size = len(data) + 256
        data_out = ctypes.create_string_buffer(out_size)
        options = _TestRunOptions(
            sz=ctypes.sizeof(_TestRunOptions),
            data_in=ctypes.cast(data_in, ctypes.c_void_p),
            data_out=ctypes.cast(data_out, ctypes.c_void_p),
            data_size_in=len(data),
            data_size_out=out_size,
            repeat=repeat,
        )
        result = self._lib.bpf_prog_test_run_opts(fd, ctypes.byref(options))
        if result:
            code = _failure(result)
            raise OSError(code, f"BPF_PROG_TEST_RUN failed: {os.strerror(code)}")
        return TestRun(options.retval, data_out.raw[: options.data_size_out], options.duration)


def _fields(structure: ctypes.Structure) -> dict[str, Any]:
    return {name: getattr(structure, name) for name, *_ in structure._fields_}
