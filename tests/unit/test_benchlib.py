"""The benchmarks' pure helpers (benchmarks/benchlib.py): /proc parsing, statistics, tables."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from benchlib import (
    FloodResult,
    Pings,
    arm_json,
    attached_program_ids,
    comparison,
    count_label,
    exit_status,
    first_reply_seconds,
    median,
    parse_count,
    parse_fdinfo_map,
    parse_flood,
    parse_pings,
    parse_proc_stat,
    parse_stat_cpu,
    parse_vm_hwm,
    parse_vm_rss,
    per,
    percentile,
    ratio,
    render_table,
    si,
)


def test_parse_flood() -> None:
    line = "flood mode=teredo sent=414080 failed=2 seconds=2.001 pps=206939 clients=1000 first=5"
    assert parse_flood("noise\n" + line + "\n") == FloodResult(
        "teredo", 414080, 2, 2.001, 206939.0, 1000, 5
    )
    with pytest.raises(ValueError):
        parse_flood("flood: -S SERVER is required")


def test_parse_proc_stat_counts_softirq_as_busy() -> None:
    text = "cpu  100 5 50 1000 7 3 40 2 9 0\ncpu0 50 2 25 500 3 1 20 1 0 0\nintr 1 2 3\n"
    busy, total = parse_proc_stat(text)
    assert busy == 100 + 5 + 50 + 3 + 40 + 2  # guest (9) is inside user already
    assert total == busy + 1000 + 7
    assert parse_proc_stat("cpu  1 2 3 4\n") == (6, 10)  # old kernels print fewer fields
    with pytest.raises(ValueError):
        parse_proc_stat("intr 1\n")


def test_parse_stat_cpu_survives_odd_command_names() -> None:
    fields = ["S", "1", "2", "3"] + ["0"] * 7 + ["120", "30"] + ["0"] * 6 + ["98765", "0"]
    text = "4242 (python (x) y) " + " ".join(fields) + "\n"
    assert parse_stat_cpu(text) == (150, 98765)


def test_parse_vm_rss_and_hwm() -> None:
    status = "Name:\tmiredo\nVmHWM:\t    5192 kB\nVmRSS:\t    4608 kB\nThreads:\t3\n"
    assert parse_vm_rss(status) == 4608 * 1024
    assert parse_vm_hwm(status) == 5192 * 1024
    assert parse_vm_rss("Name:\tkthreadd\n") == 0


def test_parse_fdinfo_of_a_bpf_map_only() -> None:
    bpf_map = (
        "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1052\nmap_type:\t1\nkey_size:\t16\n"
        "value_size:\t8\nmax_entries:\t1048576\nmap_flags:\t0x0\nmap_extra:\t0x0\n"
        "memlock:\t92274688\nmap_id:\t42\nfrozen:\t0\n"
    )
    assert parse_fdinfo_map(bpf_map) == (42, 92274688)
    assert parse_fdinfo_map("pos:\t0\nflags:\t02\nmnt_id:\t15\nino:\t7\n") is None
    program = "pos:\t0\nprog_type:\t3\nprog_jited:\t1\nmemlock:\t4096\nprog_id:\t17\n"
    assert parse_fdinfo_map(program) is None


def test_attached_program_ids() -> None:
    document = [
        {
            "xdp": [{"devname": "eth0", "ifindex": 2, "multi_attachments": [{"id": 17}]}],
            "tc": [{"devname": "eth0", "ifindex": 2, "kind": "clsact/ingress", "id": 23}],
            "flow_dissector": [],
            "netfilter": [{"pf": 2, "hook": 1, "prio": -128, "prog_id": 31}],
        }
    ]
    assert attached_program_ids(document) == {17, 23, 31}
    assert attached_program_ids(None) == set()
    assert attached_program_ids([{"xdp": [], "tc": []}]) == set()


def test_statistics() -> None:
    assert median([3.0, None, 1.0, 2.0]) == 2.0
    assert median([None, None]) is None
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 99) == 99.0 and percentile(values, 50) == 50.0
    assert percentile(values, 100) == 100.0 and percentile([7.0], 99) == 7.0
    assert percentile([], 99) is None
    assert ratio(3.0, 2.0) == 1.5 and ratio(3.0, 0.0) is None and ratio(None, 2.0) is None
    assert per(2.0, 4, 1e6) == 500000.0 and per(2.0, 0) is None and per(None, 3) is None


def test_numbers_and_cells() -> None:
    assert [si(v) for v in (1234567.0, 45600.0, 789.0, 0.521, None)] == [
        "1.23M",
        "45.6k",
        "789",
        "0.521",
        "-",
    ]
    assert comparison(180000.0, 50000.0, 200000.0) == "180k / 50k (3.60) [0.90]"
    assert comparison(3.2, 4.8) == "3.2 / 4.8 (0.67)"
    assert comparison(None, 4.8, 10.0) == "- / 4.8 (-) [-]"
    assert comparison(1.0, 0.0) == "1 / 0 (-)"


def test_render_table_aligns_columns() -> None:
    text = render_table(["relay", "N=1", "N=1k"], [["a", "1 / 2 (0.50)", "x"], ["bb", "3", "yy"]])
    lines = text.splitlines()
    assert lines[0] == "relay |          N=1 | N=1k"
    assert lines[1] == "------+--------------+-----"
    assert lines[2] == "a     | 1 / 2 (0.50) |    x"
    assert lines[3] == "bb    |            3 |   yy"


def test_counts() -> None:
    assert [parse_count(t) for t in ("1", "1000", "1k", "100k", "1M", "2.5k", "1_000")] == [
        1,
        1000,
        1000,
        100000,
        1000000,
        2500,
        1000,
    ]
    for bad in ("0", "-5", "1.5", "k", "x"):
        with pytest.raises(ValueError):
            parse_count(bad)
    assert [count_label(n) for n in (1, 1000, 100000, 1000000, 1500)] == [
        "1",
        "1k",
        "100k",
        "1M",
        "1500",
    ]


PING = """PING 2001:db8:2::2 56 data bytes
64 bytes from 2001:db8:2::2: icmp_seq=3 ttl=62 time=0.412 ms
64 bytes from 2001:db8:2::2: icmp_seq=4 ttl=62 time=0.300 ms
64 bytes from 2001:db8:2::2: icmp_seq=5 ttl=62 time=2.50 ms

--- 2001:db8:2::2 ping statistics ---
5 packets transmitted, 3 received, 40% packet loss, time 405ms
rtt min/avg/max/mdev = 0.300/1.070/2.500/1.012 ms
"""


def test_parse_pings() -> None:
    pings = parse_pings(PING)
    assert (pings.transmitted, pings.received) == (5, 3)
    assert pings.times == {3: 0.412, 4: 0.3, 5: 2.5}
    stats = pings.stats()
    assert stats["loss_pct"] == 40.0 and stats["max_ms"] == 2.5
    assert stats["median_ms"] == 0.412 and stats["p99_ms"] == 2.5
    assert stats["avg_ms"] == pytest.approx((0.412 + 0.3 + 2.5) / 3)
    # Requests go 0.1 s apart: seq 3 left 0.2 s after seq 1 and came back 0.412 ms later.
    assert first_reply_seconds(pings, 0.1) == pytest.approx(0.200412)
    nothing = parse_pings("5 packets transmitted, 0 received, 100% packet loss")
    assert nothing.loss == 100.0 and first_reply_seconds(nothing, 0.1) is None
    assert Pings(0, 0, {}).stats()["loss_pct"] is None


def test_exit_status_prints_every_failure(capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_status([], [], interrupted=False) == 0
    assert exit_status(["relay/ours round 1: lab down"], [], interrupted=False) == 1
    assert exit_status([], ["bench-x-relay"], interrupted=False) == 1
    assert exit_status(["anything"], [], interrupted=True) == 130
    err = capsys.readouterr().err
    assert "error: relay/ours round 1: lab down" in err
    assert "error: namespaces left behind: bench-x-relay" in err


def test_arm_json_keeps_field_order_and_rounds_seconds() -> None:
    @dataclass
    class Arm:
        round: int
        lab: str = ""
        errors: list[str] = field(default_factory=list)
        seconds: float = 0.0

    arm = Arm(round=2, lab="bnabcde", errors=["lab down"], seconds=12.345)
    document = arm_json(arm)
    assert list(document) == ["round", "lab", "errors", "seconds"]
    assert document == {"round": 2, "lab": "bnabcde", "errors": ["lab down"], "seconds": 12.3}
