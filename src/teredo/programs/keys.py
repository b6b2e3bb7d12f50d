"""Reading the secure qualification keys (RFC 4380 §5.2.2) from files, for both daemons.

The formats are `teredo.core.secure_qualification`'s: a client's ``SharedSecretFile`` holds its
secret as ``SharedSecret`` writes it; a server's ``ClientKeyFile`` one ``identifier secret``
line per client. The daemons read them at start, before dropping privileges (so the files can
be root's, mode 0600), and again on SIGHUP.
"""

from __future__ import annotations

from teredo.core import secure_qualification
from teredo.core.config import ClientConfig
from teredo.core.errors import UsageError, UserError
from teredo.core.secure_qualification import (
    MAX_KEY_FILE_BYTES,
    ClientKey,
    KeyFormatError,
    parse_key_file,
    parse_secret,
)
from teredo.programs.bounded_file import read_bounded


def read_key_text(path: str, what: str) -> str:
    """The text of a key file; every failure is one `UsageError` sentence."""
    data = read_bounded(
        path,
        MAX_KEY_FILE_BYTES,
        name=f"the {what} {path}",
        too_large=f"the {what} {path} is larger than 4 MiB; is it the right file?",
    )
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise UsageError(f"the {what} {path} is not ASCII text; is it the right file?") from None


def load_algorithm() -> None:
    """`secure_qualification.load_algorithm`, failing in one sentence: on SIGHUP, after the
    privileges were dropped, the library may be out of reach (then a restart turns keys on)."""
    try:
        secure_qualification.load_algorithm()
    except ImportError as error:
        raise UserError(
            f"cannot load HMAC-SHA1 ({error}) now that privileges are dropped; restart the "
            "daemon to use the keys"
        ) from None


def client_key(config: ClientConfig) -> ClientKey | None:
    """The client's key from ClientIdentifier and SharedSecret or SharedSecretFile, or None.
    Called before privileges are dropped, it also loads the algorithm (`load_algorithm`)."""
    if config.client_identifier is None:
        return None
    load_algorithm()
    secret = config.shared_secret
    if secret is None:
        assert config.shared_secret_file is not None  # the configuration checked it
        path = config.shared_secret_file
        try:
            secret = parse_secret(read_key_text(path, "shared secret file (SharedSecretFile)"))
        except KeyFormatError as problem:
            raise UsageError(f"the secret in {path} {problem}") from None
    return ClientKey(config.client_identifier, secret)


def client_keys(path: str) -> dict[bytes, bytes]:
    """The clients' keys of a server's ClientKeyFile, identifier -> secret; also loads the
    algorithm (`load_algorithm`)."""
    keys = parse_key_file(read_key_text(path, "client key file (ClientKeyFile)"), path)
    load_algorithm()
    return keys
