"""The teredo lab: a small Teredo Internet in network namespaces (README, "The lab").

Eight namespaces named ``<name>-<node>`` (default name ``tl``), joined by veth pairs created
directly inside them, so nothing is ever added to the host's own namespace::

                                v6  2001:db8:2::2, 198.51.100.34  (native IPv6 host)
                                 |
    srv -------------------- inet (router; routes 2001::/32 to the relay)
    198.51.100.2 and .3    /     \\                 \\
    2001:db8:1::2       nat1      nat2              relay 198.51.100.18, 2001:db8:3::2
    (Teredo server)  203.0.113.2  203.0.113.18      (Teredo relay, interface "teredo")
                         |          |
                       cli1        cli2             Teredo clients, interface "teredo"
                     10.1.0.2    10.2.0.2           (a public 203.0.113.x with NAT kind none)

Each NAT box is an nftables ruleset of one kind: fullcone, restricted (address-restricted),
port-restricted, symmetric, or none. Every role (server, relay, client1, client2) runs either
this project's daemon or Miredo, as a process of its own inside its node; the lab's state, the
generated configuration files and the role logs live in /run/teredo-lab/<name>/.

With `--generator` (`Lab(generator=True)`) a ninth node "gen" joins for the benchmarks: it
owns the fake-client range 100.64.0.0/10, sends their traffic and counts what comes back.

With `--relays 2` (`Lab(relays=2)`) two relay sites, relay1 and relay2, replace the relay:
each runs a relay and BIRD 2, which announces 2001::/32 to BIRD on the router by eBGP with
BFD while the relay is healthy; the router's route comes from BGP and prefers relay1.

Modules: `topology` (the plan, as data), `nat` (rulesets), `generator` (the generator node's
counting rulesets), `roles` (configs, command lines, which roles this project implements),
`netns` (pyroute2 and setns), `processes` (start and stop by pid), `state` (the JSON state
file), `lab` (the `Lab` API), `commands` (the CLI), `bgp` (the relay sites' BIRD
configurations and birdc queries), `pingstream` (pings read back as replies and outages),
`failover` (breaking the preferred relay site and measuring the pings meanwhile).
"""
