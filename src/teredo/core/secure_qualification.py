"""Secure qualification (RFC 4380 §5.2.2): the RS and RA authenticated with a shared secret.

What the RFC specifies, and what this module does
-------------------------------------------------
The client and the server share a *client identifier* and a *secret*. Both go in the
authentication header of the RS and of the RA (RFC 4380 §5.1.1)::

    00 01 | ID-len | AU-len | client identifier | authentication value | nonce (8) | confirmation

- The client chooses the nonce; the server repeats it. The client sends confirmation 0; the
  server answers 0 while the client's key is valid, non-zero to tell the client to get a new
  one (§5.2.2). Our server has no key lifetimes, so it always answers 0.
- The default algorithm (§5.2.2) is HMAC (RFC 2104) with SHA-1, keyed with the shared secret,
  over the concatenation, without padding, of: the nonce, the confirmation byte, the origin
  indication if present, and the IPv6 packet. So the authentication value is 20 bytes; the
  client identifier and the header's first four bytes are not covered. An RS carries no origin
  indication; the server's RA does (§5.3.2), so it is covered there.
- A receiver recomputes the value and discards the packet when it differs (§5.2.2, "MUST be
  discarded"); the nonce check is the first level of protection and stays (`qualification`).

(RFC 4380 §7.2.1 mentions "HMAC and MD5" in passing; §5.2.2, the normative algorithm text,
says SHA-1, which is what we do. No other algorithm is offered: the RFC lets peers agree on
one, and no deployed implementation we know of uses another.)

Without a key, the header is nonce-only (ID-len and AU-len 0), as Miredo and Windows send
it; a server that does not require authentication answers those as before.

Key files
---------
The server reads its clients' keys from a text file (``ClientKeyFile``), one client a line::

    # identifier   secret
    alice          8f1e0c5d9a7b3e2f4c6d8e0a1b3c5d7e
    bob            base64:cGFzc3dvcmQgb2YgYm9i

The identifier is the client's ``ClientIdentifier``, 1-255 bytes of printable ASCII without
blanks. The secret is hex (an even number of hex digits, optionally after ``hex:``) or base64
after ``base64:``, 1-255 bytes once decoded (a single word: a space would end it). Blank lines
and ``#`` comments are ignored. A client's ``SharedSecret`` (or the content of its
``SharedSecretFile``) is written the same way.
"""

from __future__ import annotations

import binascii

from teredo.core.errors import UsageError
from teredo.core.record import record  # a dataclass without dataclasses' start-up cost
from teredo.core.wire import Authentication

TYPE_CHECKING = False  # typing's flag without importing typing (ms a launch pays)
if TYPE_CHECKING:
    from typing import Final

AUTHENTICATION_VALUE_LENGTH: Final = 20  # HMAC-SHA1 (RFC 4380 §5.2.2), RFC 2104 §2
MAX_FIELD_LENGTH: Final = 255  # ID-len and AU-len are one byte each (RFC 4380 §5.1.1)
MAX_KEY_FILE_BYTES: Final = 1 << 22  # ~40 000 clients at 100 bytes a line

_HEX_DIGITS: Final = frozenset("0123456789abcdefABCDEF")


def is_hex(text: str) -> bool:
    """One or more pairs of hex digits (checked without `re`: milliseconds of a launch)."""
    return bool(text) and len(text) % 2 == 0 and set(text) <= _HEX_DIGITS


def is_identifier(text: str) -> bool:
    """1 to 255 printable ASCII characters, no blank (! to ~)."""
    return 1 <= len(text) <= MAX_FIELD_LENGTH and all("!" <= c <= "~" for c in text)


@record
class ClientKey:
    """A client's identifier and shared secret (RFC 4380 §5.2.2)."""

    identifier: bytes
    secret: bytes = b""

    def __repr__(self) -> str:  # never show a secret in a log or a traceback
        return f"ClientKey(identifier={self.identifier!r}, secret=<{len(self.secret)} bytes>)"


def load_algorithm() -> None:
    """Import what HMAC-SHA1 needs, now. The hashes are imported lazily (a server without keys
    never loads OpenSSL's), so a daemon that will use a key calls this before it drops its
    privileges: afterwards the interpreter's library may be out of its reach
    (`teredo.adapters.privileges`)."""
    import hashlib
    import hmac

    del hashlib, hmac


def authentication_value(
    secret: bytes, nonce: bytes, confirmation: int, origin: bytes, ipv6: bytes
) -> bytes:
    """HMAC-SHA1 keyed with `secret` over nonce, confirmation byte, origin indication (the 8
    bytes on the wire, or b"" when absent) and IPv6 packet (RFC 4380 §5.2.2)."""
    import hashlib  # here, not at the top: a server without keys never loads OpenSSL's hashes
    import hmac

    message = nonce + bytes((confirmation,)) + origin + ipv6
    return hmac.new(secret, message, hashlib.sha1).digest()


def sign(
    key: ClientKey, nonce: bytes, ipv6: bytes, origin: bytes = b"", confirmation: int = 0
) -> Authentication:
    """The authentication header for a packet of ours (an RS, or the server's RA)."""
    return Authentication(
        nonce=nonce,
        confirmation=confirmation,
        client_id=key.identifier,
        auth_value=authentication_value(key.secret, nonce, confirmation, origin, ipv6),
    )


def verify(auth: Authentication, secret: bytes, ipv6: bytes, origin: bytes = b"") -> bool:
    """Whether `auth` carries the value `secret` gives for this packet (in constant time)."""
    import hmac

    expected = authentication_value(secret, auth.nonce, auth.confirmation, origin, ipv6)
    return hmac.compare_digest(auth.auth_value, expected)


def is_authenticated(auth: Authentication | None) -> bool:
    """Whether a header claims more than the nonce (an identifier or a value)."""
    return auth is not None and bool(auth.client_id or auth.auth_value)


# ---------------------------------------------------------------------------------------------
# Text forms: the key file, ClientIdentifier and SharedSecret


class KeyFormatError(ValueError):
    """A secret or identifier that cannot be read; the message is a sentence's predicate."""


def parse_secret(text: str) -> bytes:
    """A secret written as hex (optionally ``hex:``) or ``base64:``; KeyFormatError if not."""
    word = text.strip()
    if word[:7].lower() == "base64:":
        try:
            # base64.b64decode(validate=True) without its module (memory a client keeps)
            secret = binascii.a2b_base64(word[7:].encode("ascii"), strict_mode=True)
        except (binascii.Error, ValueError):
            raise KeyFormatError("is not valid base64 after 'base64:'") from None
    else:
        if word[:4].lower() == "hex:":
            word = word[4:]
        if not is_hex(word):
            raise KeyFormatError("must be an even number of hex digits, or base64 after 'base64:'")
        secret = bytes.fromhex(word)
    if not 1 <= len(secret) <= MAX_FIELD_LENGTH:
        raise KeyFormatError(f"must be 1 to {MAX_FIELD_LENGTH} bytes, not {len(secret)}")
    return secret


def parse_identifier(text: str) -> bytes:
    """A client identifier: 1-255 printable ASCII characters without blanks."""
    if not is_identifier(text):
        raise KeyFormatError("must be 1 to 255 printable ASCII characters without blanks")
    return text.encode("ascii")


def parse_key_file(text: str, source: str = "<keys>") -> dict[bytes, bytes]:
    """The clients of a key file, identifier -> secret (see the module documentation).

    Raises `UsageError` with one ``source:line:`` sentence for a line that cannot be read or an
    identifier given twice.
    """
    keys: dict[bytes, bytes] = {}
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        if len(words) != 2:
            raise UsageError(
                f"{source}:{number}: a key line is 'identifier secret', two words, not {len(words)}"
            )
        try:
            identifier = parse_identifier(words[0])
        except KeyFormatError as problem:
            raise UsageError(f"{source}:{number}: the identifier {problem}") from None
        try:
            secret = parse_secret(words[1])
        except KeyFormatError as problem:
            raise UsageError(f"{source}:{number}: the secret of {words[0]} {problem}") from None
        if identifier in keys:
            raise UsageError(f"{source}:{number}: the client {words[0]} is listed twice")
        keys[identifier] = secret
    return keys
