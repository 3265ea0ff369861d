"""The GPU path: CUDA placement, a bf16 backbone, `fedpkt launch --gpus` on real processes, and
`fedpkt simulate --gpus-per-client` (Ray GPU shares).

Skipped where torch sees no CUDA device (CI has none). They were run on a lent GPU machine;
bench/RESULTS.md ("GPU") records what they printed there.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedpkt.config import DataConfig, FedpktConfig
from fedpkt.data.partition import load_client, load_manifest, prepare_partitions
from fedpkt.eval.consistency import OracleScorer
from fedpkt.local import LocalClient, new_prefix
from fedpkt.model.backbone import Backbone, load_backbone
from fedpkt.train.loop import evaluate_loss
from tests.conftest import TINY, cli_sets
from tests.test_launch import launch_processes
from tests.test_launch_e2e import ROOT, _command, _processes

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]

CFG = FedpktConfig()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gpu") / "data"
    prepare_partitions(root, DataConfig(scale="tiny"), CFG.seed)
    return root


def _persona(data_root: Path, backbone: Backbone) -> LocalClient:
    """The Part B persona with the most training dialogues, on ``backbone``'s device."""
    ids = [c["client_id"] for c in load_manifest(data_root)["clients"] if c["part"] == "B"]
    best = max(ids, key=lambda cid: load_client(data_root, cid).num_dialogues("train"))
    return LocalClient.open(data_root, best, backbone, CFG)


def _tiny(device: str, dtype: str = "float32") -> Backbone:
    return load_backbone("embedded", embedded_size="tiny", device=device, dtype=dtype)


def test_cuda_float32_matches_cpu_in_loss_and_replies(data_root: Path) -> None:
    """Same prefix, same data: the loss agrees to 1e-4 and beam search picks the same replies
    (fp32 matmuls without TF32), so a GPU run reproduces a CPU run's numbers."""
    results = {}
    for device in ("cpu", "cuda"):
        backbone = _tiny(device)
        client = _persona(data_root, backbone)
        prefix = new_prefix(backbone, CFG.prefix, seed=3)
        assert next(prefix.parameters()).device.type == device
        loss = evaluate_loss(backbone.model, prefix, client.encoded["test"], 8)
        replies = client.generate(prefix.fold(), client.examples["test"], CFG.generation)
        results[device] = (loss, replies)
    (cpu_loss, cpu_replies), (gpu_loss, gpu_replies) = results["cpu"], results["cuda"]
    assert abs(cpu_loss - gpu_loss) < 1e-4, (cpu_loss, gpu_loss)
    same = sum(a == b for a, b in zip(cpu_replies, gpu_replies, strict=True))
    print(f"cpu loss {cpu_loss:.6f} cuda loss {gpu_loss:.6f}; {same}/{len(cpu_replies)} same")
    assert same >= 0.9 * len(cpu_replies)


def test_bf16_backbone_personalizes_a_float32_prefix_on_cuda(data_root: Path) -> None:
    """The whole phase-2 job on a bf16 backbone: the prefix stays float32 on the GPU (AdamW
    updates would underflow in bf16), training lowers the test loss, metrics are finite."""
    backbone = _tiny("cuda", "bfloat16")
    assert next(backbone.model.parameters()).dtype == torch.bfloat16
    client = _persona(data_root, backbone)
    result = client.personalize(None, seed=0, scorer=OracleScorer())
    metrics = result.metrics
    print({k: round(v, 4) for k, v in metrics.items()})
    assert result.folded.dtype == torch.float32
    assert result.folded.device.type == "cuda"
    assert all(v == v for v in metrics.values())  # no NaN
    assert metrics["test_loss"] < metrics["init_test_loss"]
    assert result.generated and all(isinstance(r, str) for r in result.generated)


@pytest.mark.e2e
def test_launch_pins_each_supernode_to_its_gpu(tmp_path: Path) -> None:
    """`fedpkt launch --gpus 0` on real processes: both SuperNodes and their workers get
    CUDA_VISIBLE_DEVICES=0, and each worker loaded its backbone on cuda (its log says so)."""
    run_dir = tmp_path / "run"
    cmd = _command(run_dir, "--gpus", "0", supernodes=2, **{"backbone.dtype": "'bfloat16'"})
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=840, check=False)
    try:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        procs = _processes(run_dir)
        assert [p["gpu"] for p in procs[1:]] == [0, 0, 0, 0]  # supernode-0, worker-0, ...
        rows = json.loads((run_dir / "results.json").read_text())["rows"]
        assert rows
        for k in range(2):
            text = (run_dir / "logs" / f"worker-{k}.log").read_text(errors="replace")
            placed = [line for line in text.splitlines() if "backbone on" in line]
            print(f"worker-{k}: {len(placed)} client loads, e.g. {placed[:1]}")
            assert placed, f"worker-{k} logged no backbone placement"
            assert all("backbone on cuda" in line and "bfloat16" in line for line in placed)
    finally:
        left = launch_processes(run_dir)
        for proc in left:
            proc.kill()
        assert left == []


@pytest.mark.e2e
def test_simulate_gpu_share_puts_two_workers_on_one_gpu(tmp_path: Path) -> None:
    """`fedpkt simulate --gpus-per-client 0.5` with one GPU visible: Ray fits min(8 CPUs / 1,
    1 GPU / 0.5) = 2 ClientApp workers, both on GPU 0, and every client's backbone is on cuda
    (the run log's per-client lines say so, from two worker processes)."""
    run_dir = tmp_path / "run"
    sets = cli_sets({**TINY, "phase1.rounds": 1, "phase2.max_clients": 2})
    cmd = [sys.executable, "-m", "cli.main", "simulate", "--gpus-per-client", "0.5"]
    cmd += ["--run-dir", str(run_dir), *sets]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0"}
    done = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert json.loads((run_dir / "results.json").read_text())["rows"]
    log = (run_dir / "logs" / "simulate.log").read_text(errors="replace")
    assert "1 GPU); each client worker gets 1 CPU and 0.5 GPU: 2 worker(s)" in log, log[:2000]
    placed = [line for line in log.splitlines() if "backbone on" in line]
    print(f"{len(placed)} client loads, e.g. {placed[:1]}")
    assert placed
    assert all("backbone on cuda" in line and "CUDA_VISIBLE_DEVICES='0'" in line for line in placed)
    workers = {re.search(r" pid (\d+): ", line).group(1) for line in placed}
    assert len(workers) == 2, workers
