"""One run directory, one run: the exclusive lock every command that writes a run holds.

``hold_run_dir(root)`` takes an OS lock (``filelock``: ``flock`` on POSIX, which the kernel
drops when the holder dies, ``kill -9`` included, so a stopped run never leaves a stale lock)
on ``<root>/.fedpkt.lock`` before anything else is written there, and records the holder's
pid in ``<root>/.fedpkt.pid``. A second process asking for the same directory gets one line
naming that pid. The lock is re-entrant within a process (the CLI and the API it calls may
both take it). A directory this call created and nothing else wrote into is removed again on
release, so a run refused early leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from fedpkt.errors import FedpktError, os_error

LOCK_NAME = ".fedpkt.lock"
PID_NAME = ".fedpkt.pid"
_held: dict[Path, int] = {}  # resolved root -> how many holders in this process


def holder_pid(root: Path) -> int | None:
    """The pid recorded by the process holding ``root``'s lock (None when unknown)."""
    try:
        text = (root / PID_NAME).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _refusal(root: Path) -> FedpktError:
    pid = holder_pid(root)
    who = f"pid {pid}" if pid else "pid unknown"
    return FedpktError(
        f"run directory '{root}' is in use by another fedpkt process ({who}); wait for it to "
        "end, or use another --run-dir"
    )


def check_unlocked(root: str | Path) -> None:
    """Refuse a run directory another process holds, without writing anything (a check that
    runs before the others, so that a live run is reported as such)."""
    path = Path(root).absolute()
    if _held.get(path.resolve()) or not (path / LOCK_NAME).is_file():
        return
    lock = FileLock(str(path / LOCK_NAME), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise _refusal(path) from None
    except OSError:
        return  # unreadable: hold_run_dir reports it, naming the error
    lock.release()


def _make_dir(root: Path) -> bool:
    """Create ``root`` (and parents); True when it did not exist before."""
    if root.exists() and not root.is_dir():
        raise FedpktError(f"run directory '{root}' exists and is not a directory")
    created = not root.exists()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise os_error(err, "cannot create the run directory") from None
    return created


@contextlib.contextmanager
def hold_run_dir(root: str | Path) -> Iterator[Path]:
    """Hold the exclusive lock on run directory ``root`` (created if missing); yields it."""
    path = Path(root).absolute()
    key = path.resolve()
    if _held.get(key):
        _held[key] += 1
        try:
            yield path
        finally:
            _held[key] -= 1
        return
    created = _make_dir(path)
    lock = FileLock(str(path / LOCK_NAME), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise _refusal(path) from None
    except OSError as err:
        raise os_error(err, "cannot lock the run directory") from None
    _held[key] = 1
    try:
        try:
            (path / PID_NAME).write_text(f"{os.getpid()}\n", encoding="utf-8")
        except OSError as err:
            raise os_error(err, "cannot write in the run directory") from None
        yield path
    finally:
        _held.pop(key, None)
        lock.release()
        if created:
            remove_if_untouched(path)


def remove_if_untouched(path: str | Path) -> None:
    """Remove a run directory that holds nothing but the lock's own files."""
    path = Path(path)
    with contextlib.suppress(OSError):
        if {p.name for p in path.iterdir()} <= {LOCK_NAME, PID_NAME}:
            for name in (LOCK_NAME, PID_NAME):
                (path / name).unlink(missing_ok=True)
            path.rmdir()
