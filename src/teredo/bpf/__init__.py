"""The kernel data path: a TC eBPF program (`datapath.bpf.c`) and its pure-Python twin
(`datapath.py`). The loader is `teredo.adapters.bpf`."""
