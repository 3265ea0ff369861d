"""Stopping (issue 16 §7): SIGINT or SIGTERM stop a real `fedpkt simulate` within seconds at
any point, with exit code 130 or 143, one line saying what was kept and how to resume, no
process of its session left, nothing written afterwards, and `--resume` then finishes the run.

Before, Ctrl-C in phase 1 waited out ``phase1.client_timeout_s``, SIGTERM in phase 2 aborted
with a stack dump (Ray's handler) or was ignored, and Ray workers kept writing vaults.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from tests.conftest import TINY, cli_sets

CLI = [sys.executable, "-m", "cli.main", "simulate"]
# One persona per message and one worker: phase 2 streams results one at a time, so a
# signal after the first lands mid-phase-2.
SETTINGS = {**TINY, "phase2.personas_per_message": 1, "simulation.workers": 1}
STOP_WITHIN_S = 30.0  # the goal is 10 s; generous for loaded CI machines


def _events(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def _session(sid: int) -> list[psutil.Process]:
    alive = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except (OSError, psutil.Error):
            continue
    return alive


def _files(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def _stop(
    run_dir: Path, ready: Callable[[list[dict]], bool], sig: signal.Signals, to_group: bool
) -> tuple[int, list[str], float]:
    """Start simulate in its own session, send ``sig`` once ``ready(events)``; returns the
    exit code, the output lines and the seconds the stop took."""
    proc = subprocess.Popen(
        [*CLI, "--run-dir", str(run_dir), *cli_sets(SETTINGS)],
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.time() + 600
        while not ready(_events(run_dir)):
            assert proc.poll() is None, f"the run ended before the signal: {proc.stdout.read()}"
            assert time.time() < deadline, "the run never reached the point to stop it at"
            time.sleep(0.05)
        sent = time.monotonic()
        if to_group:  # what Ctrl-C in a terminal does
            os.killpg(proc.pid, sig)
        else:  # what `timeout`, job schedulers and `docker stop` do
            os.kill(proc.pid, sig)
        output, _ = proc.communicate(timeout=STOP_WITHIN_S)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    left = _session(proc.pid)
    for orphan in left:
        orphan.kill()
    assert left == [], f"processes of the stopped run still alive: {left}"
    return proc.returncode, output.strip().splitlines(), took


def _resume(run_dir: Path) -> None:
    done = subprocess.run(
        [*CLI, "--run-dir", str(run_dir), "--resume"], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (run_dir / "report.md").is_file()


@pytest.mark.e2e
def test_ctrl_c_in_phase_1_stops_at_once_and_the_run_resumes(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    code, lines, took = _stop(
        run_dir, lambda events: any(e["event"] == "round" for e in events), signal.SIGINT, True
    )
    assert code == 130
    assert len(lines) == 1, lines
    assert re.fullmatch(
        rf"stopped by SIGINT: '{run_dir}' keeps [12] of 3 phase-1 rounds; continue with "
        rf"`fedpkt simulate --run-dir {run_dir} --resume`",
        lines[0],
    ), lines[0]
    assert took < STOP_WITHIN_S  # before: phase1.client_timeout_s (300 s here)
    before = _files(run_dir)
    time.sleep(2.0)
    assert _files(run_dir) == before  # nothing still writes into the run directory
    _resume(run_dir)


@pytest.mark.e2e
def test_sigterm_in_phase_2_stops_at_once_and_the_run_resumes(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    code, lines, _ = _stop(
        run_dir, lambda events: any(e["event"] == "client" for e in events), signal.SIGTERM, False
    )
    assert code == 143
    assert len(lines) == 1, lines
    assert re.fullmatch(
        rf"stopped by SIGTERM: '{run_dir}' keeps 3 of 3 phase-1 rounds, the source prefix, "
        rf"[1-5] of 6 phase-2 results; continue with "
        rf"`fedpkt simulate --run-dir {run_dir} --resume`",
        lines[0],
    ), lines[0]
    kept = {e["client_id"] for e in _events(run_dir) if e["event"] == "client"}
    _resume(run_dir)
    results = {e["client_id"] for e in _events(run_dir) if e["event"] == "client"}
    assert kept < results and len(results) == 6


def test_sigterm_while_it_starts_stops_in_one_line(tmp_path: Path) -> None:
    """A signal before the run directory holds any work (checks, data preparation): the
    command has started (5 s: its handler is installed), the run has not."""
    run_dir, started = tmp_path / "run", time.monotonic()
    code, lines, _ = _stop(
        run_dir, lambda events: time.monotonic() - started > 5.0, signal.SIGTERM, False
    )
    assert code == 143
    assert len(lines) == 1 and lines[0].startswith("stopped by SIGTERM"), lines
