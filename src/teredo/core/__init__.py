"""The protocol core: Teredo's rules as pure, sans-I/O state machines.

Nothing in this package reads a clock, draws randomness, opens a file or a socket, or reads the
environment: time comes in as `now`, randomness as a `random_bytes` callable, datagrams and
packets as bytes (`tests/unit/test_purity.py` checks every module). See docs/architecture.md.
"""
