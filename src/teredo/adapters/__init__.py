"""Adapters to operating-system facilities the protocol cores do not see.

| module | concept |
| --- | --- |
| `bpf` | the kernel data path: loading `teredo/bpf/datapath.bpf.c`, attaching it, its maps |
"""
