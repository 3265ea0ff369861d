"""Operating-system errors are input too (issue 16 §3): a read-only run directory, a full disk,
a FIFO where a file should be give one line naming the path and the error (exit code 2), and
no log is ever left with a torn line.

The read-only and full filesystems are real: a tmpfs mounted in a user and mount namespace
of its own (``unshare -Urm``), so nothing outside the test sees it. Where the kernel or the
container allows no such namespace, those tests are skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fedpkt.errors import FedpktError
from fedpkt.jsonl import append_line, read_lines
from fedpkt.rundir import create_run_dir
from tests.conftest import TINY, cli_sets, tiny_config

CLI = [sys.executable, "-m", "cli.main", "simulate"]


def _namespaces_work() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = "mkdir -p /tmp/.fedpkt-ns && mount -t tmpfs -o size=64k tmpfs /tmp/.fedpkt-ns"
    done = subprocess.run(["unshare", "-Urm", "sh", "-c", probe], capture_output=True)
    return done.returncode == 0


needs_namespaces = pytest.mark.skipif(
    not _namespaces_work(), reason="no user+mount namespaces here (unshare -Urm)"
)


def _in_namespace(script: str, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["unshare", "-Urm", "sh", "-c", f"set -u\n{script}"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _one_error_line(output: str) -> str:
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "Traceback" not in output
    return lines[0]


def test_a_fifo_where_the_metrics_file_should_be_is_one_line_not_a_hang(tmp_path: Path) -> None:
    run = create_run_dir(tiny_config(), tmp_path / "run")
    os.mkfifo(run.metrics_path)  # reading it would block forever
    done = subprocess.run(
        [*CLI, "--run-dir", str(run.root), "--resume"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    line = _one_error_line(done.stdout + done.stderr)
    assert f"'{run.metrics_path}' is not a regular file" in line


@needs_namespaces
def test_a_run_directory_on_a_read_only_filesystem_is_one_line(tmp_path: Path) -> None:
    mnt = tmp_path / "ro"
    script = f"mkdir -p {mnt} && mount -t tmpfs -o size=64m,ro tmpfs {mnt}\n"
    script += f"exec {sys.executable} -m cli.main simulate --run-dir {mnt}/run"
    done = _in_namespace(script + " " + " ".join(f'"{a}"' for a in cli_sets(TINY)), tmp_path)
    assert done.returncode == 2
    line = _one_error_line(done.stdout + done.stderr)
    assert f"'{mnt}/run'" in line and "Read-only file system [EROFS]" in line


@pytest.mark.e2e
@needs_namespaces
def test_a_disk_that_fills_mid_run_stops_it_in_one_line_without_torn_lines(
    tmp_path: Path,
) -> None:
    """A 24 MiB tmpfs filled once round 1 is logged: the run stops with one line naming the
    full disk, its logs hold only whole lines, and once space is freed --resume finishes."""
    mnt, sets = tmp_path / "disk", " ".join(f'"{a}"' for a in cli_sets(TINY))
    py = sys.executable
    script = f"""
mkdir -p {mnt} && mount -t tmpfs -o size=24m tmpfs {mnt}
{py} -m cli.main simulate --run-dir {mnt}/run {sets} > {tmp_path}/first.out 2>&1 &
pid=$!
while ! grep -q '"event": "round"' {mnt}/run/metrics.jsonl 2>/dev/null; do
    kill -0 $pid 2>/dev/null || break; sleep 0.2
done
dd if=/dev/zero of={mnt}/filler bs=64k 2>/dev/null
wait $pid; echo "first=$?"
cp -r {mnt}/run {tmp_path}/full-copy
rm {mnt}/filler
{py} -m cli.main simulate --run-dir {mnt}/run --resume > {tmp_path}/second.out 2>&1
echo "second=$?"
cp {mnt}/run/results.json {tmp_path}/results.json
"""
    done = _in_namespace(script, tmp_path)
    assert "first=2" in done.stdout, done.stdout + done.stderr
    first = (tmp_path / "first.out").read_text()
    assert "Traceback" not in first
    last = first.strip().splitlines()[-1]
    assert last.startswith("error: no space left on the device of"), last
    assert "continue with `fedpkt simulate" in last
    copy = tmp_path / "full-copy"
    for log in [copy / "metrics.jsonl", *(copy / "egress").glob("*.jsonl")]:
        assert log.read_bytes().endswith(b"\n"), f"{log} ends in a torn line"
        assert read_lines(log, "log").torn is None
    assert "second=0" in done.stdout, (tmp_path / "second.out").read_text()[-2000:]
    assert json.loads((tmp_path / "results.json").read_text())["rows"]


def test_a_torn_last_line_is_skipped_by_readers_and_cut_by_the_next_append(
    tmp_path: Path,
) -> None:
    log = tmp_path / "metrics.jsonl"
    append_line(log, {"event": "round", "round": 1})
    with log.open("ab") as handle:  # what a power cut mid-write leaves
        handle.write(b'{"event": "round", "rou')
    assert read_lines(log, "metrics file").torn == 2
    assert read_lines(log, "metrics file").objects == [{"event": "round", "round": 1}]
    append_line(log, {"event": "round", "round": 2})
    assert [e["round"] for e in read_lines(log, "metrics file").objects] == [1, 2]
    assert log.read_text().count("\n") == 2


def test_a_damaged_middle_line_is_named(tmp_path: Path) -> None:
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"event": "round"}\n{oops\n{"event": "done"}\n')
    with pytest.raises(FedpktError, match=r"metrics\.jsonl' line 2 is not valid JSON"):
        read_lines(log, "metrics file")
