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
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import torch
from flwr.app import (
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod
from flwr.common.logger import log

from clients.egress import EgressTarget, make_egress_mod, payload_mode_of
from clients.secure import secagg_mod
from fedpkt.config import FedpktConfig, load_config_text
from fedpkt.data.partition import load_manifest
from fedpkt.errors import FedpktError
from fedpkt.eval.consistency import ConsistencyScorer, make_scorer
from fedpkt.local import LocalClient, metrics_only
from fedpkt.model.backbone import load_backbone
from fedpkt.personal import PERSONALIZED_ENTRY
from fedpkt.personalize import PersonaFailure, PersonaTask, personalize_cohort
from fedpkt.privacy.vault import Vault
from fedpkt.train.inner_loop import InnerSettings
from wire import (
    CLIENT_IDS,
    CONFIG,
    FAILED,
    FEDPKT_CONFIG,
    SEEDS,
    arrays_of,
    persona_metrics_record,
    to_array_record,
)


@dataclass(frozen=True)
class ClientSettings:
    """Where this node keeps its clients' data, vaults and egress log."""

    data_root: Path
    vault_root: Path
    egress_dir: Path | None
    record_payloads: bool
    client_ids: tuple[str, ...]


def settings_from_context(context: Context, defaults: dict[str, Any]) -> ClientSettings:
    """Merge defaults < run config < node config; map a simulation partition to its clients."""
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
        client_ids = partition_clients(
            manifest_ids, int(merged["partition-id"]), int(merged.get("num-partitions", 0))
        )
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


def partition_clients(
    manifest_ids: tuple[str, ...], partition: int, num_partitions: int
) -> tuple[str, ...]:
    """The clients simulated node ``partition`` of ``num_partitions`` serves: manifest clients
    partition, partition + N, partition + 2N, ... (round robin, so every node holds a mix of
    Parts A/B/C and phase-2 cohorts spread over the nodes). ``num_partitions`` 0 means one
    client per node (node p serves client p)."""
    count = num_partitions or len(manifest_ids)
    if not 0 <= partition < count or partition >= len(manifest_ids):
        raise FedpktError(
            f"partition-id {partition} has no client: the data root holds "
            f"{len(manifest_ids)} clients over {count} nodes"
        )
    return manifest_ids[partition::count]


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
        embedded_recipe=cfg.backbone.embedded_recipe,
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


def _one_line(err: BaseException, limit: int = 240) -> str:
    """An error as one short line (what a failed persona's reply may say about it)."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:limit]


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

    def egress_target(context: Context) -> EgressTarget:
        resolved = settings(context)
        mode = payload_mode_of(context, bound)
        return EgressTarget(resolved.egress_dir, mode, resolved.data_root)

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
        theta = arrays_of(msg.content)
        if theta is None:
            raise FedpktError("phase-1 train message carries no prefix arrays")
        config = request.config
        inner = InnerSettings(
            lr=float(config["lr"]),
            steps=int(config["steps"]),
            batch_size=int(config["batch-size"]),
            seed=request.seed,
        )
        result = request.client.source_step(theta, inner)
        metrics: dict[str, float | int] = {
            "num-examples": result.num_examples,
            "train-loss": result.loss,
        }
        if result.epsilon is not None:
            metrics["epsilon"] = float(result.epsilon)
        content = RecordDict(
            {"arrays": to_array_record(result.arrays), "metrics": MetricRecord(metrics)}
        )
        return Message(content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        """Federated validation: the loss of θ on this client's validation split."""
        request = _Request(msg, settings(context))
        theta = arrays_of(msg.content)
        if theta is None:
            raise FedpktError("evaluate message carries no prefix arrays")
        loss, count = request.client.validation_loss(theta)
        content = RecordDict({"metrics": MetricRecord({"num-examples": count, "val-loss": loss})})
        return Message(content, reply_to=msg)

    @app.train("personalize")
    def personalize(msg: Message, context: Context) -> Message:
        """Phase 2 for a cohort of this node's personas: personalize each from the source
        prefix, store it encrypted in its own vault, reply metric scalars only.

        The reply holds one MetricRecord per persona (``metrics/<client id>``) and, for
        personas that failed, a ``failed`` record with one line each; the others' results are
        kept whatever happened to one of them.
        """
        resolved = settings(context)
        config = msg.content.config_records.get(CONFIG)
        if config is None:
            raise FedpktError("message has no 'config' record")
        ids = [str(cid) for cid in config.get(CLIENT_IDS, [])]
        seeds = [int(seed) for seed in config.get(SEEDS, [])]
        if not ids or len(ids) != len(seeds):
            raise FedpktError("personalize message needs client-ids and seeds of one length")
        config_text = str(config[FEDPKT_CONFIG])
        failed: dict[str, str] = {}
        tasks: list[PersonaTask] = []
        for cid, seed in zip(ids, seeds, strict=True):
            if cid not in resolved.client_ids:
                failed[cid] = f"this node does not serve client '{cid}'"
                continue
            try:
                tasks.append(
                    PersonaTask(_local_client(str(resolved.data_root), cid, config_text), seed)
                )
            except (FedpktError, OSError, ValueError) as err:
                failed[cid] = _one_line(err)
        outcomes = personalize_cohort(tasks, arrays_of(msg.content), scorer=_scorer(config_text))
        content = RecordDict()
        for cid, outcome in outcomes.items():
            if isinstance(outcome, PersonaFailure):
                failed[cid] = outcome.reason
                continue
            try:
                metrics = MetricRecord(metrics_only(outcome.metrics))
                client = next(t.client for t in tasks if t.client.client_id == cid)
                Vault(resolved.vault_root / cid, cid).store(
                    PERSONALIZED_ENTRY,
                    {"prefix": outcome.folded.detach().cpu()},
                    backbone_fingerprint=client.backbone.fingerprint,
                )
            except (FedpktError, OSError, ValueError) as err:
                failed[cid] = _one_line(err)
                continue
            content[persona_metrics_record(cid)] = metrics
        if failed:
            log(WARNING, "phase 2: %d of %d personas failed: %s", len(failed), len(ids), failed)
            content[FAILED] = ConfigRecord(failed)
        return Message(content, reply_to=msg)

    return app


# The module-level app for `flwr run .` and SuperNodes: node settings come from --node-config.
app = make_client_app()
