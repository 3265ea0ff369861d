"""The one exception type users see.

Every bad input (config value, file, tensor shape, key) is reported as a single line that names
the thing and what was expected; the CLI turns it into exit code 2 without a traceback.
Operating-system errors are input too: ``os_error`` turns one into such a line, naming the path
and the error (a read-only directory, a full disk, a FIFO where a file should be).
"""

from __future__ import annotations

import errno


class FedpktError(Exception):
    """A user-facing error whose message is one line: what was wrong and what was expected."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


def os_error(err: OSError, action: str = "") -> FedpktError:
    """One line for an OSError: ``[action: ]'path': reason [ERRNO]``.

    >>> str(os_error(PermissionError(13, "Permission denied", "/ro/x"), "cannot write"))
    "cannot write: '/ro/x': Permission denied [EACCES]"
    """
    reason = err.strerror or str(err) or type(err).__name__
    code = errno.errorcode.get(err.errno or 0)
    text = reason + (f" [{code}]" if code else "")
    if err.filename is not None:
        where = f"'{err.filename}'" + (f" -> '{err.filename2}'" if err.filename2 else "")
        text = f"{where}: {text}"
    return FedpktError(f"{action}: {text}" if action else text)
