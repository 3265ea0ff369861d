"""Phase 2 streams its results and resumes: kill a real `fedpkt simulate` mid-phase-2 (issue 13 §4).

Personas go one per message, one worker at a time, so that, killed after two results, most are
still to do; each persona's result depends only on its own seed, so the resumed run's results
must equal an uninterrupted run's exactly. Random init skips phase 1 (its resume has its own
test in test_phase1_flower.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedpkt.rundir import RunDir
from sim.simulate import simulate
from tests.conftest import TINY, cli_sets, tiny_config

pytestmark = pytest.mark.e2e

SETTINGS = {
    **TINY,
    "phase2.init": "random",
    "phase2.personas_per_message": 1,
    "simulation.workers": 1,
}
PERSONAS = 6  # Parts B and C of the tiny corpus


def _client_events(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines if '"event": "client"' in line]


def _personalized_since(run_dir: Path, since: float) -> list[str]:
    """Personas whose phase-2 metrics left a ClientApp after ``since``, per the egress log
    (every reply is logged there, each persona's metrics in its own ``metrics/<id>`` record)."""
    names = []
    for log in (run_dir / "egress").glob("*.jsonl"):
        for line in log.read_text().splitlines():
            entry = json.loads(line)
            if entry.get("phase") == "personalize" and entry["time"] > since:
                names += [r["record"] for r in entry["records"] if r["kind"] == "metric"]
    return [name.removeprefix("metrics/") for name in set(names)]


def test_killed_phase2_resumes_only_the_personas_without_a_result(tmp_path: Path) -> None:
    values = {key.replace(".", "__"): value for key, value in SETTINGS.items()}
    whole = simulate(tiny_config(**values), tmp_path / "whole")

    broken = tmp_path / "broken"
    cmd = [sys.executable, "-m", "cli.main", "simulate", "--run-dir", str(broken)]
    proc = subprocess.Popen(
        [*cmd, *cli_sets(SETTINGS)],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 300
        while len(_client_events(broken)) < 2:
            assert proc.poll() is None, "run ended before it could be killed"
            assert time.time() < deadline, "no phase-2 result in time"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    kept = {e["client_id"] for e in _client_events(broken)}
    assert 2 <= len(kept) < PERSONAS, "kill should land mid-phase-2"
    assert not (broken / "results.json").exists()
    killed_at = time.time()

    resumed = simulate(tiny_config(**values), broken, resume=True)
    events = _client_events(broken)
    ids = [e["client_id"] for e in events]
    assert len(ids) == len(set(ids)) == PERSONAS, "one result per persona"
    retrained = set(_personalized_since(broken, killed_at))
    assert not kept & retrained, f"personas with a result were trained again: {kept & retrained}"
    assert retrained == set(ids) - kept

    expected = json.loads((whole.root / "results.json").read_text())
    got = json.loads((resumed.root / "results.json").read_text())
    assert got["rows"] == expected["rows"]
    start = RunDir(broken).events("phase2_start")
    assert start[-1]["kept"] == len(kept)
