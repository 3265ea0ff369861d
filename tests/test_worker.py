"""The launch workers without a federation: version pin, held tasks, app origin, restarts.

The workers' Flower protocol itself is checked end to end, on real processes, in
test_launch_e2e.py (every launch test runs its messages through them).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from flwr.app import Error, Message, RecordDict
from flwr.app.message import make_message
from flwr.app.metadata import Metadata

from sim.flower_pin import FLOWER_MINOR, flower_version_problem
from sim.processes import ProcessSet
from sim.runtime_tasks import Claim, request_from_metadata, request_metadata_text
from sim.supernode import CappedSleep
from sim.worker import (
    Worker,
    clear_held,
    cuda_broken,
    packages_outside,
    read_held,
    write_held,
)
from sim.worker_pool import QUICK_DEATHS, WorkerPool, WorkerSlot, worker_name


# -- the Flower pin -------------------------------------------------------------------------------
def test_only_the_pinned_flower_minor_is_accepted() -> None:
    assert flower_version_problem(f"{FLOWER_MINOR}.0") is None
    assert flower_version_problem(f"{FLOWER_MINOR}.7") is None
    for other in ("1.43.0", "1.41.2", "2.42.0", ""):
        problem = flower_version_problem(other)
        assert problem is not None and "\n" not in problem
        assert f"needs Flower {FLOWER_MINOR}.x" in problem
        assert f"found {other or 'no flwr'}" in problem


def test_installed_flower_is_the_pinned_one() -> None:
    """This environment must satisfy the pin the launcher checks (pyproject: <1.43)."""
    assert flower_version_problem() is None


# -- the held-task record -------------------------------------------------------------------------
def test_held_task_record_is_private_and_cleared(tmp_path: Path) -> None:
    path = tmp_path / "workers" / "worker-0.json"
    write_held(path, {"stage": "claimed", "token": "secret", "task_id": 7})
    assert path.stat().st_mode & 0o777 == 0o600  # it holds the task's token
    assert read_held(path) == {"stage": "claimed", "token": "secret", "task_id": 7}
    clear_held(path)
    assert read_held(path) is None
    clear_held(path)  # twice is fine


def test_a_request_can_be_answered_from_its_recorded_metadata() -> None:
    """What a restarted worker needs to answer its predecessor's request: the metadata alone."""
    metadata = Metadata(
        run_id=5,
        message_id="abc123",
        src_node_id=1,
        dst_node_id=42,
        reply_to_message_id="",
        group_id="3",
        created_at=1_700_000_000.25,
        ttl=600.0,
        message_type="train",
    )
    request = make_message(metadata=metadata, content=RecordDict())
    rebuilt = request_from_metadata(request_metadata_text(request))
    assert rebuilt.metadata.message_id == "abc123"
    assert rebuilt.metadata.dst_node_id == 42
    assert rebuilt.metadata.created_at == 1_700_000_000.25
    reply = Message(Error(code=8, reason="worker died"), reply_to=rebuilt)
    assert reply.metadata.reply_to_message_id == "abc123"
    assert reply.metadata.dst_node_id == 1 and reply.metadata.src_node_id == 42


# -- what a worker refuses ------------------------------------------------------------------------
def test_app_packages_imported_outside_the_fab_are_named(tmp_path: Path) -> None:
    """The FAB holds clients/, fedpkt/ and sim/: fedpkt imported from a source tree is
    reported; clients from the FAB is fine; sim (the worker's own package) is exempt."""
    fab = tmp_path / "fab"
    for name in ("clients", "fedpkt", "sim"):
        (fab / name).mkdir(parents=True)
        (fab / name / "__init__.py").write_text("")
    modules = {
        "clients": SimpleNamespace(__file__=str(fab / "clients" / "__init__.py")),
        "fedpkt": SimpleNamespace(__file__="/src/fedpkt/__init__.py"),
        "sim": SimpleNamespace(__file__="/src/sim/__init__.py"),
    }
    assert packages_outside(fab, modules) == {"fedpkt": "/src/fedpkt/__init__.py"}
    del modules["fedpkt"]
    assert packages_outside(fab, modules) == {}


class Claims:
    """The claiming side of a SuperNode with the given pending tasks."""

    address = "127.0.0.1:0"

    def __init__(self, *claims: Claim) -> None:
        self.pending = list(claims)

    def claim(self) -> Claim | None:
        return self.pending.pop(0) if self.pending else None


class Exec(Exception):
    """Raised instead of os.execv replacing the test's interpreter."""


def test_a_task_of_another_app_goes_to_a_fresh_interpreter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An interpreter bound to run 1 / FAB aaa claims a task of run 2 / FAB bbb: it records the
    task as handed over and re-executes itself (same pid); the fresh interpreter runs that
    task first. A task of its own run it runs itself."""
    state, timings = tmp_path / "worker-0.json", tmp_path / "worker-0.tasks.jsonl"
    execs: list[list[str]] = []

    def execv(path: str, argv: list[str]) -> None:
        execs.append([path, *argv])
        raise Exec

    monkeypatch.setattr(os, "execv", execv)
    foreign = Claim("token-2", 9, 2, "bbb")
    worker = Worker(Claims(foreign), state, timings, 0.01)  # type: ignore[arg-type]
    worker.bound = (1, "aaa")
    with pytest.raises(Exec):
        worker.serve_one()
    assert execs == [[sys.executable, sys.executable, *sys.orig_argv[1:]]]
    assert read_held(state) == {
        "stage": "handover", "token": "token-2", "task_id": 9, "run_id": 2, "fab_hash": "bbb"
    }  # fmt: skip

    fresh = Worker(Claims(), state, timings, 0.01)  # type: ignore[arg-type]
    ran: list[Claim] = []
    monkeypatch.setattr(fresh, "run_task", ran.append)
    assert fresh.recover("unknown") is True
    assert ran == [foreign]

    own = Claim("token-3", 10, 2, "bbb")
    fresh.bound = (2, "bbb")
    fresh.tasks = Claims(own)  # type: ignore[assignment]
    assert fresh.serve_one() is True
    assert ran == [foreign, own]
    assert fresh.serve_one() is False  # nothing pending


def test_an_app_that_failed_to_load_is_not_retried_in_the_same_interpreter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "execv", lambda path, argv: (_ for _ in ()).throw(Exec()))
    worker = Worker(Claims(Claim("t", 1, 1, "aaa")), tmp_path / "w.json", tmp_path / "t", 0.01)  # type: ignore[arg-type]
    worker.bound, worker.stale = (1, "aaa"), True  # half-imported modules may linger
    with pytest.raises(Exec):
        worker.serve_one()


def test_cuda_errors_retire_the_interpreter() -> None:
    assert cuda_broken(RuntimeError("CUDA error: device-side assert triggered"))
    assert cuda_broken(type("OutOfMemoryError", (RuntimeError,), {})("out of memory"))
    assert not cuda_broken(ValueError("client 'A-0001' has no data"))


def test_supernode_sleeps_are_capped() -> None:
    """Flower's SuperNode sleeps 3 s when idle: with a 0.05 s cap it sleeps 0.05 s."""
    capped = CappedSleep(0.05)
    started = time.monotonic()
    capped.sleep(3)
    assert time.monotonic() - started < 1.0
    assert capped.monotonic is time.monotonic  # everything else is the time module


# -- restarts -------------------------------------------------------------------------------------
def _wait(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_worker_names_follow_their_supernode() -> None:
    assert worker_name("supernode-0") == "worker-0"
    assert worker_name("supernode-12") == "worker-12"


def test_a_worker_that_keeps_dying_is_restarted_then_retired_with_its_node(
    tmp_path: Path,
) -> None:
    """A worker exiting at once (code 3) is started again with ``--predecessor-exit 3``; after
    QUICK_DEATHS quick deaths it is not, and its SuperNode is stopped so the run goes on
    without that node's clients."""
    processes = ProcessSet(tmp_path / "processes.json")
    env = dict(os.environ)
    node = processes.start(
        "supernode-0", [sys.executable, "-c", "import time; time.sleep(60)"], env, tmp_path / "n"
    )
    said: list[str] = []
    events: list[dict] = []
    pool = WorkerPool(processes, tmp_path, said.append, events.append)
    argv = [sys.executable, "-c", "raise SystemExit(3)"]
    pool.slots.append(WorkerSlot("worker-0", node, argv, env, tmp_path / "w.log", {}))
    processes.start("worker-0", argv, env, tmp_path / "w.log", restart=0)
    try:
        for restart in range(1, QUICK_DEATHS):
            _wait(lambda: not processes.get("worker-0").running())
            pool.check()
            latest = processes.get("worker-0")
            assert latest.info["restart"] == restart
            assert latest.argv[-2:] == ["--predecessor-exit", "3"]
        _wait(lambda: not processes.get("worker-0").running())
        pool.check()
        assert not node.running()  # retired with its SuperNode
        assert [e["exit_code"] for e in events] == [3] * QUICK_DEATHS
        assert f"exited (code 3) {QUICK_DEATHS} times" in said[-1]
        pool.check()  # nothing more to do
        assert len([s for s in processes.started if s.name == "worker-0"]) == QUICK_DEATHS
    finally:
        processes.stop(grace=2)


def test_the_worker_of_a_dead_supernode_is_stopped_not_restarted(tmp_path: Path) -> None:
    processes = ProcessSet(tmp_path / "processes.json")
    env = dict(os.environ)
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    node = processes.start("supernode-0", sleeper, env, tmp_path / "n")
    pool = WorkerPool(processes, tmp_path, lambda text: None, lambda event: None)
    pool.slots.append(WorkerSlot("worker-0", node, sleeper, env, tmp_path / "w.log", {}))
    worker = processes.start("worker-0", sleeper, env, tmp_path / "w.log", restart=0)
    try:
        processes.stop_one(node)
        pool.check()
        assert not worker.running()
        pool.check()
        assert len([s for s in processes.started if s.name == "worker-0"]) == 1
    finally:
        processes.stop(grace=2)
