"""One run directory, one run (issue 16 §4): a second process on a live run directory is
refused in one line that names the holder's pid, before it writes anything there."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedpkt.errors import FedpktError
from fedpkt.runlock import LOCK_NAME, PID_NAME, hold_run_dir
from tests.conftest import TINY, cli_sets

CLI = [sys.executable, "-m", "cli.main", "simulate"]


def _snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


@pytest.mark.e2e
def test_second_simulate_on_a_live_run_directory_is_refused_naming_the_holder(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    args = ["--run-dir", str(run_dir), *cli_sets(TINY)]
    first = subprocess.Popen(
        [*CLI, *args],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 120
        while not (run_dir / "config.toml").is_file():
            assert first.poll() is None, "the first run ended before it held the directory"
            assert time.time() < deadline, "the first run never wrote its config"
            time.sleep(0.1)
        os.killpg(first.pid, signal.SIGSTOP)  # frozen, Ray workers too: the directory holds still
        before = _snapshot(run_dir)
        second = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)
        after = _snapshot(run_dir)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    lines = (second.stdout + second.stderr).strip().splitlines()
    assert second.returncode == 2
    assert len(lines) == 1, lines
    assert f"in use by another fedpkt process (pid {first.pid})" in lines[0]
    assert after == before  # the refused run wrote nothing


def test_lock_is_reentrant_in_one_process_and_removes_a_directory_it_alone_made(
    tmp_path: Path,
) -> None:
    root = tmp_path / "new"
    with hold_run_dir(root), hold_run_dir(root):  # the CLI and the API it calls
        assert (root / PID_NAME).read_text().strip() == str(os.getpid())
    assert not root.exists()  # refused before writing anything: nothing is left


def test_a_held_directory_is_refused_to_another_process(tmp_path: Path) -> None:
    code = "from fedpkt.runlock import hold_run_dir; import sys, time\n"
    code += "with hold_run_dir(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)\n"
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(FedpktError, match=f"pid {holder.pid}"), hold_run_dir(tmp_path):
            pass
    finally:
        holder.kill()
        holder.wait()
    with hold_run_dir(tmp_path):  # the kernel dropped the dead holder's lock
        assert (tmp_path / LOCK_NAME).exists()
