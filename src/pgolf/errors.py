"""The base class of every user-facing error.

A `PgolfError` is a problem the user can act on: bad input, a missing, damaged or stale file, a failed
check. The command line prints its message as one line, `pgolf: error: <message>`, and exits with
`exit_code` (1; 2 for configuration and usage errors); `pgolf --traceback VERB` shows the traceback.
The message names the file or the config key and the problem. Anything else that escapes is a bug.
"""

from __future__ import annotations


class PgolfError(Exception):
    """A user-facing problem; `str(error)` is one line naming the file or key and what is wrong."""

    exit_code = 1


class FileWriteError(PgolfError, OSError):
    """A file could not be written (full disk, permissions); the partial temp file has been removed."""
