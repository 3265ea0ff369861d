"""Validate before side effects (issue 16 §1): every check that needs no write runs before the
run directory exists, and a run that fails after it started gives advice that works."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedpkt.config import config_to_toml
from fedpkt.errors import FedpktError
from fedpkt.rundir import RunDir, check_run_dir, create_run_dir
from tests.conftest import TINY, cli_sets, tiny_config

CLI = [sys.executable, "-m", "cli.main", "simulate"]


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("backbone.name='./no/such/model'", "backbone directory './no/such/model' does not exist"),
        ("data.prepared_dir='prepared'", "data.prepared_dir 'prepared' does not exist"),
    ],
)
def test_bad_inputs_are_refused_before_the_run_directory_exists(
    setting: str, named: str, tmp_path: Path
) -> None:
    done = _cli(["--run-dir", "run", *cli_sets(TINY), "--set", setting], tmp_path)
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == 2
    assert len(lines) == 1 and named in lines[0], lines
    assert list(tmp_path.iterdir()) == []  # no run directory, nothing half-made


def _started_run(tmp_path: Path, **values: object) -> RunDir:
    """A run directory as a run leaves it after its first phase-1 round."""
    run = create_run_dir(tiny_config(**values), tmp_path / "run")
    round_one = {"event": "round", "round": 1, "train_loss": 3.0, "seconds": 1.0}
    run.log_event({**round_one, "sampled": ["A-0000"], "failures": []})
    return run


def test_resume_may_change_keys_that_did_not_shape_finished_work(tmp_path: Path) -> None:
    run = _started_run(tmp_path, phase1__client_timeout_s=1.0)
    longer = tiny_config(phase1__client_timeout_s=900.0)
    with pytest.raises(FedpktError, match="pass --resume"):
        check_run_dir(longer, run.root)
    create_run_dir(longer, run.root, resume=True)
    assert run.config_path.read_text() == config_to_toml(longer)
    changed = [e for e in run.events() if e["event"] == "config_changed"]
    assert changed[0]["changes"] == {"phase1.client_timeout_s": [1.0, 900.0]}


def test_resume_refuses_a_key_that_shaped_finished_work(tmp_path: Path) -> None:
    run = _started_run(tmp_path)
    with pytest.raises(FedpktError, match=r"phase1\.rounds shaped the work .* new --run-dir"):
        create_run_dir(tiny_config(phase1__rounds=9), run.root, resume=True)


def test_a_run_that_finished_nothing_takes_the_corrected_config(tmp_path: Path) -> None:
    root = tmp_path / "run"
    create_run_dir(tiny_config(backbone__embedded_size="default"), root)  # then it failed
    fixed = tiny_config()
    create_run_dir(fixed, root)
    assert (root / "config.toml").read_text() == config_to_toml(fixed)


@pytest.mark.e2e
def test_the_advice_of_a_run_that_failed_after_it_started_works(tmp_path: Path) -> None:
    """A client timeout too short for any reply fails round 1; the message's advice, --resume
    with a longer timeout (and no repeat of the other settings), then finishes the run."""
    sets = cli_sets({**TINY, "phase1.client_timeout_s": 0.001})
    failed = _cli(["--run-dir", "run", *sets], tmp_path)
    last = (failed.stdout + failed.stderr).strip().splitlines()[-1]
    assert failed.returncode == 2
    assert "continue with --resume" in last and "phase1.client_timeout_s" in last
    fixed = _cli(
        ["--run-dir", "run", "--resume", "--set", "phase1.client_timeout_s=300.0"], tmp_path
    )
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["config"]["phase1"]["rounds"] == TINY["phase1.rounds"]
