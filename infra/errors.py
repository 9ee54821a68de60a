"""The application's user error."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can act on (a missing folder, bad input, an option that cannot work
    here): the message says what was wrong and what is expected. The command prints it as one
    line and exits 2; the suites raise it as a usage error."""
