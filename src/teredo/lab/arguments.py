"""Arguments of `teredo lab` (kept apart so `teredo --help` does not import the lab)."""

from __future__ import annotations

import argparse


def add_lab_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="lab_command", metavar="LAB_COMMAND", required=True)
    sub.add_parser("demo", help="bring up a lab with teredo in every role, ping, tear down")
    sub.add_parser("down", help="tear down the lab")
    p = sub.add_parser("status", help="show the lab's nodes, roles and addresses")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("up", help="bring up the lab")
    p = sub.add_parser("exec", help="run a command in a lab node")
    p.add_argument("node")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
