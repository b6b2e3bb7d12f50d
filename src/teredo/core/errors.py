"""The project's exception types.

- `ParseError`: bytes or text from outside (network, address strings) are malformed. The core
  catches it at its edge and counts a drop; it never escapes a role's `receive_*` call.
- `LocalProtocolError`: the caller misused the core (a bug in our own code).
- `UserError`: something a person must fix (bad config, missing permission). Its message is one
  sentence that names the file, line or the fix; the CLI prints it and exits with `exit_code`.
  `UsageError` (exit 2) is a mistake on the command line or in a file; `TransientError` (exit 1)
  a failure that may go away by itself, which a starting daemon retries with backoff.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing's flag without importing typing (every command imports this)
if TYPE_CHECKING:
    from typing import Final

# The exit status of a command whose output's reader went away (`teredo lab status | head -1`):
# what a shell reports for a program killed by SIGPIPE, 128 + 13.
EXIT_BROKEN_PIPE: Final = 141


class ParseError(ValueError):
    """Malformed input from outside: a packet, an address, a field."""


class LocalProtocolError(RuntimeError):
    """The core was driven in a way its contract does not allow."""


class UserError(Exception):
    """An error a person can fix; printed as one sentence, never as a traceback."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class UsageError(UserError):
    """Bad command-line usage or a bad configuration file (exit status 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=2)


class TransientError(UserError):
    """A runtime failure that may go away by itself: a name that does not resolve yet, an
    address not yet on the host. A daemon starting up retries it; elsewhere it is exit 1."""


class NameResolutionError(TransientError):
    """A host name did not resolve. `temporary`: the resolver said to try again (no answer
    from the name servers) rather than that the name does not exist."""

    def __init__(self, message: str, *, temporary: bool) -> None:
        super().__init__(message)
        self.temporary = temporary
