"""JSON-lines files a crash cannot leave half-written: append whole lines, read them back.

Writers (``metrics.jsonl``, the egress logs) call :func:`append_line`: the line goes out under
``O_APPEND`` (lines stay whole with several writers), written until every byte is out, then
``fsync``\\ ed, so a logged result survives a crash right after. If the write fails (a full
disk) the file is cut back to where it was: no torn line is left. A file torn anyway (power
lost mid-write) ends without a newline; ``append_line`` first cuts that fragment off, and
:func:`read_lines` skips it and says so (``JsonLines.torn``). Any other line that is not a
JSON object is an error naming the file and the line.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedpkt.errors import FedpktError, os_error

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class JsonLines:
    """The objects of a JSON-lines file with their 1-based line numbers, and the number of a
    torn last line that was skipped (None when the file ended cleanly)."""

    rows: list[tuple[int, dict[str, Any]]]
    torn: int | None = None

    @property
    def objects(self) -> list[dict[str, Any]]:
        return [obj for _, obj in self.rows]


def _cut_torn_tail(fd: int) -> int:
    """Cut a last line without its newline (a torn write); returns the bytes removed."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return 0
    start = max(0, size - (1 << 20))
    tail = os.pread(fd, size - start, start)
    keep = start + tail.rfind(b"\n") + 1 if b"\n" in tail else start
    if keep == 0 and start > 0:
        return 0  # a single line over 1 MiB: leave it to the reader
    os.ftruncate(fd, keep)
    return size - keep


def append_line(path: str | Path, obj: Any, *, fsync: bool = True) -> None:
    """Append ``obj`` as one JSON line to ``path`` (created if missing), whole or not at all.

    OSErrors (a read-only directory, a full disk, a FIFO where the file should be) become
    one-line FedpktErrors naming the path.
    """
    file = Path(path)
    data = (json.dumps(obj, sort_keys=True, default=repr) + "\n").encode("utf-8")
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        if file.exists() and not file.is_file():
            raise FedpktError(f"'{file}' is not a regular file; expected a JSON-lines log")
        fd = os.open(file, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError as err:
        raise os_error(err, "cannot append to the log") from None
    try:
        cut = _cut_torn_tail(fd)
        if cut:
            logger.warning("%s: cut a torn last line (%d bytes) before appending", file, cut)
        size = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if fsync:
                os.fsync(fd)
        except OSError as err:
            os.ftruncate(fd, size)  # no torn line: the file is as it was before this line
            raise os_error(err, "cannot append to the log") from None
    except OSError as err:
        raise os_error(err, "cannot append to the log") from None
    finally:
        os.close(fd)


def read_lines(path: str | Path, what: str, *, tolerant: bool = False) -> JsonLines:
    """Every JSON object of ``path``, checked: a line that is not one is an error naming
    ``what``, the file and the line, except a torn last line (no newline), which is skipped
    and reported. ``tolerant`` skips every bad line instead (for messages, not for results).
    A missing file reads as empty."""
    file = Path(path)
    if not file.exists():
        return JsonLines([])
    try:
        if not file.is_file():
            raise FedpktError(f"{what} '{file}' is not a regular file")
        raw = file.read_bytes()
    except OSError as err:
        raise os_error(err, f"cannot read the {what}") from None
    lines = raw.split(b"\n")
    last = len(lines) if lines[-1] else None  # a last line without its newline
    rows: list[tuple[int, dict[str, Any]]] = []
    torn = None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            if number == last:
                torn = number
                logger.warning("%s: skipped a torn last line %d", file, number)
                continue
            if tolerant:
                continue
            reason = getattr(err, "msg", type(err).__name__)
            raise FedpktError(
                f"{what} '{file}' line {number} is not valid JSON ({reason}); the file is "
                "damaged: restore it, or start again in a new run directory"
            ) from None
        if not isinstance(obj, dict):
            if tolerant:
                continue
            raise FedpktError(
                f"{what} '{file}' line {number} is a JSON {type(obj).__name__}, not an object; "
                "the file is damaged: restore it, or start again in a new run directory"
            )
        rows.append((number, obj))
    return JsonLines(rows, torn)
