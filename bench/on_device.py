"""Benchmark: the client-side work of both phases on one device and dtype, side by side.

Runs the code a ClientApp runs (``LocalClient.source_step`` / ``personalize``), without Flower,
so the numbers are the on-device cost alone: phase-1 inner steps per second and one phase-2
job (train with early stopping, beam-5 generation, scoring) per persona. Each (device, dtype)
pair runs the same clients with the same seeds; on a GPU machine that is the CPU-vs-GPU and
fp32-vs-bf16 comparison recorded in bench/RESULTS.md. Prints one JSON object.

    .venv/bin/python bench/on_device.py [--devices cpu,cuda] [--dtypes float32,bfloat16]
        [--steps 5] [--personas 4] [--config embedded]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fedpkt.centralized import open_clients
from fedpkt.config import FedpktConfig, load_config
from fedpkt.data.partition import prepare_partitions
from fedpkt.eval.consistency import make_scorer
from fedpkt.model.backbone import clear_loaded_backbones, load_backbone
from fedpkt.source import initial_theta
from fedpkt.train.inner_loop import InnerSettings


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(cfg: FedpktConfig, data_root: Path, steps: int, personas: int) -> dict:
    """Phase-1 inner steps on Part A clients, then ``personas`` Part B phase-2 jobs."""
    backbone = load_backbone(
        cfg.backbone.name,
        embedded_size=cfg.backbone.embedded_size,
        embedded_recipe=cfg.backbone.embedded_recipe,
        device=cfg.backbone.device,
        dtype=cfg.backbone.dtype,
        progress=False,
    )
    device = backbone.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    theta, _ = initial_theta(cfg, backbone.model.config)
    part_a = list(open_clients(cfg, data_root, backbone, "A").values())[:steps]
    p1 = cfg.phase1
    _sync(device)
    started = time.perf_counter()
    for i, client in enumerate(part_a):
        client.source_step(theta, InnerSettings.for_phase1(p1, seed=i))
    _sync(device)
    phase1_s = time.perf_counter() - started

    scorer = make_scorer(cfg.eval)
    part_b = list(open_clients(cfg, data_root, backbone, "B").values())[:personas]
    rows = []
    for i, client in enumerate(part_b):
        _sync(device)
        result = client.personalize(theta, seed=i, scorer=scorer)
        _sync(device)
        rows.append(result.metrics)
    out = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": cfg.backbone.dtype,
        "phase1_clients": len(part_a),
        "phase1_inner_steps_per_s": round(len(part_a) * p1.inner_steps / phase1_s, 2),
        "phase1_seconds_per_client": round(phase1_s / max(len(part_a), 1), 3),
        "phase2_personas": len(rows),
        "phase2_seconds_per_persona": round(float(np.mean([r["seconds"] for r in rows])), 3),
        "phase2_epochs_mean": round(float(np.mean([r["epochs"] for r in rows])), 2),
        "phase2_f1_mean": round(float(np.mean([r["f1"] for r in rows])), 4),
        "phase2_test_loss_mean": round(float(np.mean([r["test_loss"] for r in rows])), 4),
    }
    if device.type == "cuda":
        out["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    clear_loaded_backbones()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", default="cpu,cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", default="float32")
    parser.add_argument("--steps", type=int, default=5, help="Part A clients' phase-1 steps")
    parser.add_argument("--personas", type=int, default=4, help="Part B phase-2 jobs")
    parser.add_argument("--config", default="embedded")
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        base = load_config(args.config)
        data_root = Path(tmp) / "data"
        prepare_partitions(data_root, base.data.model_copy(update={"canaries": 0}), 0)
        for device in args.devices.split(","):
            for dtype in args.dtypes.split(","):
                values = {"backbone.device": device, "backbone.dtype": dtype}
                cfg = load_config(args.config, values=values)
                runs.append(measure(cfg, data_root, args.steps, args.personas))
    info = {
        "benchmark": "on_device",
        "config": args.config,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "runs": runs,
    }
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
