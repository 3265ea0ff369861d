"""``fedpkt launch`` against ``fedpkt simulate`` on the reduced e2e run; prints JSON.

    python bench/launch.py [--out DIR] [--supernodes 3] [--node-poll 0.2] [--no-simulate]

Runs the real CLI twice with the configuration of ``tests/test_launch_e2e.py`` (tiny embedded
backbone and corpus, 2 phase-1 rounds of 3 clients, phase 2 for the 6 Part B/C personas, same
seed): ``fedpkt launch --supernodes 3`` (real SuperLink, SuperNodes and workers on this
machine, TLS on) and ``fedpkt simulate``. For each it reports the wall time of the command and
of its stages (from the launcher's own lines, timed as they are printed, and the run's events
in ``metrics.jsonl``): start-up up to the first phase-1 round, each round, phase 1, phase 2,
and what is left after the run's ``done`` (report, shutdown).

**Per-message overhead** (launch only) is the time an exchange took at the ServerApp minus the
client compute on its critical path. Every worker logs, per message, the request's
``created_at`` (the ServerApp's clock: when it built the message), when the worker claimed it,
when its input arrived, the ClientApp call alone (``compute_s``) and when the reply was handed
to the SuperNode (``logs/worker-K.tasks.jsonl``). An exchange is the messages of one type
the ServerApp built together; it starts when they were built and ends when the next
exchange's messages were (train -> its evaluation), else at the round's event (after an
evaluation), and for phase 2 at the last persona's event. A node works on its messages of an
exchange one after another, so the critical path is the node with the most compute, and::

    overhead per message = (exchange wall - critical node's compute) / its number of messages

It covers everything a message costs beyond the ClientApp call: ServerApp -> SuperLink ->
SuperNode -> worker and back, object transfers, TLS, polling and (de)serialisation. The
node-side parts are reported beside it (waiting to be claimed, receiving the input, handing
the reply over). The handshake (first message: the worker loads the app from the FAB) is
reported apart, as ``handshake``.

Goals (issue 14): overhead <= 1 s per message; launch wall <= 1.5x simulate wall.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

REDUCED = {  # tests/test_launch_e2e.py's REDUCED
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
MARKS = {  # launcher lines -> stage names
    "SuperLink listening": "superlink_listening",
    "SuperNodes online": "supernodes_online",
    "submitted run": "submitted",
    " finished:": "run_finished",
    "processes": "stopped",
}


def run_cli(command: list[str]) -> tuple[float, float, dict[str, float], str]:
    """Run the CLI; (start, end, first time each MARKS line was printed, output)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
    started = time.time()
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    seen: dict[str, float] = {}
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        for text, name in MARKS.items():
            if text in line and name not in seen:
                seen[name] = time.time()
    code = proc.wait()
    ended = time.time()
    output = "".join(lines)
    if code != 0:
        raise SystemExit(f"{' '.join(command[:5])} ... exited {code}:\n{output[-3000:]}")
    return started, ended, seen, output


def events(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def phases(run_dir: Path, started: float, ended: float) -> dict[str, Any]:
    """Wall seconds of each stage of a run, from its events (server clock = this machine's)."""
    evs = events(run_dir)
    rounds = [e for e in evs if e["event"] == "round"]
    p2 = [e for e in evs if e["event"] == "phase2_start"]
    done = next(e for e in evs if e["event"] == "done")
    first_round_start = rounds[0]["time"] - rounds[0]["seconds"]
    out: dict[str, Any] = {
        "wall_s": ended - started,
        "startup_s": first_round_start - started,
        "rounds_s": [r["seconds"] for r in rounds],
        "phase1_s": rounds[-1]["time"] - first_round_start,
        "server_side_s": done["seconds"],
        "after_done_s": ended - done["time"],
    }
    if p2:
        out["phase2_s"] = done["time"] - p2[0]["time"]
    return out


def worker_tasks(run_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted((run_dir / "logs").glob("worker-*.tasks.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if "created" in row and "compute_s" in row:
                rows.append({**row, "worker": path.name.split(".")[0]})
    return rows


def group_exchanges(tasks: list[dict[str, Any]]) -> list[tuple[str, int, list[dict[str, Any]]]]:
    """(type, round, tasks) per exchange: messages of one type built together (within 1 s).

    Rounds are counted from the train exchanges (an evaluation belongs to the round of the
    train exchange before it); fedpkt leaves the messages' group id empty.
    """
    out: list[tuple[str, int, list[dict[str, Any]]]] = []
    round_no = 0
    for t in sorted(tasks, key=lambda t: t["created"]):
        last = out[-1] if out else None
        if last and last[0] == t["type"] and t["created"] - last[2][0]["created"] < 1.0:
            last[2].append(t)
            continue
        round_no += t["type"] == "train"
        out.append((t["type"], round_no, [t]))
    return out


def exchanges(run_dir: Path) -> list[dict[str, Any]]:
    """Each exchange's wall, critical compute and overhead per message (see module doc)."""
    evs = events(run_dir)
    ordered = group_exchanges(worker_tasks(run_dir))
    rounds = {e["round"]: e["time"] for e in evs if e["event"] == "round"}
    persona_times = [e["time"] for e in evs if e["event"] in ("client", "client_failed")]
    out = []
    for index, (kind, round_no, items) in enumerate(ordered):
        start = min(t["created"] for t in items)
        following = ordered[index + 1] if index + 1 < len(ordered) else None
        if kind == "train.personalize":
            end = max(persona_times)
        elif kind in ("train", "evaluate"):  # a round ends with its evaluation (if any)
            evaluated = kind == "train" and following is not None and following[0] == "evaluate"
            end = min(t["created"] for t in following[2]) if evaluated else rounds[round_no]
        elif following is not None:
            end = min(t["created"] for t in following[2])
        else:
            continue
        per_node: dict[str, list[float]] = defaultdict(list)
        for t in items:
            per_node[t["worker"]].append(t["compute_s"])
        critical = max(per_node.values(), key=sum)
        wall = end - start
        out.append(
            {
                "type": kind,
                "round": round_no if kind in ("train", "evaluate") else None,
                "messages": len(items),
                "wall_s": wall,
                "critical_compute_s": sum(critical),
                "overhead_per_message_s": (wall - sum(critical)) / len(critical),
                "claim_wait_s": statistics.mean(t["claimed"] - t["created"] for t in items),
                "receive_s": statistics.mean(t["received"] - t["claimed"] for t in items),
                "hand_back_s": statistics.mean(
                    t["replied"] - t["received"] - t["compute_s"] for t in items
                ),
                "load_s": max(t.get("load_s", 0.0) for t in items),
            }
        )
    return out


def command(kind: str, run_dir: Path, supernodes: int, node_poll: float) -> list[str]:
    cmd = [sys.executable, "-m", "cli.main", kind, "--config", "embedded"]
    cmd += ["--run-dir", str(run_dir)]
    for key, value in REDUCED.items():
        cmd += ["--set", f"{key}={value}"]
    if kind == "launch":
        cmd += ["--supernodes", str(supernodes), "--node-poll", str(node_poll)]
    return cmd


def import_seconds(repeats: int = 3) -> dict[str, list[float]]:
    """Wall and CPU (user + system) seconds of ``import clients.app`` in fresh interpreters
    (this source tree). CPU time moves less than wall time on a shared machine."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out: dict[str, list[float]] = {"wall": [], "cpu": []}
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import clients.app"], cwd=ROOT, env=env, check=True)
        out["wall"].append(time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        out["cpu"].append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return out


def machine() -> dict[str, Any]:
    import flwr
    import torch

    cpu = ""
    with open("/proc/cpuinfo", encoding="utf-8") as handle:
        cpu = next((line.split(":", 1)[1].strip() for line in handle if "model name" in line), "")
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "gpu": torch.cuda.is_available(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "flwr": flwr.__version__,
        "load_average": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="where the runs go (default tmp)")
    parser.add_argument("--supernodes", type=int, default=3)
    parser.add_argument("--node-poll", type=float, default=0.2)
    parser.add_argument("--no-simulate", action="store_true")
    parser.add_argument("--import-repeats", type=int, default=3)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-launch-"))
    report: dict[str, Any] = {"machine": machine(), "config": REDUCED, "out": str(out)}
    report["import_clients_app_s"] = import_seconds(args.import_repeats)

    run_dir = out / "launch"
    started, ended, marks, _ = run_cli(command("launch", run_dir, args.supernodes, args.node_poll))
    launch = phases(run_dir, started, ended)
    launch["stages_s"] = {name: at - started for name, at in sorted(marks.items(), key=str)}
    launch["node_poll_s"] = args.node_poll
    rows = json.loads((run_dir / "launch" / "processes.json").read_text())["processes"]
    launch["cpu_s"] = {row["name"]: row.get("cpu_s") for row in rows}  # at the stop
    ex = exchanges(run_dir)
    handshake = [e for e in ex if e["type"] == "query"]
    timed = [e for e in ex if e["type"] != "query"]
    launch["handshake"] = handshake
    launch["exchanges"] = timed
    per_message = [e["overhead_per_message_s"] for e in timed]
    launch["overhead_per_message_s"] = {
        "mean": statistics.mean(per_message),
        "median": statistics.median(per_message),
        "max": max(per_message),
    }
    report["launch"] = launch
    if not args.no_simulate:
        run_dir = out / "simulate"
        started, ended, _, _ = run_cli(command("simulate", run_dir, 0, 0))
        report["simulate"] = phases(run_dir, started, ended)
        report["launch_over_simulate_wall"] = launch["wall_s"] / report["simulate"]["wall_s"]
    report["goals"] = {
        "overhead_per_message_le_1s": launch["overhead_per_message_s"]["mean"] <= 1.0,
        "launch_wall_le_1.5x_simulate": (
            report.get("launch_over_simulate_wall", float("inf")) <= 1.5
        ),
    }
    report["machine"]["load_average_after"] = os.getloadavg()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
