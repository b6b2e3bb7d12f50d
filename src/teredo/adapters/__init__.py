"""The adapters: everything teredo needs from the operating system, one file per concept.

Nothing here knows Teredo's rules (those are in `teredo.core`); the programs in
`teredo.programs` join the two.

| module | concept |
| --- | --- |
| `udp` | IPv4 UDP sockets with Teredo's options: DF off, big buffers, IP_PKTINFO, GSO, GRO |
| `tun` | the TUN device (`/dev/net/tun`): open with or without offloads, read, write |
| `tun_runs` | reading an offloaded TUN queue in runs of packets for one destination |
| `accel` | which implementation of the data path's hot functions runs: C or the Python twins |
| `netlink` | interface configuration: link, MTU, addresses, routes, sysctls |
| `rtnetlink` | the rtnetlink messages of `netlink`, packed with `struct` on an AF_NETLINK socket |
| `control` | the control socket (`teredo status`): the daemon's server and the command's client |
| `daemon` | logging, the locked pid file, detaching, signals of a daemon on the asyncio loop |
| `notify` | systemd's notification protocol (READY, STATUS, RELOADING, STOPPING, WATCHDOG) |
| `privileges` | dropping root to an unprivileged user, optionally keeping CAP_NET_ADMIN |
| `timer` | one asyncio timer re-armed to a core's `get_timer()` deadline |
| `bpf` | the kernel data path: loading `teredo/bpf/datapath.bpf.c` (libbpf), attaching, its maps |
| `buffers` | receive buffers whose pages exist only where data landed (anonymous mappings) |
| `openssl` | the event loop and digests imported without OpenSSL (`ssl`, `_hashlib`) |
| `heap` | the C heap: one malloc arena for every thread, free pages given back (glibc) |
| `resolver` | a hostname's IPv4 address; the source address the kernel picks toward a host |

None imports pyroute2 (the lab and the tests do): a daemon starts and stays small without it
(`bash scripts/bench --footprint`).
"""
