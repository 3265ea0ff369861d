"""Centralized (single-process) runs of the same client and server steps Flower runs.

The baselines and the one-code-path test use these loops: they call ``LocalClient`` for the
client side and ``SourceTrainer`` for the server side, exactly as the Flower client and
strategy do, with the same seeds and the same sampling. Only the transport differs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fedpkt.config import FedpktConfig
from fedpkt.data.partition import load_manifest
from fedpkt.local import LocalClient
from fedpkt.model.backbone import Backbone
from fedpkt.source import ClientUpdate, SourceTrainer, client_seed, initial_theta
from fedpkt.train.inner_loop import InnerSettings

Arrays = dict[str, np.ndarray]


def open_clients(
    cfg: FedpktConfig, data_root: str | Path, backbone: Backbone, part: str
) -> dict[str, LocalClient]:
    """Every client of one Part, each loaded from its own folder."""
    manifest = load_manifest(data_root)
    ids = sorted(e["client_id"] for e in manifest["clients"] if e["part"] == part)
    return {cid: LocalClient.open(data_root, cid, backbone, cfg) for cid in ids}


def train_source_centralized(
    cfg: FedpktConfig,
    clients: dict[str, LocalClient],
    backbone: Backbone,
    on_round: Callable[[dict[str, Any]], None] | None = None,
) -> Arrays:
    """Phase 1 without Flower: same θ_0, sampling, inner steps, seeds and outer step."""
    theta0, _ = initial_theta(cfg, backbone.model.config)
    counts = {cid: c.num_train_examples for cid, c in clients.items()}
    trainer = SourceTrainer(theta0, cfg.phase1, counts, cfg.seed)
    p1 = cfg.phase1
    for round_num in range(1, p1.rounds + 1):
        updates = []
        for cid in trainer.sample_train():
            seed = client_seed(cfg.seed, round_num, cid, "train")
            step = clients[cid].source_step(
                trainer.theta, InnerSettings.for_phase1(p1, seed), strategy=trainer.strategy
            )
            updates.append(ClientUpdate(cid, step.arrays, step.num_examples, step.loss))
        trainer.apply(updates)
        if on_round is not None:
            on_round({"round": round_num, "train_loss": float(np.mean([u.loss for u in updates]))})
    return trainer.theta
