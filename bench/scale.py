"""Benchmark: the paper-scale run (1,293 personas) end to end, and where its time goes.

Runs ``fedpkt simulate --set data.scale='paper'`` (plus any ``--set``) as a real subprocess in
its own session and samples it every 0.5 s with psutil:

- wall time, and the phase-1 / phase-2 shares (from ``metrics.jsonl``: the run's start to the
  ``phase2_start`` event, then to ``done``); personas per hour in phase 2;
- the server (driver) process's CPU share, over the whole run and over phase 2 alone (Flower's
  Simulation Engine polls every node for every message in flight from this process);
- the peak resident memory of the driver and all its descendants together (Ray's GCS, raylet
  and ClientApp workers);
- the audit trail: bytes under ``egress/`` and per phase-1 reply.

Prints one JSON object. Takes minutes on 2 cores.

    .venv/bin/python bench/scale.py [--set section.key=value ...] [--run-dir D]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += p.memory_info().rss
    return total


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def _events(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _phase1_replies(egress: Path) -> int:
    count = 0
    for log in egress.glob("*.jsonl"):
        for line in log.read_text().splitlines():
            entry = json.loads(line)
            if entry.get("phase") == "source" and entry.get("message_type") == "train":
                count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--run-dir", type=Path, default=None)
    args = parser.parse_args()
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="fedpkt-scale-")) / "run"
    sets = ["data.scale='paper'", *args.sets]
    cmd = [sys.executable, "-m", "cli.main", "simulate", "--run-dir", str(run_dir)]
    for item in sets:
        cmd += ["--set", item]
    log = run_dir.parent / "scale-console.log"
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with log.open("w") as out:
        child = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=out, start_new_session=True)
    proc = psutil.Process(child.pid)
    peak_rss = peak_driver_rss = 0
    cpu_at_phase2: float | None = None
    cpu_end = 0.0
    try:
        while child.poll() is None:
            try:
                peak_rss = max(peak_rss, _tree_rss(proc))
                peak_driver_rss = max(peak_driver_rss, proc.memory_info().rss)
                cpu_end = _cpu(proc)
            except psutil.NoSuchProcess:
                break
            if cpu_at_phase2 is None and any(
                e.get("event") == "phase2_start" for e in _events(run_dir)
            ):
                cpu_at_phase2 = cpu_end
            time.sleep(0.5)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGTERM)
        child.wait()
    wall = time.time() - started
    events = _events(run_dir)
    phase2_at = next((e["time"] for e in events if e.get("event") == "phase2_start"), None)
    done_at = next((e["time"] for e in events if e.get("event") == "done"), None)
    personas = sum(1 for e in events if e.get("event") == "client")
    egress = run_dir / "egress"
    replies = _phase1_replies(egress) if egress.is_dir() else 0
    egress_bytes = _dir_bytes(egress) if egress.is_dir() else 0
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": " ".join(cmd[1:]),
        "exit_code": child.returncode,
        "wall_s": round(wall, 1),
        "phase1_s": round(phase2_at - started, 1) if phase2_at else None,
        "phase2_s": round(done_at - phase2_at, 1) if phase2_at and done_at else None,
        "personas": personas,
        "personas_per_hour": round(3600 * personas / (done_at - phase2_at), 1)
        if phase2_at and done_at
        else None,
        "server_cpu_share": round(cpu_end / wall, 3),
        "server_cpu_share_phase2": round((cpu_end - cpu_at_phase2) / (done_at - phase2_at), 3)
        if cpu_at_phase2 is not None and phase2_at and done_at
        else None,
        "peak_rss_all_processes_gib": round(peak_rss / 2**30, 2),
        "peak_rss_server_gib": round(peak_driver_rss / 2**30, 2),
        "egress_bytes": egress_bytes,
        "phase1_replies": replies,
        "egress_bytes_per_phase1_reply": round(egress_bytes / replies) if replies else None,
        "run_dir": str(run_dir),
        "console_log": str(log),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
