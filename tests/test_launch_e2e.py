"""`fedpkt launch` on real processes: a SuperLink and 3 SuperNodes on 127.0.0.1 (CPU).

Each test runs the real CLI (or ``sim.launch.launch``) and checks afterwards, through psutil,
that no process it started is left: nothing whose command line or FLWR_HOME points into the
test's run directory. Every message goes through the fedpkt workers (``sim.worker``), which
speak Flower 1.42's SuperNode Runtime API: these tests are the ones that fail when that
protocol changes. They take a minute or more each on 2 shared cores, hence the e2e mark.
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

from fedpkt.errors import FedpktError
from fedpkt.rundir import RunDir
from sim.launch import LaunchOptions, launch
from sim.worker import read_held
from tests.conftest import tiny_config
from tests.test_launch import launch_processes

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent

# The reduced run of the issue: tiny backbone and corpus, 2 rounds, short generation.
REDUCED = {
    "backbone.embedded_size": "'tiny'",
    "data.scale": "'tiny'",
    "prefix.num_virtual_tokens": "4",
    "prefix.projection_hidden": "32",
    "phase1.rounds": "2",
    "phase1.clients_per_round": "3",
    "phase1.min_clients": "1",
    "phase1.eval_clients": "2",
    "phase1.client_timeout_s": "300.0",
    "phase2.max_epochs": "2",
    "generation.num_beams": "2",
    "generation.max_new_tokens": "8",
}


def _command(run_dir: Path, *extra: str, supernodes: int = 3, **overrides: str) -> list[str]:
    """The real CLI: ``python -m cli.main launch`` with the reduced config (dotted overrides)."""
    sets: list[str] = []
    for key, value in {**REDUCED, **overrides}.items():
        sets += ["--set", f"{key}={value}"]
    cmd = [sys.executable, "-m", "cli.main", "launch", "--supernodes", str(supernodes)]
    return [*cmd, "--config", "embedded", "--run-dir", str(run_dir), *sets, *extra]


def _processes(run_dir: Path, prefix: str = "") -> list[dict]:
    """processes.json's rows (those whose name starts with ``prefix``), in start order."""
    rows = json.loads((run_dir / "launch" / "processes.json").read_text())["processes"]
    return [row for row in rows if row["name"].startswith(prefix)]


def _latest(run_dir: Path, name: str) -> dict:
    return [row for row in _processes(run_dir) if row["name"] == name][-1]


def _tasks(run_dir: Path, worker: str) -> list[dict]:
    path = run_dir / "logs" / f"{worker}.tasks.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _wait_until(
    predicate,
    timeout: float,
    what: str,
    proc: subprocess.Popen | None = None,
    every: float = 0.5,
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"launcher exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


def _train_messages(log: Path) -> int:
    if not log.is_file():
        return 0
    return log.read_text(errors="replace").count("Receiving: train message")


def _assert_nothing_left(run_dir: Path) -> None:
    left = launch_processes(run_dir)
    for proc in left:  # never leave them to the next test, even when failing
        proc.kill()
    assert left == [], [p.info.get("cmdline") for p in left]


def test_three_supernodes_run_both_phases_over_tls(tmp_path: Path) -> None:
    """The issue's run: 3 SuperNodes, reduced phases 1 + 2, report.md and results.json."""
    run_dir = tmp_path / "run"
    done = subprocess.run(
        _command(run_dir), cwd=ROOT, capture_output=True, text=True, timeout=840, check=False
    )
    try:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        run = RunDir(run_dir)
        assert (run_dir / "report.md").is_file()
        rows = json.loads((run_dir / "results.json").read_text())["rows"]
        assert rows and {"method", "part", "f1", "c_score"} <= set(rows[0])
        assert [e["round"] for e in run.events("round")] == [1, 2]
        assert len(run.events("done")) == 1

        manifest = json.loads((run_dir / "data" / "manifest.json").read_text())["clients"]
        all_ids = {c["client_id"] for c in manifest}
        personal = {c["client_id"] for c in manifest if c["part"] in ("B", "C")}

        procs = _processes(run_dir)
        nodes = [f"supernode-{k}" for k in range(3)]
        workers = [f"worker-{k}" for k in range(3)]
        assert [p["name"] for p in procs] == [
            "superlink",
            *(name for pair in zip(nodes, workers, strict=True) for name in pair),
        ]
        assert all(p["exit_code"] is not None for p in procs)
        served = [set(p["client_ids"]) for p in _processes(run_dir, "supernode")]
        assert set().union(*served) == all_ids
        assert sum(len(s) for s in served) == len(all_ids)  # each client on exactly one node
        assert "--ssl-certfile" in procs[0]["argv"]  # TLS by default
        assert (run_dir / "certs" / "ca.pem").is_file()
        for name in ("superlink", *nodes, *workers, "serverapp"):
            assert (run_dir / "logs" / f"{name}.log").is_file()
        assert any((run_dir / "egress").iterdir())
        for node, worker in zip(nodes, workers, strict=True):
            # No flower-superexec: the SuperNode leaves its tasks to the worker beside it...
            assert "--isolation" in _latest(run_dir, node)["argv"]
            assert _latest(run_dir, worker)["restart"] == 0
            text = (run_dir / "logs" / f"{worker}.log").read_text(errors="replace")
            # ...which loads the app from the FAB once, and the backbone where it was told.
            assert text.count("ClientApp loaded from") == 1
            assert f"launch/flwr/{node}/apps/fedpkt.fedpkt" in text
            assert "backbone on cpu (float32), CUDA_VISIBLE_DEVICES=''" in text
            tasks = _tasks(run_dir, worker)
            assert tasks and all(t["ok"] for t in tasks)  # handshake, rounds, phase 2
            assert {"query", "train.personalize"} <= {t["type"] for t in tasks}
            assert sum("load_s" in t for t in tasks) == 1
        # Every Part B/C persona reports once, under its own id, though nodes serve several.
        assert sorted(e["client_id"] for e in run.events("client")) == sorted(personal)
    finally:
        _assert_nothing_left(run_dir)


def test_killed_supernode_round_completes_with_the_others(tmp_path: Path) -> None:
    """SIGKILL one SuperNode while round 1 is in flight: the round and the run still finish.

    4 of 8 Part A clients are sampled per round and no node serves more than 3 of them, so
    every round has a client on a living node (min_clients = 1).
    """
    run_dir = tmp_path / "run"
    cmd = _command(
        run_dir,
        "--phase",
        "source",
        **{"phase1.clients_per_round": "4", "phase1.client_timeout_s": "240.0"},
    )
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    logs = [run_dir / "logs" / f"supernode-{k}.log" for k in range(3)]
    try:
        _wait_until(
            lambda: sum(_train_messages(log) > 0 for log in logs) >= 2,
            600,
            "two SuperNodes working on round 1",
            proc,
        )
        victim = next(k for k, log in enumerate(logs) if _train_messages(log) > 0)
        os.killpg(_latest(run_dir, f"supernode-{victim}")["pgid"], signal.SIGKILL)
        output, _ = proc.communicate(timeout=780)
        assert proc.returncode == 0, output[-3000:]
        assert f"supernode-{victim} exited" in output
        rounds = RunDir(run_dir).events("round")
        assert [r["round"] for r in rounds] == [1, 2]
        assert rounds[0]["failures"] >= 1
        assert (run_dir / "checkpoints" / "source.safetensors").is_file()
    finally:
        if proc.poll() is None:
            proc.kill()
        _assert_nothing_left(run_dir)


def test_killed_worker_is_restarted_and_its_round_completes(tmp_path: Path) -> None:
    """SIGKILL a worker while it trains a client (phase 1, 100 inner steps so that it is
    caught at it): the launcher starts it again, the new worker answers the killed message as
    failed at once (not after the SuperNode's 60 s heartbeat expiry), the round completes with
    the other clients' updates, and the restarted worker serves its node's personas in phase 2.
    """
    run_dir = tmp_path / "run"
    cmd = _command(
        run_dir,
        **{"phase1.clients_per_round": "4", "phase1.inner_steps": "100"},
    )
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    held: dict = {}

    def training() -> bool:
        for path in (run_dir / "launch" / "workers").glob("worker-*.json"):
            record = read_held(path)
            if record and record.get("stage") == "running" and record.get("type") == "train":
                held.update(record, name=path.stem)
                return True
        return False

    try:
        _wait_until(training, 600, "a worker training a client", proc, every=0.05)
        victim = held["name"]
        os.killpg(_latest(run_dir, victim)["pgid"], signal.SIGKILL)
        killed_at = time.time()
        output, _ = proc.communicate(timeout=780)
        assert proc.returncode == 0, output[-3000:]
        assert f"{victim} exited (code -9); started again (restart 1)" in output
        run = RunDir(run_dir)
        rounds = run.events("round")
        assert [r["round"] for r in rounds] == [1, 2]
        hit = [
            r
            for r in rounds
            if any(
                "fedpkt worker running this message stopped" in f["reason"]
                for f in r["failure_reasons"]
            )
        ]
        assert len(hit) == 1
        assert len(hit[0]["sampled"]) > hit[0]["failures"]  # the others' updates were used
        assert [row["restart"] for row in _processes(run_dir, victim)] == [0, 1]
        tasks = _tasks(run_dir, victim)
        assert [t["task_id"] for t in tasks if t.get("recovered")] == [held["task_id"]]
        later = [t for t in tasks if t.get("claimed", 0) > killed_at and t.get("ok")]
        assert "train.personalize" in {t["type"] for t in later}
        node = _latest(run_dir, f"supernode-{victim.split('-')[1]}")
        personal = {c for c in node["client_ids"] if not c.startswith("A-")}
        assert personal <= {e["client_id"] for e in run.events("client")}
    finally:
        if proc.poll() is None:
            proc.kill()
        _assert_nothing_left(run_dir)


def test_joined_supernode_serves_and_ctrl_c_stops_both_machines(tmp_path: Path) -> None:
    """Two "machines" on one host: the head runs the SuperLink and 2 SuperNodes for shard 0/2
    and waits for 3 nodes; a second launch joins 1 SuperNode for shard 1/2 over TLS with the
    head's CA. Once the joined node has answered the handshake and phase 1 is under way,
    SIGINT (Ctrl-C) to each launcher: both exit 130 and leave nothing running."""
    head_dir, join_dir = tmp_path / "head", tmp_path / "join"
    head_args = ["--phase", "source", "--shard", "0/2", "--wait-for-nodes", "3"]
    # Enough rounds that phase 1 is still running when Ctrl-C comes, however fast or loaded
    # the machine: with the reduced 2 rounds a loaded CI run once finished first (exit 0).
    long_phase1 = {"phase1.rounds": "50"}

    def ignore_sigint() -> None:  # as a background job of a script inherits: must not matter
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    head = subprocess.Popen(
        _command(head_dir, *head_args, supernodes=2, **long_phase1),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=ignore_sigint,
    )
    joined: subprocess.Popen | None = None
    node_logs = [head_dir / "logs" / f"supernode-{k}.log" for k in range(2)]
    try:
        _wait_until(
            lambda: (
                (head_dir / "launch" / "processes.json").is_file()
                and len(_processes(head_dir, "supernode")) == 2
            ),
            300,
            "the head's SuperLink and SuperNodes",
            head,
        )
        port = _processes(head_dir)[0]["port"]
        ca = head_dir / "certs" / "ca.pem"
        join_args = ["--join", f"127.0.0.1:{port}", "--ca-cert", str(ca), "--shard", "1/2"]
        joined = subprocess.Popen(
            _command(join_dir, *join_args, supernodes=1, **long_phase1),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            preexec_fn=ignore_sigint,
        )
        join_log = join_dir / "logs" / "supernode-0.log"
        _wait_until(
            lambda: join_log.is_file() and "Sending: query message" in join_log.read_text(),
            600,
            "the joined SuperNode to answer the handshake",
            joined,
        )
        _wait_until(
            lambda: any(_train_messages(log) for log in [*node_logs, join_log]),
            600,
            "phase 1 to send a train message",
            head,
        )
        served = {c for p in _processes(head_dir, "supernode") for c in p["client_ids"]}
        served_there = set(_processes(join_dir, "supernode")[0]["client_ids"])
        assert [p["name"] for p in _processes(join_dir)] == ["supernode-0", "worker-0"]
        manifest = json.loads((head_dir / "data" / "manifest.json").read_text())["clients"]
        assert served | served_there == {c["client_id"] for c in manifest}
        assert not served & served_there
        for proc in (head, joined):
            proc.send_signal(signal.SIGINT)
        for proc in (head, joined):
            output, _ = proc.communicate(timeout=120)
            assert proc.returncode == 130, output[-3000:]
            assert "stopped by SIGINT: every process it started was stopped" in output
        assert all(p["exit_code"] is not None for p in _processes(head_dir))
        assert all(p["exit_code"] is not None for p in _processes(join_dir))
    finally:
        for proc in (head, joined):
            if proc is not None and proc.poll() is None:
                proc.kill()
        _assert_nothing_left(head_dir)
        _assert_nothing_left(join_dir)


def test_authenticated_node_connects_then_missing_nodes_stop_everything(tmp_path: Path) -> None:
    """--node-auth: the registered SuperNode comes online (1 of 2); the second never does, so
    launch fails with one line after the startup timeout and stops what it started."""
    cfg = tiny_config()
    options = LaunchOptions(supernodes=1, node_auth=True, wait_for_nodes=2, startup_timeout_s=45)
    run_dir = tmp_path / "run"
    try:
        with pytest.raises(FedpktError, match=r"only 1 of 2 SuperNodes connected"):
            launch(cfg, options, run_dir)
        procs = _processes(run_dir)
        assert "--enable-supernode-auth" in procs[0]["argv"]
        assert "--auth-supernode-private-key" in procs[1]["argv"]
        assert all(p["exit_code"] is not None for p in procs)
    finally:
        _assert_nothing_left(run_dir)
