"""Benchmark: what the egress log costs per phase-1 reply, with and without payload copies.

One phase-1 reply on the embedded default backbone (W_i with exactly θ_0's arrays, float32, as
``clients/app.py`` builds it, plus ``num-examples`` and ``train-loss``) is sent through the
real egress mod (``clients/egress.py``) of a node holding the default synthetic data, once
keeping its bytes (``privacy.record_payloads = "all"``) and once not (``"none"``: the mod's own
contract check and content scan stand in for them). The figures are the bytes the mod wrote:
the log line, and the payload file. The projection for the paper's setting (gpt2-medium, 25.7 M
trainable parameters: 103 MB per reply; 2,000 rounds × 4 clients = 8,000 replies) takes the
measured line size (θ has the same five arrays there, so the line is the same size) and the
paper's payload size. It also times the mod's own check on one reply of the paper's size
(103 MB of float32; its names and shapes are not θ's, which only adds contract findings).
Prints one JSON object.

    .venv/bin/python bench/audit_trail.py [--no-paper-scan]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from clients.egress import SAMPLED_ROUND, EgressTarget, PayloadMode, make_egress_mod
from fedpkt.config import config_to_toml, load_config
from fedpkt.data.partition import load_manifest, prepare_partitions
from fedpkt.privacy.audit import load_model_config
from fedpkt.source import initial_theta
from wire import to_array_record

PAPER_REPLY_BYTES = 103_000_000  # 25.7 M float32 parameters and their .npy headers
PAPER_REPLIES = 2_000 * 4  # rounds × clients per round
PAPER_CLIENTS_PER_ROUND = 4


def phase1_reply(theta: dict[str, np.ndarray], seed: int = 0) -> RecordDict:
    """A phase-1 reply as the client sends it: W_i (θ's names, shapes, float32) and metrics."""
    rng = np.random.default_rng(seed)
    w_i = {k: (v + rng.normal(0, 1e-3, v.shape)).astype(np.float32) for k, v in theta.items()}
    metrics = MetricRecord({"num-examples": 42, "train-loss": 3.125})
    return RecordDict({"arrays": to_array_record(w_i), "metrics": metrics})


def send(
    egress: Path, payloads: PayloadMode, data_root: Path, config: dict[str, Any], reply: RecordDict
) -> dict[str, Any]:
    """One request through the egress mod; the bytes it wrote and the seconds it took."""
    mod = make_egress_mod(lambda _: EgressTarget(egress, payloads, data_root))
    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    request = Message(
        RecordDict({"config": ConfigRecord(config)}), dst_node_id=7, message_type="train"
    )
    started = time.perf_counter()
    mod(request, context, lambda msg, _: Message(reply, reply_to=msg))
    seconds = time.perf_counter() - started
    line_bytes = (egress / "7.jsonl").stat().st_size
    payload_dir = egress / "payloads"
    payload_bytes = (
        sum(p.stat().st_size for p in payload_dir.iterdir()) if payload_dir.is_dir() else 0
    )
    line = json.loads((egress / "7.jsonl").read_text())
    return {
        "line_bytes": line_bytes,
        "payload_bytes": payload_bytes,
        "total_bytes": line_bytes + payload_bytes,
        "reply_bytes": line["bytes"],
        "mod_seconds": round(seconds, 3),
        "client_check_findings": len(line["client_check"]["contract"])
        + sum(len(h) for h in line["client_check"]["hits"].values()),
    }


def paper_sized_reply(seed: int = 0) -> RecordDict:
    """One reply of the paper's size: 25.7 M float32 values in one array, and the metrics."""
    values = np.random.default_rng(seed).standard_normal(25_750_000, dtype=np.float32)
    metrics = MetricRecord({"num-examples": 42, "train-loss": 3.125})
    return RecordDict({"arrays": to_array_record({"w": values}), "metrics": metrics})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-paper-scan", action="store_true", help="skip the 103 MB timing")
    args = parser.parse_args()
    for attr, value in (("run_id", 1), ("node_id", 7), ("task_id", 1)):
        setattr(TaskIdentity, attr, value)  # replies are stamped with the running task
    cfg = load_config("embedded")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        prepare_partitions(root / "data", cfg.data, cfg.seed)
        client = next(
            e["client_id"] for e in load_manifest(root / "data")["clients"] if e["part"] == "A"
        )
        theta, _ = initial_theta(cfg, load_model_config(cfg))
        config = {
            "client-id": client,
            "phase": "source",
            "server-round": 2,
            "fedpkt-config": config_to_toml(cfg),
        }
        reply = phase1_reply(theta)
        send(root / "warm", "none", root / "data", config, reply)  # tokenizer, θ_0, tables
        kept = send(root / "all", "all", root / "data", config, reply)
        lean = send(root / "none", "none", root / "data", config, reply)
        paper = None
        if not args.no_paper_scan:
            big = send(root / "paper", "none", root / "data", config, paper_sized_reply())
            paper = {k: big[k] for k in ("reply_bytes", "line_bytes", "mod_seconds")}
    line = lean["line_bytes"]
    gb = 1e9
    projection = {
        "all_gb": round(PAPER_REPLIES * (PAPER_REPLY_BYTES + kept["line_bytes"]) / gb, 1),
        "sampled_gb": round(
            (PAPER_REPLIES * line + PAPER_CLIENTS_PER_ROUND * PAPER_REPLY_BYTES) / gb, 2
        ),
        "none_gb": round(PAPER_REPLIES * line / gb, 3),
        "assumes": f"{PAPER_REPLIES} replies of {PAPER_REPLY_BYTES} bytes; a line of {line} "
        f"bytes each (measured); 'sampled' keeps the {PAPER_CLIENTS_PER_ROUND} replies of round "
        f"{SAMPLED_ROUND}",
    }
    print(
        json.dumps(
            {
                "backbone": f"{cfg.backbone.name}/{cfg.backbone.embedded_size}",
                "theta_arrays": {k: list(v.shape) for k, v in theta.items()},
                "phase1_reply": {"with_payload_copy": kept, "without_payload_copy": lean},
                "paper_projection": projection,
                "paper_sized_reply_checked_by_the_mod": paper,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
