"""Readers that survive their own files (issue 16 §6): a resume reads and checks everything it
builds on before any work, naming the bad line of the bad file; ``compare`` refuses a run that
was stopped before it finished."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedpkt.errors import FedpktError
from fedpkt.report import ResultRow, write_results
from fedpkt.rundir import RunDir, check_run_dir, create_run_dir
from tests.conftest import tiny_config

ROUND = {"event": "round", "round": 1, "train_loss": 3.0, "val_loss": None, "seconds": 1.0}
ROUND |= {"sampled": ["A-0000"], "failures": []}
CLIENT = {
    "event": "client",
    "client_id": "B-0000",
    "part": "B",
    "n_train_dialogues": 4,
    "f1": 0.2,
    "f1_2gram": 0.05,
    "lcs_f1": 0.2,
    "c_score": 0.0,
    "test_loss": 3.1,
    "init_test_loss": 3.3,
    "epochs": 2,
}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _run_with_lines(root: Path, lines: list[str]) -> RunDir:
    run = create_run_dir(tiny_config(), root)
    run.metrics_path.write_text("".join(line + "\n" for line in lines))
    return run


def test_a_resume_names_the_damaged_line_before_it_does_any_work(tmp_path: Path) -> None:
    run = _run_with_lines(tmp_path / "run", [json.dumps(ROUND), '{"event": "rou', "{}"])
    before = _files(run.root)
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "simulate", "--run-dir", str(run.root), "--resume"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == 2
    assert len(lines) == 1, lines
    assert f"metrics file '{run.metrics_path}' line 2 is not valid JSON" in lines[0]
    assert _files(run.root) == before  # nothing re-run, nothing rewritten


def test_a_resume_names_a_result_line_that_is_not_a_result(tmp_path: Path) -> None:
    bad = {**CLIENT, "f1": "high"}
    run = _run_with_lines(tmp_path / "run", [json.dumps(ROUND), json.dumps(bad)])
    with pytest.raises(FedpktError, match=r"line 2: client 'B-0000' event field 'f1'"):
        check_run_dir(tiny_config(), run.root, resume=True, phases="all")


def test_a_resume_drops_a_torn_last_line_and_redoes_its_work(tmp_path: Path) -> None:
    run = _run_with_lines(tmp_path / "run", [json.dumps(ROUND)])
    with run.metrics_path.open("a") as handle:
        handle.write(json.dumps(CLIENT)[:40])  # killed mid-write: no newline
    check_run_dir(tiny_config(), run.root, resume=True, phases="all")
    assert [e["event"] for e in run.events()] == ["round"]


def _compare(run: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "compare", str(run), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_compare_refuses_a_run_stopped_between_its_results_and_done(tmp_path: Path) -> None:
    run = _run_with_lines(tmp_path / "run", [json.dumps(ROUND), json.dumps(CLIENT)])
    row = ResultRow("PersonaPKT (federated)", "B", 0.2, 0.05, 0.2, 0.0, 1, 0.1)
    write_results(run.root, [row], tiny_config().model_dump(mode="json"))
    refused = _compare(run.root, tmp_path / "out")
    lines = (refused.stdout + refused.stderr).strip().splitlines()
    assert refused.returncode == 2
    assert len(lines) == 1 and "is unfinished" in lines[0] and "--resume" in lines[0], lines
    assert not (tmp_path / "out").exists()
    run.log_event({"event": "done", "phases": "all", "seconds": 1.0})
    assert _compare(run.root, tmp_path / "out").returncode == 0
