"""The Prometheus endpoint (``MetricsAddress``): HTTP GET /metrics on the daemon's event loop.

A deliberately small HTTP/1.1 server: one request per connection, answered and closed, so that
nothing a stranger sends can make it hold much:

- at most MAX_CONNECTIONS connections at once; more are closed at once, unanswered;
- the request head must arrive within REQUEST_TIMEOUT seconds and fit in MAX_REQUEST_BYTES;
- the answer must be taken within WRITE_TIMEOUT seconds, or the connection is dropped;
- only GET (and HEAD) of /metrics is answered 200; / gets a pointer, the rest 404 or 405.

The body is `teredo.core.metrics.exposition` of the status document, built when asked (a
scrape every 15 s costs a status document, as a `teredo status` does). It runs on the daemon's
asyncio loop: no thread, so the privilege drop (per thread) and the core see one thread.

This module is imported only when ``MetricsAddress`` is set. Why not prometheus_client: its
metrics are objects a program updates as it counts, where ours already live in the cores'
dictionaries (it would need a custom collector to copy them anyway); and its server is a
thread per connection without a bound, which a stranger can exhaust; importing it costs some
60 ms and 14 MiB of RSS, most of a daemon's budget. The exposition format is
a few lines of text; the tests check ours with prometheus_client's own parser.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any, Final

from teredo.core.config import MetricsAddress
from teredo.core.errors import UserError
from teredo.core.metrics import CONTENT_TYPE, exposition, status_metrics

log = logging.getLogger(__name__)

METRICS_PATH: Final = "/metrics"
MAX_CONNECTIONS: Final = 8  # a scraper or two, and someone with curl
MAX_REQUEST_BYTES: Final = 8192  # a request head from Prometheus is some 300 bytes
REQUEST_TIMEOUT: Final = 5.0  # seconds to send the request head
WRITE_TIMEOUT: Final = 10.0  # seconds to take the answer

StatusGetter = Callable[[], Mapping[str, Any]]


class MetricsServer:
    """The running endpoint; `await close()` stops it. Counts what it refused (`refused`)."""

    def __init__(self, address: MetricsAddress, get_status: StatusGetter) -> None:
        self.address = address
        self._get_status = get_status
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.scrapes = 0
        self.refused = 0

    @property
    def port(self) -> int:
        """The bound port (the configured one, or the kernel's pick for port 0 in tests)."""
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def body(self) -> bytes:
        """The exposition of the current status document."""
        return exposition(status_metrics(self._get_status())).encode()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if len(self._connections) >= MAX_CONNECTIONS or task is None:
            self.refused += 1
            writer.transport.abort()
            return
        self._connections.add(task)
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
            writer.write(self.answer(head))
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError) as error:
            log.debug("metrics connection dropped: %r", error)
        except asyncio.LimitOverrunError:
            self.refused += 1
            writer.write(_response(431, "Request Header Fields Too Large", b"request too large\n"))
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), WRITE_TIMEOUT)

    def answer(self, head: bytes) -> bytes:
        """The whole HTTP response to a request head (exposed for tests)."""
        words = head.split(b"\r\n", 1)[0].split()
        if len(words) != 3 or not words[2].startswith(b"HTTP/"):
            return _response(400, "Bad Request", b"send GET /metrics\n")
        method, target = words[0], words[1].split(b"?", 1)[0]
        head_only = method == b"HEAD"
        if method not in (b"GET", b"HEAD"):
            return _response(405, "Method Not Allowed", b"only GET\n", allow=True)
        if target == b"/":
            return _response(200, "OK", b"teredo metrics: GET /metrics\n", head_only=head_only)
        if target != METRICS_PATH.encode():
            return _response(404, "Not Found", b"the metrics are at /metrics\n")
        self.scrapes += 1
        return _response(200, "OK", self.body(), CONTENT_TYPE, head_only=head_only)

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        await self._server.wait_closed()
        self._server = None


def _response(
    code: int,
    reason: str,
    body: bytes,
    content_type: str = "text/plain; charset=utf-8",
    *,
    allow: bool = False,
    head_only: bool = False,
) -> bytes:
    headers = [
        f"HTTP/1.1 {code} {reason}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if allow:
        headers.append("Allow: GET, HEAD")
    head = ("\r\n".join(headers) + "\r\n\r\n").encode()
    return head if head_only else head + body


async def start_metrics_server(address: MetricsAddress, get_status: StatusGetter) -> MetricsServer:
    """Listen on `address` and answer scrapes on the running loop; `UserError` if it cannot."""
    server = MetricsServer(address, get_status)
    try:
        server._server = await asyncio.start_server(
            server._serve, str(address.host), address.port, limit=MAX_REQUEST_BYTES
        )
    except OSError as error:
        raise UserError(
            f"cannot serve metrics on {address}: {error.strerror or error}; set MetricsAddress "
            "to a free port on an address of this host, or remove it"
        ) from None
    log.info("Prometheus metrics on http://%s%s", address, METRICS_PATH)
    return server
