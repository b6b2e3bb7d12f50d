"""The runtime: everything in teredo that touches the operating system.

The protocol cores (`teredo.client`, `teredo.server`, `teredo.relay`) are sans-I/O state machines.
This package is the edge around them; the role daemons (`server_daemon`, `client_daemon`,
`relay_daemon`) are built from these pieces, one file per concept:

| module | concept |
| --- | --- |
| `udp` | IPv4 UDP sockets with Teredo's options (DF off, big buffers, IP_PKTINFO, multicast) |
| `tun` | the TUN device (`/dev/net/tun`): open, read into a reused buffer, write |
| `netlink` | interface configuration through pyroute2: link, MTU, addresses, routes, sysctls |
| `control` | the control socket (`teredo status`): server inside the daemon, client for the CLI |
| `daemon` | logging, pid file, signals on the asyncio loop |
| `privileges` | dropping root to an unprivileged user, optionally keeping CAP_NET_ADMIN |
| `timer` | one asyncio timer re-armed to a core's `get_timer()` deadline |
| `tunnel_loop` | the TUN <-> UDP loop of the client and relay daemons (engine fast paths first) |

A daemon is put together in this order (each step names its module)::

    setup_logging(verbosity, syslog_facility)              # daemon
    pid_file = PidFile(path).acquire()                      # daemon (optional)
    udp = open_udp_socket(bind_address, bind_port)          # udp
    tun = open_tun(interface_name)                          # tun (client, relay)
    iface = InterfaceConfigurator(tun.name)                 # netlink
    await iface.configure_relay(prefix, mtu)                # netlink (client: configure_client)
    control = await start_control_server(path, get_status)  # control
    drop_privileges(user, keep=("CAP_NET_ADMIN",))           # privileges (client keeps it)
    loop.add_reader(udp.fileno(), ...); loop.add_reader(tun.fileno(), ...)
    timer = Timer(on_timer); timer.set(core.get_timer())    # timer
    await wait_for_shutdown(on_reload)                      # daemon
    ... then, in `finally`: await iface.undo(); await control.close(); tun.close(); udp.close()

Nothing here imports pyroute2 except `netlink`, so `teredo status` starts without it.
"""
