"""`flwr run .`, the way Flower users start an app (Flower 1.42's local simulation).

`flwr run .` builds a FAB from this directory, starts a local SuperLink (simulation mode) when
none answers, and submits the run. The test gives Flower a private FLWR_HOME and free ports,
turns the SuperLink's runtime dependency installation off (`uv sync` would build a fresh
environment from pyproject.toml, torch included), runs a tiny config on 3 simulated SuperNodes
and checks results.json. Flower leaves the local SuperLink running: the test stops it, and the
SuperExec it spawned, by process group, found by the FLWR_HOME path in their command lines.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
TINY = (
    "backbone.embedded_size='tiny';data.scale='tiny';prefix.num_virtual_tokens=4;"
    "prefix.projection_hidden=16;phase1.rounds=1;phase1.clients_per_round=2;"
    "phase1.min_clients=1;phase1.eval_clients=2;phase2.max_epochs=1;"
    "generation.num_beams=1;generation.max_new_tokens=4"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def flower_processes(flwr_home: Path) -> list[psutil.Process]:
    """The local SuperLink started for ``flwr_home`` (its log file lies there), and every
    process below it (SuperExec, the simulation)."""
    found: list[psutil.Process] = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "flower-superlink" in cmdline and str(flwr_home) in cmdline:
            found += [proc, *proc.children(recursive=True)]
    return found


def stop(processes: list[psutil.Process]) -> None:
    """SIGTERM to each process's group, then SIGKILL to whatever is left after 10 s."""
    groups = set()
    for proc in processes:
        try:
            groups.add(os.getpgid(proc.pid))
        except ProcessLookupError:
            continue
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for group in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, sig)
        _, alive = psutil.wait_procs(processes, timeout=10)
        if not alive:
            return


def test_flwr_run_dot_runs_a_tiny_config_and_writes_results(tmp_path: Path) -> None:
    home, run_dir = tmp_path / "flwr-home", tmp_path / "run"
    run_config = tmp_path / "run-config.toml"
    run_config.write_text(
        f'config = "embedded"\nset = "{TINY}"\nrun-dir = "{run_dir}"\n', encoding="utf-8"
    )
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_HOME": str(home),
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
        "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
    }
    command = [str(bin_dir / "flwr"), "run", ".", "--run-config", str(run_config)]
    command += ["--federation-config", "num-supernodes=3", "--stream"]
    try:
        done = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
        )
        log = done.stdout + done.stderr
        assert done.returncode == 0, log[-3000:]
        assert (run_dir / "results.json").is_file(), log[-3000:]
        # 14 clients dealt round-robin over the 3 SuperNodes (clients/app.py partition_clients)
        assert "handshake: 14 clients on 3 nodes" in log, log[-3000:]
    finally:
        processes = flower_processes(home)
        stop(processes)
    assert processes, "flwr run started no local SuperLink for this FLWR_HOME"
    time.sleep(0.5)
    assert not flower_processes(home)
    rows = json.loads((run_dir / "results.json").read_text())["rows"]
    assert [(row["part"], row["n_personas"]) for row in rows] == [("B", 3), ("C", 3)]
    clients = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert sorted(e["client_id"] for e in clients if e.get("event") == "client") == [
        "B-0000", "B-0001", "B-0002", "C-0000", "C-0001", "C-0002"
    ]  # fmt: skip
