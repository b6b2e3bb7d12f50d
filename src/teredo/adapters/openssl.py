"""Importing the daemons' event loop and digests without OpenSSL, which they do not use.

Two standard modules map OpenSSL's libraries when they can: `ssl` (libssl and libcrypto, 5 MiB,
which asyncio imports for TLS transports, never used here) and `_hashlib` (libcrypto, 3.4 MiB,
which `hashlib` and `hmac` import for their OpenSSL constructors; without it they use Python's
own implementations, which give the same digests). Together they were a fifth to a quarter of
a daemon's resident memory (`bash scripts/bench --footprint`).

`import_without_openssl()` imports asyncio, hashlib and hmac while both are hidden (an import of
a hidden module raises ImportError, as on a Python built without OpenSSL, and these modules take
their fallback), then un-hides them: any module imported later that needs `ssl` (a library's
TLS support, say) still gets it. `teredo.cli` hides them (`hide_openssl`) before importing a
daemon's modules, the service imports the event loop this way once the client has launched
(or before a relay's or server's modules); modules imported before keep what they have.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing's flag without importing typing (ms a launch pays)
if TYPE_CHECKING:
    from typing import Final

OPENSSL_MODULES: Final = ("ssl", "_hashlib")


def hide_openssl() -> None:
    """Hide `ssl` and `_hashlib` (unless already imported) until `import_without_openssl()`:
    the client's launch runs with them hidden, so that a digest its qualification needs (a
    secure qualification's HMAC) is Python's own, and imports the event loop afterwards."""
    for name in OPENSSL_MODULES:
        if name not in sys.modules:
            sys.modules[name] = None  # type: ignore[assignment]  # the import system's "not found"


def import_without_openssl(event_loop: bool = True) -> None:
    """Import asyncio (unless not `event_loop`), hashlib and hmac without `ssl` and `_hashlib`
    unless already imported, then un-hide them (and those `hide_openssl()` hid)."""
    hide_openssl()
    try:
        if event_loop:
            import asyncio  # noqa: F401
        import hashlib  # noqa: F401
        import hmac  # noqa: F401
    finally:
        for name in OPENSSL_MODULES:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]
