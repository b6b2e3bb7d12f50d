"""A stream of pings between two lab nodes, read back as replies with their times.

`PingStream` runs iputils ping with timestamps (`-D`) in the background, for as long as a test
or benchmark does things to the lab (kill a relay, take a site down); `stop()` returns the
replies, from which `Outage` finds the longest time without a reply (up to the end of the
stream, for an outage that never ended) and the packets lost by sequence number. Losses are
counted between the first and the last reply, so packets in flight when the stream stops are
never counted as lost; `unanswered` counts every ping without a reply, the tail included.
"""

from __future__ import annotations

import itertools
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Final

REPLY: Final = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from \S+ icmp_seq=(\d+)", re.MULTILINE)
TRANSMITTED: Final = re.compile(r"(\d+) packets transmitted")
STOP_TIMEOUT: Final = 5.0


@dataclass(frozen=True, slots=True)
class Reply:
    seq: int
    time: float  # wall-clock seconds (ping -D), when the reply arrived


@dataclass(frozen=True, slots=True)
class Outage:
    """What a stream of replies says about an interruption."""

    replies: int
    lost: int  # sequence numbers missing between the first and the last reply
    unanswered: int  # pings transmitted without a reply, those at the end included
    longest_gap: float  # seconds without a reply, the longest (to the end if it never ended)
    ended: bool  # the longest gap ended with a reply

    @classmethod
    def of(cls, replies: list[Reply], transmitted: int, stopped: float) -> Outage:
        if not replies:
            return cls(0, 0, transmitted, 0.0, False)
        seqs = sorted({reply.seq for reply in replies})
        lost = seqs[-1] - seqs[0] + 1 - len(seqs)
        longest, ended = stopped - replies[-1].time, False
        for previous, current in itertools.pairwise(replies):
            gap = current.time - previous.time
            if gap >= longest:
                longest, ended = gap, True
        return cls(len(seqs), lost, max(0, transmitted - len(seqs)), longest, ended)


def parse_replies(output: str) -> list[Reply]:
    """Replies in `ping -D -n` output, in arrival order (sequence numbers 16-bit, unwrapped)."""
    replies = []
    offset, last = 0, -1
    for match in REPLY.finditer(output):
        seq = int(match.group(2))
        if last >= 0 and seq + 32768 < last:  # wrapped at 65536
            offset += 65536
        last = seq
        replies.append(Reply(seq + offset, float(match.group(1))))
    return replies


class PingStream:
    """`ping -6 -D -n -i INTERVAL DESTINATION` from a node's namespace, in the background."""

    def __init__(self, namespace: str, destination: str, interval: float = 0.01) -> None:
        ping = ["ping", "-6", "-D", "-n", "-i", f"{interval:g}", "-W", "1", destination]
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", namespace, *ping],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def stop(self) -> Outage:
        """Stop pinging; what the replies say."""
        stopped = time.time()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            output, _ = self.process.communicate(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            output, _ = self.process.communicate()
        transmitted = TRANSMITTED.search(output)
        return Outage.of(
            parse_replies(output), int(transmitted.group(1)) if transmitted else 0, stopped
        )
