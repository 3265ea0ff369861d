"""Stopping a run on SIGINT or SIGTERM: within seconds, in one line, with nothing left running.

A run directory is built to survive ``kill -9`` at any point: files are replaced atomically,
``metrics.jsonl`` gets whole fsynced lines, phase 1 checkpoints every round and phase 2 logs
each persona's result as it arrives, and ``--resume`` continues from there. Stopping on a
signal therefore does what such a kill does, without its leftovers and its silence:

1. freeze, then kill (SIGKILL) every process this one started, at any depth: Ray's GCS,
   raylet, dashboard and log monitor, and the ClientApp workers, which could otherwise go on
   writing vaults and egress logs into the run directory;
2. print one line: what the run directory kept and the command that continues it;
3. exit at once with 128 + the signal number (130 for SIGINT, 143 for SIGTERM). A normal exit
   would wait for Flower's ServerApp thread, which may be waiting up to
   ``phase1.client_timeout_s`` for replies that will never come.

Output of the other threads (Flower's error logs about the workers just killed, Ray's own
messages) is silenced from the first step, so the line is all the user sees. Whatever step
hangs, a watchdog exits after ``HARD_DEADLINE_S``. Workers of a joined Ray cluster
(``--ray-address``) are not this process's children: Ray ends them when their driver exits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator

import psutil

HARD_DEADLINE_S = 8.0
SIGNALS = (signal.SIGINT, signal.SIGTERM)
_QUIT = 0  # not a signal number: tells the watcher thread to end
_wakeup: list[int] = []  # the wakeup fds of the stop_on_signals blocks now open


def exit_code(signum: int) -> int:
    """The shell's code for a process ended by ``signum``: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + signum


def kill_descendants(wait_s: float = 3.0) -> int:
    """SIGKILL every process below this one; returns how many there were.

    Each is first frozen (SIGSTOP) and the tree listed again until no new process appears,
    so that one forking while the others die (Ray's raylet starting a worker) cannot escape.
    """
    me = psutil.Process()
    found: dict[int, psutil.Process] = {}
    for _ in range(10):
        try:
            new = [p for p in me.children(recursive=True) if p.pid not in found]
        except psutil.Error:
            break
        if not new:
            break
        for proc in new:
            found[proc.pid] = proc
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGSTOP)
    for proc in found.values():
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGKILL)
    psutil.wait_procs(list(found.values()), timeout=wait_s)
    return len(found)


def _silence() -> int:
    """Mute logging and point stdout/stderr at /dev/null; returns a copy of the old stderr."""
    logging.disable(logging.CRITICAL)
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):
        with contextlib.suppress(OSError):
            os.dup2(null, fd)
    os.close(null)
    return saved


def _write_line(fd: int, text: str) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, (" ".join(text.split()) + "\n").encode("utf-8", errors="replace"))


@contextlib.contextmanager
def stop_on_signals(
    describe: Callable[[int], str], before_exit: Callable[[], None] | None = None
) -> Iterator[None]:
    """While inside, SIGINT and SIGTERM stop this process as the module describes.

    ``describe(signum)`` gives the one line (what was kept, how to resume); ``before_exit``
    runs first (the CLI ends its progress display there). Python runs signal handlers in the
    main thread only, and Flower's main thread may sit in a wait no signal interrupts (joining
    its worker threads while the ServerApp waits for replies); so the stop runs in a watcher
    thread woken by ``signal.set_wakeup_fd``, which the signal's C-level handler writes to
    whatever thread it lands on. Only the main thread can install this; elsewhere it does
    nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    once = threading.Lock()

    def stop(signum: int) -> None:
        if not once.acquire(blocking=False):
            return  # the first signal's stop is under way; a second one must not restart it
        code = exit_code(signum)
        watchdog = threading.Timer(HARD_DEADLINE_S, os._exit, args=(code,))
        watchdog.daemon = True
        watchdog.start()
        if before_exit is not None:
            with contextlib.suppress(Exception):
                before_exit()
        for stream in (sys.stdout, sys.stderr):  # what was printed so far still goes out
            with contextlib.suppress(Exception):
                stream.flush()
        stderr = _silence()
        kill_descendants()
        try:
            line = describe(signum)
        except Exception as err:  # the line must come whatever the run directory holds
            line = f"stopped by {interrupted_by(signum)} ({type(err).__name__})"
        _write_line(stderr, line)
        os._exit(code)

    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)

    def watch() -> None:
        while True:
            data = os.read(read_fd, 64)
            if not data or _QUIT in data:
                return
            for signum in data:
                if signum in SIGNALS:
                    stop(signum)

    previous = {sig: signal.signal(sig, lambda signum, frame: stop(signum)) for sig in SIGNALS}
    old_wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    _wakeup.append(write_fd)
    watcher = threading.Thread(target=watch, name="fedpkt-stop", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        _wakeup.remove(write_fd)
        signal.set_wakeup_fd(old_wakeup)
        for sig, old in previous.items():
            signal.signal(sig, old)
        os.write(write_fd, bytes([_QUIT]))
        watcher.join(timeout=1.0)
        os.close(write_fd)
        os.close(read_fd)


def reclaim_signals() -> None:
    """Re-install this process's Python handlers of SIGINT and SIGTERM (and wakeup fd).

    ``ray.init`` installs its own C-level SIGTERM handler in the driver (it aborts the process:
    exit 134 and a stack dump), replacing Python's; call this right after it. Main thread only.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in SIGNALS:
        handler = signal.getsignal(sig)
        if handler is not None:
            signal.signal(sig, handler)
    if _wakeup:  # and the wakeup fd, should a library have set its own
        signal.set_wakeup_fd(_wakeup[-1], warn_on_full_buffer=False)


def interrupted_by(signum: int) -> str:
    """'SIGINT' / 'SIGTERM' for a message."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
