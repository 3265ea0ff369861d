"""The fedpkt ClientApp: phase-1 steps, federated validation, and phase-2 personalization.

Every handler works on the one client named in the message (``client-id``), which must be one
this node serves; it reads only that client's folder. What goes back is fixed by the privacy
contract: phase 1 replies carry W_i, the example count and the loss; phase 2 replies carry
metric scalars only; the handshake carries client ids, parts and counts. The egress mod records
every reply.

Node-local settings (where the data, vaults and egress log live) come from the node config
(deployment: ``--node-config``) or from defaults bound by the simulation runner; the run's
hyperparameters come from the server with each message (``fedpkt-config``).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from logging import INFO
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod
from flwr.common.logger import log

from clients.egress import make_egress_mod
from clients.secure import secagg_mod
from fedpkt.config import FedpktConfig, load_config_text
from fedpkt.data.partition import load_manifest
from fedpkt.errors import FedpktError
from fedpkt.eval.consistency import ConsistencyScorer, make_scorer
from fedpkt.local import LocalClient, metrics_only
from fedpkt.model.backbone import load_backbone
from fedpkt.personal import PERSONALIZED_ENTRY
from fedpkt.privacy.vault import Vault


@dataclass(frozen=True)
class ClientSettings:
    """Where this node keeps its clients' data, vaults and egress log."""

    data_root: Path
    vault_root: Path
    egress_dir: Path | None
    record_payloads: bool
    client_ids: tuple[str, ...]


def settings_from_context(context: Context, defaults: dict[str, Any]) -> ClientSettings:
    """Merge defaults < run config < node config; map a simulation partition to its client."""
    merged: dict[str, Any] = {**defaults, **dict(context.run_config), **dict(context.node_config)}
    run_dir = str(merged.get("run-dir", ""))
    if "data-root" not in merged and run_dir:
        # `flwr run .` on one machine: the run directory's own layout (see fedpkt.rundir).
        merged.update(
            {
                "data-root": f"{run_dir}/data",
                "vault-root": f"{run_dir}/data/vaults",
                "egress-dir": f"{run_dir}/egress",
            }
        )
    if "data-root" not in merged:
        raise FedpktError("client node has no 'data-root' (node config) nor 'run-dir' (run config)")
    data_root = Path(str(merged["data-root"]))
    ids_text = str(merged.get("client-ids", "")).strip()
    manifest_ids = _manifest_ids(str(data_root))
    if ids_text:
        client_ids = tuple(c for c in ids_text.split(",") if c)
    elif "partition-id" in merged:
        partition = int(merged["partition-id"])
        if partition >= len(manifest_ids):
            raise FedpktError(
                f"partition-id {partition} has no client: the data root holds "
                f"{len(manifest_ids)} clients"
            )
        client_ids = (manifest_ids[partition],)
    else:
        client_ids = manifest_ids
    unknown = sorted(set(client_ids) - set(manifest_ids))
    if unknown:
        raise FedpktError(f"node config names clients {unknown} not present in '{data_root}'")
    egress = str(merged.get("egress-dir", ""))
    return ClientSettings(
        data_root=data_root,
        vault_root=Path(str(merged.get("vault-root", data_root / "vaults"))),
        egress_dir=Path(egress) if egress else None,
        record_payloads=bool(merged.get("record-payloads", True)),
        client_ids=client_ids,
    )


@functools.lru_cache(maxsize=8)
def _manifest_ids(data_root: str) -> tuple[str, ...]:
    return tuple(entry["client_id"] for entry in load_manifest(data_root)["clients"])


@functools.lru_cache(maxsize=4)
def _config(text: str) -> FedpktConfig:
    return load_config_text(text)


@functools.lru_cache(maxsize=64)
def _local_client(data_root: str, client_id: str, config_text: str) -> LocalClient:
    """One LocalClient per (client, run config) per worker process: data tokenised once."""
    cfg = _config(config_text)
    backbone = load_backbone(
        cfg.backbone.name,
        embedded_size=cfg.backbone.embedded_size,
        device=cfg.backbone.device,
        dtype=cfg.backbone.dtype,
    )
    # Where each client's work actually ran is what an operator checks first on a GPU cluster
    # (CUDA_VISIBLE_DEVICES is set per SuperNode by `fedpkt launch`).
    log(
        INFO,
        "client %s: backbone on %s (%s), CUDA_VISIBLE_DEVICES=%r",
        client_id,
        backbone.device,
        cfg.backbone.dtype,
        os.environ.get("CUDA_VISIBLE_DEVICES"),
    )
    return LocalClient.open(data_root, client_id, backbone, cfg)


@functools.lru_cache(maxsize=2)
def _scorer(config_text: str) -> ConsistencyScorer:
    return make_scorer(_config(config_text).eval)


def _arrays_of(content: RecordDict) -> dict[str, np.ndarray] | None:
    record = content.array_records.get("arrays")
    if record is None or len(record) == 0:
        return None
    return {key: array.numpy() for key, array in record.items()}


def _array_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord(array_dict={k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


class _Request:
    """The parsed common part of a server message."""

    def __init__(self, msg: Message, settings: ClientSettings) -> None:
        config = msg.content.config_records.get("config")
        if config is None:
            raise FedpktError("message has no 'config' record")
        self.config = config
        self.client_id = str(config.get("client-id", ""))
        if self.client_id not in settings.client_ids:
            raise FedpktError(f"this node does not serve client '{self.client_id}'")
        self.config_text = str(config["fedpkt-config"])
        self.seed = int(config.get("seed", 0))
        self.client = _local_client(str(settings.data_root), self.client_id, self.config_text)


def make_client_app(
    defaults: dict[str, Any] | None = None, extra_mods: list[Mod] | None = None
) -> ClientApp:
    """Build the ClientApp; ``defaults`` are node settings used where the context has none.

    ``extra_mods`` run inside the egress mod (so the log sees what they change); the tests
    use them to build deliberately faulty or leaky clients.
    """
    bound = dict(defaults or {})
    torch.set_num_threads(int(bound.pop("torch-threads", 1)))

    def settings(context: Context) -> ClientSettings:
        return settings_from_context(context, bound)

    def egress_target(context: Context) -> tuple[Path | None, bool]:
        resolved = settings(context)
        return resolved.egress_dir, resolved.record_payloads

    # SecAgg+ sits inside the egress mod (the log sees the masked reply that leaves) and is
    # a pass-through unless the server runs the round with SecAgg+ (privacy.secagg).
    app = ClientApp(mods=[make_egress_mod(egress_target), secagg_mod, *(extra_mods or [])])

    @app.query()
    def describe(msg: Message, context: Context) -> Message:
        """Handshake: which clients this node serves, their Part and training-example counts."""
        resolved = settings(context)
        manifest = {e["client_id"]: e for e in load_manifest(resolved.data_root)["clients"]}
        ids = list(resolved.client_ids)
        content = RecordDict(
            {
                "describe": ConfigRecord(
                    {"client-ids": ids, "parts": [manifest[c]["part"] for c in ids]}
                ),
                "counts": MetricRecord(
                    {"num-examples": [int(manifest[c]["num_train_examples"]) for c in ids]}
                ),
            }
        )
        return Message(content, reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        """Phase 1: W_i = k SGD steps from the received θ; reply W_i, n_i and the loss."""
        request = _Request(msg, settings(context))
        theta = _arrays_of(msg.content)
        if theta is None:
            raise FedpktError("phase-1 train message carries no prefix arrays")
        config = request.config
        result = request.client.source_step(
            theta,
            steps=int(config["steps"]),
            lr=float(config["lr"]),
            batch_size=int(config["batch-size"]),
            seed=request.seed,
        )
        metrics: dict[str, float | int] = {
            "num-examples": result.num_examples,
            "train-loss": result.loss,
        }
        if result.epsilon is not None:
            metrics["epsilon"] = float(result.epsilon)
        content = RecordDict(
            {"arrays": _array_record(result.arrays), "metrics": MetricRecord(metrics)}
        )
        return Message(content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        """Federated validation: the loss of θ on this client's validation split."""
        request = _Request(msg, settings(context))
        theta = _arrays_of(msg.content)
        if theta is None:
            raise FedpktError("evaluate message carries no prefix arrays")
        loss, count = request.client.validation_loss(theta)
        content = RecordDict({"metrics": MetricRecord({"num-examples": count, "val-loss": loss})})
        return Message(content, reply_to=msg)

    @app.train("personalize")
    def personalize(msg: Message, context: Context) -> Message:
        """Phase 2: personalize from the source prefix, store it encrypted, reply metrics only."""
        resolved = settings(context)
        request = _Request(msg, resolved)
        client = request.client
        result = client.personalize(
            _arrays_of(msg.content), seed=request.seed, scorer=_scorer(request.config_text)
        )
        vault = Vault(resolved.vault_root / request.client_id, request.client_id)
        vault.store(
            PERSONALIZED_ENTRY,
            {"prefix": result.folded.detach().cpu()},
            backbone_fingerprint=client.backbone.fingerprint,
        )
        content = RecordDict({"metrics": MetricRecord(metrics_only(result.metrics))})
        return Message(content, reply_to=msg)

    return app


# The module-level app for `flwr run .` and SuperNodes: node settings come from --node-config.
app = make_client_app()
