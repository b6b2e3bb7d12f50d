"""Which implementation of the data path's hot functions runs: C or the pure-Python twins.

The optional C module `teredo._accel` (src/teredo/_accel.c) holds these functions (and one
type), each with a pure-Python twin that gives the same results (the tests compare them on
mutated input):

| function | Python twin |
| --- | --- |
| `ones_complement_sum` | `teredo.core.wire.ones_complement_sum` |
| `segment` | `teredo.core.offload.python_segment` |
| `coalesce_segments` | `teredo.core.offload.python_coalesce_segments` |
| `read_runs` | `teredo.adapters.tun_runs.python_read_runs` |
| `RateLimiter` (type) | `teredo.core.server.SourceRateLimiter` |
| `answer_solicitations` | `teredo.core.server.python_answer_solicitations` |
| `recv_batch` | `teredo.adapters.udp.python_recv_batch` |
| `send_batch` | `teredo.adapters.udp.python_send_batch` |

`new_rate_limiter` is the limiter type that goes with `answer_solicitations`: the C answer
function calls its own `RateLimiter` directly and any other limiter through its `allow` method
(correct, only slower).

The choice is made once, here, at import (the twins are imported only when they are the
choice): the C module when it was built (a C compiler and the
Python headers at install time) unless `TEREDO_PURE_PYTHON` is set to anything in the
environment (to compare, or to rule the C code out when something looks wrong on the data
path). `ACCELERATED` says which; the daemons log it and show it in `teredo status`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from teredo.core.server import AnswerFunction, RateLimiter

PURE_PYTHON_VARIABLE: Final = "TEREDO_PURE_PYTHON"

__all__ = [
    "ACCELERATED",
    "PURE_PYTHON_VARIABLE",
    "answer_solicitations",
    "coalesce_segments",
    "new_rate_limiter",
    "ones_complement_sum",
    "read_runs",
    "recv_batch",
    "segment",
    "send_batch",
]

answer_solicitations: AnswerFunction
new_rate_limiter: Callable[[float, float, int], RateLimiter]

try:
    if os.environ.get(PURE_PYTHON_VARIABLE):
        raise ImportError(f"{PURE_PYTHON_VARIABLE} is set")
    from teredo._accel import (
        RateLimiter as new_rate_limiter,
    )
    from teredo._accel import (
        answer_solicitations,
        coalesce_segments,
        ones_complement_sum,
        read_runs,
        recv_batch,
        segment,
        send_batch,
    )

    ACCELERATED = True
except ImportError:  # built without a C compiler, or refused: the same results, slower
    # Imported only here: with the C module a client or relay never loads the server's core.
    from teredo.adapters.tun_runs import python_read_runs
    from teredo.adapters.udp import python_recv_batch, python_send_batch
    from teredo.core.offload import python_coalesce_segments, python_segment
    from teredo.core.server import SourceRateLimiter, python_answer_solicitations
    from teredo.core.wire import ones_complement_sum as python_ones_complement_sum

    answer_solicitations = python_answer_solicitations
    coalesce_segments = python_coalesce_segments
    new_rate_limiter = SourceRateLimiter
    ones_complement_sum = python_ones_complement_sum
    read_runs = python_read_runs
    recv_batch = python_recv_batch
    segment = python_segment
    send_batch = python_send_batch
    ACCELERATED = False
