"""Importing the daemons' event loop and digests without OpenSSL, which they do not use.

Two standard modules map OpenSSL's libraries when they can: `ssl` (libssl and libcrypto, 5 MiB,
which asyncio imports for TLS transports, never used here) and `_hashlib` (libcrypto, 3.4 MiB,
which `hashlib` and `hmac` import for their OpenSSL constructors; without it they use Python's
own implementations, which give the same digests). Together they were a fifth to a quarter of
a daemon's resident memory (`bash scripts/bench --footprint`).

`import_without_openssl()` imports asyncio, hashlib and hmac while both are hidden (an import of
a hidden module raises ImportError, as on a Python built without OpenSSL, and these modules take
their fallback), then un-hides them: any module imported later that needs `ssl` (a library's
TLS support, say) still gets it. `teredo.cli` calls it before importing a daemon's modules;
modules imported before keep what they have.
"""

from __future__ import annotations

import sys
from typing import Final

OPENSSL_MODULES: Final = ("ssl", "_hashlib")


def import_without_openssl(event_loop: bool = True) -> None:
    """Import asyncio (unless not `event_loop`: the client imports it after its launch, which
    needs the digests), hashlib and hmac, without `ssl` and `_hashlib` unless already
    imported."""
    hidden = [name for name in OPENSSL_MODULES if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # the import system's "not found"
    try:
        if event_loop:
            import asyncio  # noqa: F401
        import hashlib  # noqa: F401
        import hmac  # noqa: F401
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]
