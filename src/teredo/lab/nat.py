"""nftables rulesets for the lab's NAT boxes, one per NAT kind (text only; loaded by netns).

Every kind masquerades the inside network on "wan" (Linux keeps the source port when it is
free, so one client behind a box keeps its port: endpoint-independent mapping) and drops, with
no ICMP, whatever arrives on "wan" that is neither a reply nor let in on purpose, as home routers
do. The kinds differ in what they let in:

- port-restricted: only replies (conntrack's address-and-port-dependent filtering);
- restricted: also new UDP to a mapped port from any remote *address* that port has sent to
  (any remote port): the pair (remote address, mapped port) is recorded in the set `peers`
  after source NAT, and matching inbound packets are DNATed to the client;
- fullcone: also new UDP to any mapped port from anyone (the set `mapped`);
- symmetric (and upnp-symmetric): `masquerade fully-random`, a new random port for every new
  5-tuple, and only replies let in;
- symmetric-preserving: a new mapping per destination that keeps the client's port when no
  mapping uses that port yet (the set `used` holds the public ports in use), a random port
  otherwise: a local port's first destination sees it unchanged, the next ones do not (the
  port-preserving symmetric NAT of RFC 6081 §3.3); only replies let in;
- symmetric-sequential: a new mapping per destination, ports handed out one after another
  from SEQUENTIAL_BASE (`numgen inc`, evaluated once per new flow; RFC 6081 §3.4); only replies
  let in;
- address-symmetric: the port depends on the destination address and the client's port, not
  on the destination port (a hash of both); only replies let in;
- upnp-port-restricted and upnp-symmetric: as port-restricted and symmetric, plus the chains
  of the box's UPnP IGD (teredo.lab.upnp), which forward the ports clients map;
- none: no ruleset; the box is a plain router and the client has a public address.

Set entries expire after MAPPING_TIMEOUT idle seconds, like conntrack's assured UDP flows.
DNAT keeps the port: with one client per box the mapped port equals the client's own port.

A box with two clients behind it (`teredo lab up --same-nat`, the second on interface "lan2")
records which client owns each public port in the map `owners` (after source NAT, from the
flow's original source), and DNATs through it. With hairpinning, UDP from inside to the box's
public address and a port in `owners` is DNATed to its owner and source-NATed to the public
address (the sender's own mapping when its port is free), as RFC 4787 §6 describes; hairpinned
packets are not filtered. Without hairpinning such packets are dropped without an ICMP error.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from typing import Final

from teredo.lab.topology import NatKind
from teredo.lab.upnp import upnp_ruleset

TABLE: Final = "teredo_lab"
MAPPING_TIMEOUT: Final = 180  # seconds; longer than conntrack's 120 s for assured UDP flows
# Where the sequential and address-symmetric kinds take their public ports (outside Linux's
# ephemeral range, 32768-60999, so a client's own port is never mistaken for a mapped one).
SEQUENTIAL_BASE: Final = 20000
PORT_SPAN: Final = 1024
# The address-symmetric kind's ports are a hash: over 1024 ports, a mapping toward one peer
# coincided with a port the peer had been told or had sent to once in a few hundred labs, and a
# pair that Figure 1 says cannot work (and that works only by that chance) did. 8192 ports make
# that rarer by a factor of 8.
ADDRESS_SYMMETRIC_BASE: Final = 22528
ADDRESS_SYMMETRIC_SPAN: Final = 8192
RANDOM_KINDS: Final = (NatKind.SYMMETRIC, NatKind.UPNP_SYMMETRIC)


def nat_ruleset(
    kind: NatKind,
    lan: IPv4Network,
    wan_address: IPv4Address,
    client: IPv4Address,
    *,
    second_lan: IPv4Network | None = None,
    hairpinning: bool = True,
) -> str | None:
    """The `nft -f` input for a NAT box of this kind, or None when the box does no NAT.

    `second_lan`: a second client's network behind the same box (on "lan2"), with
    `hairpinning` or not between the two."""
    if kind is NatKind.NONE:
        return None
    masquerade = "masquerade fully-random" if kind in RANDOM_KINDS else "masquerade"
    sets: list[str] = []
    inbound: list[str] = []
    track: list[str] = []
    source_nat: list[str] = []
    refuse: list[str] = []
    target = str(client)
    if second_lan is not None:
        lan_text = f"{{ {lan}, {second_lan} }}"
        inside = '{ "lan", "lan2" }'
        target = "udp dport map @owners"
        sets.append(
            f"  map owners {{\n    type inet_service : ipv4_addr\n    flags dynamic, timeout\n"
            f"    timeout {MAPPING_TIMEOUT}s\n  }}"
        )
        track.append(
            f'oifname "wan" ip saddr {wan_address} meta l4proto udp '
            "update @owners { udp sport : ct original ip saddr }"
        )
        to_public = f"iifname {inside} ip daddr {wan_address} meta l4proto udp"
        if hairpinning:
            inbound.append(f"{to_public} udp dport @owners dnat to {target}")
            source_nat.append(
                f"oifname {inside} ct status dnat ip saddr {lan_text} snat to {wan_address}"
            )
        else:
            refuse.append(f"{to_public} drop")
    else:
        lan_text = str(lan)
    inside_udp = f'oifname "wan" ip saddr {lan_text} meta l4proto udp'
    if kind is NatKind.SYMMETRIC_PRESERVING:
        sets.append(_set("used", "inet_service"))
        # Before NAT the source port is the client's: taken already means a random one.
        source_nat.append(f"{inside_udp} udp sport @used masquerade fully-random")
        track.append(
            f'oifname "wan" ip saddr {wan_address} meta l4proto udp update @used {{ udp sport }}'
        )
    elif kind is NatKind.SYMMETRIC_SEQUENTIAL:
        source_nat.append(
            f"{inside_udp} snat to {wan_address} : "
            f"numgen inc mod {PORT_SPAN} {_port_map(SEQUENTIAL_BASE, PORT_SPAN)}"
        )
    elif kind is NatKind.ADDRESS_SYMMETRIC:
        source_nat.append(
            f"{inside_udp} snat to {wan_address} : "
            f"jhash ip daddr . udp sport mod {ADDRESS_SYMMETRIC_SPAN} "
            f"{_port_map(ADDRESS_SYMMETRIC_BASE, ADDRESS_SYMMETRIC_SPAN)}"
        )
    if kind is NatKind.RESTRICTED:
        sets.append(_set("peers", "ipv4_addr . inet_service"))
        track.append(
            f'oifname "wan" ip saddr {wan_address} meta l4proto udp '
            "update @peers { ip daddr . udp sport }"
        )
        inbound.append(
            f'iifname "wan" ip daddr {wan_address} meta l4proto udp '
            f"ip saddr . udp dport @peers dnat to {target}"
        )
    elif kind is NatKind.FULLCONE:
        sets.append(_set("mapped", "inet_service"))
        track.append(
            f'oifname "wan" ip saddr {wan_address} meta l4proto udp update @mapped {{ udp sport }}'
        )
        inbound.append(
            f'iifname "wan" ip daddr {wan_address} meta l4proto udp '
            f"udp dport @mapped dnat to {target}"
        )
    lines = [f"# NAT kind {kind}, generated by teredo lab", f"table ip {TABLE} {{"]
    lines += sets
    lines += _chain("prerouting", "type nat hook prerouting priority dstnat", inbound)
    lines += _chain(
        "postrouting",
        "type nat hook postrouting priority srcnat",
        [*source_nat, f'oifname "wan" ip saddr {lan_text} {masquerade}'],
    )
    if track:
        # After source NAT (priority srcnat + 10) the packet carries the mapped port.
        lines += _chain("track", "type filter hook postrouting priority srcnat + 10", track)
    lines += _chain(
        "forward",
        "type filter hook forward priority filter",
        [
            'iifname "wan" ct state established,related accept',
            'iifname "wan" ct status dnat accept',
            'iifname "wan" drop',
        ],
    )
    lines += _chain(
        "input",
        "type filter hook input priority filter",
        [*refuse, 'iifname "wan" ct state established,related accept', 'iifname "wan" drop'],
    )
    lines.append("}")
    text = "\n".join(lines) + "\n"
    return text + upnp_ruleset() if kind.upnp else text


def _port_map(base: int, span: int) -> str:
    """numgen and jhash give numbers in host byte order, which snat would take as a port in
    network byte order (20000 becomes 8270 on x86): a map turns them into ports."""
    entries = ", ".join(f"{n} : {base + n}" for n in range(span))
    return f"map {{ {entries} }}"


def _set(name: str, key_type: str) -> str:
    return (
        f"  set {name} {{\n    type {key_type}\n    flags dynamic, timeout\n"
        f"    timeout {MAPPING_TIMEOUT}s\n  }}"
    )


def _chain(name: str, hook: str, rules: list[str]) -> list[str]:
    body = [f"  chain {name} {{", f"    {hook}; policy accept;"]
    body += [f"    {rule}" for rule in rules]
    body.append("  }")
    return body
