"""The OS processes of a launch: start them in their own groups, record them, stop every one.

Process hygiene is the point of this module: every process starts in its own process group;
Flower's detached helpers (the SuperLink's SuperExec and the ServerApps it spawns) are tracked
through psutil as descendants. ``ProcessSet.stop`` (which ``fedpkt launch`` runs on success,
failure, Ctrl-C or SIGTERM) sends SIGTERM to each group, then SIGKILL to whatever is left, and
waits for them. ``launch/processes.json`` records what was started: name, pid, process group,
argv, log, exit code, CPU seconds used (``cpu_s``, taken just before the stop) and the
launcher's own details (GPU, clients, ports).

Also here: where Flower's executables are (beside this interpreter first) and the environment
every Flower process gets (``child_env``), which the ``flwr`` CLI wrapper shares.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil

from fedpkt.atomic import atomic_write_json
from fedpkt.errors import FedpktError


def flower_bin_dir() -> Path:
    """Where Flower's executables are: beside this interpreter (the venv's ``bin``)."""
    return Path(sys.executable).parent


def flower_executable(name: str) -> str:
    """Absolute path of one Flower executable; the venv's first, then ``PATH``."""
    local = flower_bin_dir() / name
    if local.is_file():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise FedpktError(
            f"Flower executable '{name}' not found beside {sys.executable} nor on PATH "
            "(expected flwr>=1.42 installed in this environment)"
        )
    return found


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of every Flower process: venv executables first, no phoning home."""
    env = dict(os.environ)
    env["PATH"] = f"{flower_bin_dir()}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    env.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    env.update(extra or {})
    return env


def last_line(path: Path, default: str = "(empty log)") -> str:
    """The last non-blank line of a log file, stripped of ANSI colours (for one-line errors)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return default
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    return lines[-1] if lines else default


# -- processes ----------------------------------------------------------------------------------
@dataclass
class Started:
    """One process the launcher started, in its own process group (pgid == pid)."""

    name: str
    popen: subprocess.Popen[bytes]
    argv: list[str]
    log: Path
    info: dict[str, Any] = field(default_factory=dict)
    started_at: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None


def _alive(proc: psutil.Process) -> bool:
    """Running and not a zombie (a zombie is dead, only waiting for its parent to reap it)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class ProcessSet:
    """The processes of one launch: start them, watch them, and stop every one of them.

    ``refresh`` remembers every descendant seen (Flower detaches some helpers into their own
    sessions, so process groups alone do not cover them); ``stop`` signals the groups and the
    remembered descendants and waits until none is alive.
    """

    def __init__(self, record: Path) -> None:
        self.record = record
        self.started: list[Started] = []
        self._descendants: dict[int, psutil.Process] = {}
        self._logs: list[IO[bytes]] = []

    def start(
        self, name: str, argv: list[str], env: dict[str, str], log: Path, **info: Any
    ) -> Started:
        log.parent.mkdir(parents=True, exist_ok=True)
        handle = log.open("ab")
        self._logs.append(handle)
        popen = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own session and process group: Ctrl-C reaches only us
        )
        started = Started(name, popen, argv, log, dict(info))
        self.started.append(started)
        self.write_record()
        return started

    def get(self, name: str) -> Started:
        """The latest process started under ``name`` (a restarted worker replaces its last)."""
        return next(s for s in reversed(self.started) if s.name == name)

    def write_record(self) -> None:
        rows = [
            {
                "name": s.name,
                "pid": s.pid,
                "pgid": s.pid,
                "argv": s.argv,
                "log": str(s.log),
                "exit_code": s.popen.returncode,
                **s.info,
            }
            for s in self.started
        ]
        atomic_write_json(self.record, {"processes": rows})

    def refresh(self) -> None:
        """Remember the current descendants of every started process."""
        for s in self.started:
            if not s.running():
                continue
            try:
                for child in psutil.Process(s.pid).children(recursive=True):
                    self._descendants.setdefault(child.pid, child)
            except psutil.Error:
                continue

    def _living(self) -> list[psutil.Process]:
        self.refresh()
        procs: dict[int, psutil.Process] = {}
        for s in self.started:
            if s.running():
                with contextlib.suppress(psutil.Error):
                    procs[s.pid] = psutil.Process(s.pid)
        procs.update(self._descendants)
        return [p for p in procs.values() if _alive(p)]

    def _signal_all(self, sig: signal.Signals) -> None:
        for s in self.started:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(s.pid, sig)  # the group outlives its leader: still reachable
        for proc in self._descendants.values():
            with contextlib.suppress(psutil.Error):
                if _alive(proc):
                    proc.send_signal(sig)

    def stop_one(self, started: Started, grace: float = 5.0) -> None:
        """SIGTERM one process group, SIGKILL it after ``grace`` seconds, and reap it."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(started.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                started.popen.wait(timeout=wait)
                break
        self.write_record()

    def note_cpu(self) -> None:
        """Record each running process's CPU seconds so far (user + system) as ``cpu_s``."""
        for s in self.started:
            if s.running():
                with contextlib.suppress(psutil.Error):
                    times = psutil.Process(s.pid).cpu_times()
                    s.info["cpu_s"] = round(times.user + times.system, 2)

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM every group and descendant, SIGKILL what is left after ``grace`` seconds."""
        self.refresh()
        self.note_cpu()
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self._living() and time.monotonic() < deadline:
            time.sleep(0.2)
        for _ in range(3):
            if not self._living():
                break
            self._signal_all(signal.SIGKILL)
            time.sleep(0.5)
        for s in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                s.popen.wait(timeout=5)
        self.write_record()
        for handle in self._logs:
            handle.close()
        self._logs.clear()
