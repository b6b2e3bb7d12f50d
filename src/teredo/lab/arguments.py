"""Arguments of `teredo lab` (kept apart so `teredo --help` does not import the lab)."""

from __future__ import annotations

import argparse

# Literal copies of the lab's names, so that building the parser imports nothing heavy.
NAT_KINDS = (
    "fullcone",
    "restricted",
    "port-restricted",
    "symmetric",
    "symmetric-preserving",
    "symmetric-sequential",
    "address-symmetric",
    "upnp-port-restricted",
    "upnp-symmetric",
    "none",
)
IMPL_CHOICES = ("auto", "ours", "miredo")
DEFAULT_NAME = "tl"
DEMO_NAME = "tldemo"

NAT_HELP = (
    "fullcone (anyone may send to the mapped port), restricted (only addresses the client sent "
    "to), port-restricted (only address and port pairs it sent to), symmetric (a new random "
    "port per destination), symmetric-preserving (a new mapping per destination, keeping the "
    "client's port when it is free), symmetric-sequential (a new mapping per destination, ports "
    "in sequence), address-symmetric (a new mapping per destination address), "
    "upnp-port-restricted and upnp-symmetric (port-restricted or symmetric with a UPnP IGD, "
    "miniupnpd, on the box), none (no NAT: the client has a public address)"
)


def _add_name(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--name",
        default=default,
        metavar="PREFIX",
        help=f"the lab's name, prefix of its namespaces PREFIX-srv, PREFIX-cli1, ... "
        f"(default {default})",
    )


def _add_build(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--nat1",
        choices=NAT_KINDS,
        default="port-restricted",
        metavar="KIND",
        help="NAT in front of client1 (default port-restricted): " + NAT_HELP,
    )
    parser.add_argument(
        "--nat2",
        choices=NAT_KINDS,
        default="fullcone",
        metavar="KIND",
        help="NAT in front of client2 (default fullcone)",
    )
    parser.add_argument(
        "--same-nat",
        action="store_true",
        help="put both clients behind NAT box 1 (of kind --nat1; --nat2 is not used), each on "
        "its own inside interface and /24",
    )
    parser.add_argument(
        "--hairpinning",
        choices=("yes", "no"),
        default="yes",
        help="with --same-nat: whether NAT box 1 forwards a client's packets sent to the "
        "other client's public mapping (yes, the default) or drops them (no)",
    )
    for role in ("server", "relay", "client1", "client2"):
        parser.add_argument(
            f"--{role}",
            choices=IMPL_CHOICES,
            default="auto",
            help=f"who runs the {role}: this project (ours), Miredo, or auto (default: ours "
            "where this project implements the role, Miredo elsewhere)",
        )
    parser.add_argument(
        "--relays",
        type=int,
        choices=(1, 2),
        default=1,
        help="1 (default): one relay, the router's route to 2001::/32 static; 2: two relay "
        "sites relay1 and relay2, each announcing 2001::/32 to the router by BGP with BFD "
        "(BIRD 2), relay1 preferred; --relay then picks who runs both",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help="how long each role may take to become ready (default 20)",
    )


def add_lab_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "A small Teredo Internet in network namespaces (root): a router, a Teredo server with "
        "two public IPv4 addresses, a relay, a native IPv6 host and two clients behind NATs."
    )
    sub = parser.add_subparsers(dest="lab_command", metavar="LAB_COMMAND", required=True)

    p = sub.add_parser(
        "up",
        help="build the lab and start its roles",
        description="Build the lab's namespaces, links and NATs, start server, relay and "
        "clients, and wait until the clients have Teredo addresses.",
    )
    _add_name(p, DEFAULT_NAME)
    _add_build(p)
    p.add_argument(
        "--generator",
        action="store_true",
        help="add the benchmarks' traffic generator node gen (198.51.100.50, 2001:db8:4::2): "
        "the router sends 100.64.0.0/10 (fake Teredo clients) to it, and it counts and drops "
        "what arrives",
    )

    p = sub.add_parser(
        "down",
        help="stop the lab's roles and remove its namespaces",
        description="Stop the processes the lab started and remove its namespaces and state.",
    )
    _add_name(p, DEFAULT_NAME)

    p = sub.add_parser(
        "status",
        help="show the lab's nodes, roles and Teredo addresses",
        description="Show each node, each role's process and implementation, each NAT's kind "
        "and each client's Teredo address, decoded.",
    )
    _add_name(p, DEFAULT_NAME)
    p.add_argument("--json", action="store_true", help="print a JSON object")

    p = sub.add_parser(
        "exec",
        help="run a command in a lab node",
        description="Run a command inside a lab node's namespace (a shell when none is given). "
        "Nodes: inet, srv, relay, v6, nat1, cli1, nat2, cli2, gen in a lab brought up with "
        "--generator, relay1 and relay2 instead of relay with --relays 2 (also router, server, "
        "native, client1, client2, generator).",
    )
    _add_name(p, DEFAULT_NAME)
    p.add_argument("node", help="the node, e.g. cli1 or v6")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="the command and its arguments")

    p = sub.add_parser(
        "demo",
        help="bring up a lab with teredo in every role, ping, tear down",
        description="Build a lab with this project in every role it implements (Miredo in the "
        "others), show the clients' qualification, ping native<->client and client<->client, "
        "and tear down. Exits 0 only when every path works.",
    )
    _add_name(p, DEMO_NAME)
    _add_build(p)
