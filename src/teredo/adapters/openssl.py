"""Importing the daemons without OpenSSL: they use none of it, and it costs 5-8 MiB of memory.

Two standard modules map OpenSSL's libraries when they can: `ssl` (libssl and libcrypto, which
asyncio imports for TLS transports, never used here) and `_hashlib` (libcrypto, which `hashlib`
and `hmac` import for their OpenSSL constructors; without it they use Python's own
implementations, which give the same digests). Together they were a fifth to a quarter of a
daemon's resident memory (`bash scripts/bench --footprint`).

`without_openssl()` hides both while the daemon's modules are imported (an import of a hidden
module raises ImportError, as on a Python built without OpenSSL, and the importing module takes
its fallback), and un-hides them when the block ends, so that a module imported later that
needs `ssl` still gets it. Modules imported before the block keep what they have.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

OPENSSL_MODULES: Final = ("ssl", "_hashlib")


@contextmanager
def without_openssl() -> Iterator[None]:
    """Within the block, `import ssl` and `import _hashlib` fail unless already imported."""
    hidden = [name for name in OPENSSL_MODULES if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # the import system's "not found"
    try:
        yield
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]
