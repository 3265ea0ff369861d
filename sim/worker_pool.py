"""The launcher's side of the ClientApp workers: one per SuperNode, restarted when it dies.

Each local SuperNode runs with ``--isolation process`` and gets one ``sim.worker`` process
beside it (its own process group, the SuperNode's ``FLWR_HOME`` and GPU), which serves all of
that SuperNode's messages. ``WorkerPool.check`` is called from the launcher's loops: a worker
that exited while its SuperNode lives is started again, with its predecessor's exit code, and
the new worker first answers the task the dead one held as failed (see ``sim.worker``). A worker
that keeps dying right after its start (``QUICK_DEATHS`` times within ``QUICK_S`` seconds of its
start) is not started again: its SuperNode is stopped too, and the run goes on without that
node's clients, as when a SuperNode dies. A worker whose SuperNode exited is stopped with it.

Files: ``logs/worker-K.log`` (everything the worker printed, restarts appended),
``logs/worker-K.tasks.jsonl`` (one timing line per task), ``launch/workers/worker-K.json`` (the
task a worker holds, while it holds one).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sim.launch_plan import NodePlan
from sim.processes import ProcessSet, Started, child_env

QUICK_S = 60.0
QUICK_DEATHS = 3


@dataclass
class WorkerSlot:
    """One SuperNode's worker: how to start it again, and how often it died young."""

    name: str
    node: Started
    argv: list[str]
    env: dict[str, str]
    log: Path
    info: dict[str, Any]
    quick_deaths: int = 0
    retired: bool = False


def worker_name(node_name: str) -> str:
    """``supernode-2`` -> ``worker-2``."""
    return "worker-" + node_name.rsplit("-", 1)[-1]


class WorkerPool:
    """Starts, watches and restarts the workers of this launcher's SuperNodes."""

    def __init__(
        self,
        processes: ProcessSet,
        root: Path,
        say: Callable[[str], None],
        on_event: Callable[[dict[str, Any]], None],
    ) -> None:
        self.processes = processes
        self.logs = root / "logs"
        self.state_dir = root / "launch" / "workers"
        self.say = say
        self.on_event = on_event
        self.slots: list[WorkerSlot] = []

    def start(
        self, plan: NodePlan, node: Started, runtime_port: int, flwr_home: Path, poll_s: float
    ) -> Started:
        name = worker_name(plan.name)
        argv = [sys.executable, "-m", "sim.worker", "--runtime", f"127.0.0.1:{runtime_port}"]
        argv += ["--supernode-pid", str(node.pid), "--poll", str(poll_s)]
        argv += ["--state", str(self.state_dir / f"{name}.json")]
        argv += ["--timings", str(self.logs / f"{name}.tasks.jsonl")]
        visible = "" if plan.gpu is None else str(plan.gpu)
        env = child_env({"FLWR_HOME": str(flwr_home), "CUDA_VISIBLE_DEVICES": visible})
        info = {"supernode": plan.name, "gpu": plan.gpu, "runtime_port": runtime_port}
        slot = WorkerSlot(name, node, argv, env, self.logs / f"{name}.log", info)
        self.slots.append(slot)
        return self.processes.start(name, argv, env, slot.log, **info, restart=0)

    def check(self) -> None:
        """Restart dead workers of living SuperNodes; stop workers of dead SuperNodes."""
        for slot in self.slots:
            if slot.retired:
                continue
            worker = self.processes.get(slot.name)
            if not slot.node.running():
                slot.retired = True
                if worker.running():
                    self.processes.stop_one(worker)
                continue
            if worker.running():
                continue
            self.restart(slot, worker)

    def restart(self, slot: WorkerSlot, dead: Started) -> None:
        code = dead.popen.returncode
        lived = time.monotonic() - dead.started_at
        slot.quick_deaths = slot.quick_deaths + 1 if lived < QUICK_S else 0
        self.processes.write_record()
        self.on_event({"event": "worker_exited", "name": slot.name, "exit_code": code})
        if slot.quick_deaths >= QUICK_DEATHS:
            slot.retired = True
            self.say(
                f"{slot.name} exited (code {code}) {slot.quick_deaths} times within "
                f"{QUICK_S:.0f} s of its start; stopping {slot.node.name} too: the run "
                f"goes on without its clients (log {slot.log})"
            )
            self.processes.stop_one(slot.node)
            return
        restarts = int(dead.info.get("restart", 0)) + 1
        argv = [*slot.argv, "--predecessor-exit", str(code)]
        self.processes.start(slot.name, argv, slot.env, slot.log, **slot.info, restart=restarts)
        self.say(
            f"{slot.name} exited (code {code}); started again (restart {restarts}), its "
            f"task answered as failed (log {slot.log})"
        )
