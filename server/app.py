"""The fedpkt ServerApp: handshake, phase 1 (source prefix), phase 2 (personalization), report.

The server never holds client data: it learns client ids, Parts and example counts from a
handshake, trains θ from the clients' W_i, and receives only metric scalars in phase 2.

Settings come from the simulation runner (bound defaults) or, under ``flwr run`` / a real
SuperLink, from the run config keys ``run-dir``, ``config``, ``set`` (``;``-separated
``section.key=value``), ``phases`` (``all``, ``source`` or ``personalize``) and ``resume``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from fedpkt.atomic import atomic_write_bytes
from fedpkt.config import FedpktConfig, config_to_toml, load_config, run_method_name
from fedpkt.errors import FedpktError
from fedpkt.local import check_phase2_metrics
from fedpkt.model.backbone_info import backbone_config, backbone_num_params
from fedpkt.report import write_report
from fedpkt.rundir import RunDir, create_run_dir, ensure_partitions
from fedpkt.source import SourceTrainer, client_seed, initial_theta
from server.grid import prompt
from server.secure import client_dp_section, phase1_hooks
from server.strategy import ClientDirectory, ClientEntry, SourcePrefixStrategy
from wire import (
    ARRAYS,
    CLIENT_IDS,
    CONFIG,
    FAILED,
    FEDPKT_CONFIG,
    PERSONALIZE_TYPE,
    PHASE,
    PHASE_PERSONALIZE,
    SEEDS,
    SERVER_ROUND,
    from_array_record,
    persona_metrics_record,
    to_array_record,
)

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class ServerSettings:
    """What one server run needs: its run directory (holding the resolved config) and phases."""

    run_dir: Path
    phases: str = "all"
    resume: bool = False
    method: str | None = None  # None: named from the run's config (run_method_name)
    on_event: Callable[[dict], None] | None = None
    min_nodes: int = 1
    node_wait_s: float = 300.0


def settings_from_context(context: Context) -> ServerSettings:
    """Server settings from a Flower run config (``flwr run .`` / deployment)."""
    rc = dict(context.run_config)
    overrides = [s for s in str(rc.get("set", "")).split(";") if s.strip()]
    cfg = load_config(str(rc.get("config", "embedded")) or None, overrides)
    run = create_run_dir(cfg, str(rc.get("run-dir", "")) or None)
    return ServerSettings(
        run_dir=run.root,
        phases=str(rc.get("phases", "all")),
        resume=bool(rc.get("resume", False)),
        min_nodes=int(rc.get("min-nodes", 1)),
        node_wait_s=float(rc.get("node-wait-s", 300.0)),
    )


def wait_for_nodes(grid: Grid, min_nodes: int, wait_s: float) -> list[int]:
    """Block until at least ``min_nodes`` SuperNodes are connected (they register lazily)."""
    deadline = time.monotonic() + wait_s
    while True:
        nodes = list(grid.get_node_ids())
        if len(nodes) >= min_nodes:
            return nodes
        if time.monotonic() > deadline:
            raise FedpktError(
                f"only {len(nodes)} of the expected {min_nodes} client nodes connected "
                f"within {wait_s:.0f} s"
            )
        time.sleep(0.5)


def handshake(grid: Grid, node_ids: list[int], timeout: float) -> ClientDirectory:
    """Ask every connected node which clients it serves (ids, Parts, training counts)."""
    messages = [
        Message(
            content=RecordDict({"config": ConfigRecord({"phase": "handshake"})}),
            message_type=MessageType.QUERY,
            dst_node_id=node,
        )
        for node in node_ids
    ]
    directory = ClientDirectory()
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if reply.has_error():
            log(
                WARNING,
                "handshake: node %s failed: %s",
                reply.metadata.src_node_id,
                reply.error.reason,
            )
            continue
        described = reply.content.config_records["describe"]
        counts = reply.content.metric_records["counts"]["num-examples"]
        for cid, part, count in zip(
            described["client-ids"], described["parts"], counts, strict=True
        ):
            directory.entries[str(cid)] = ClientEntry(
                str(cid), reply.metadata.src_node_id, str(part), int(count)
            )
    answered = {e.node_id for e in directory.entries.values()}
    if len(answered) < len(node_ids):
        log(
            WARNING,
            "handshake: %d of %d nodes did not answer",
            len(node_ids) - len(answered),
            len(node_ids),
        )
    log(INFO, "handshake: %d clients on %d nodes", len(directory.entries), len(node_ids))
    return directory


def initial_prefix(cfg: FedpktConfig) -> tuple[Arrays, int]:
    """θ_0 for this run and the parameters one persona stores; the server reads only the
    backbone's config, never its weights."""
    return initial_theta(
        cfg,
        backbone_config(
            cfg.backbone.name,
            embedded_size=cfg.backbone.embedded_size,
            embedded_recipe=cfg.backbone.embedded_recipe,
        ),
    )


def run_phase1(
    grid: Grid, run: RunDir, cfg: FedpktConfig, directory: ClientDirectory, settings: ServerSettings
) -> Arrays:
    """Train the source prefix over Part A; resume from the last checkpoint when asked."""
    part_a = directory.part("A")
    theta0, _ = initial_prefix(cfg)
    trainer = SourceTrainer(
        theta0, cfg.phase1, {e.client_id: e.num_examples for e in part_a}, cfg.seed
    )
    resumed: dict = {}
    latest = SourceTrainer.latest_checkpoint(run.checkpoints)
    if latest is not None:
        if not settings.resume:
            raise FedpktError(
                f"'{run.root}' already has phase-1 checkpoints; pass --resume to continue it"
            )
        resumed = trainer.load(latest).get("last_event", {})
        log(INFO, "resuming phase 1 after round %d", trainer.round)
    strategy = SourcePrefixStrategy(
        trainer, directory, config_to_toml(cfg), run, on_round=settings.on_event
    )
    hooks = phase1_hooks(strategy, cfg, len(part_a), resumed)  # DP / SecAgg+ wrappers
    result = hooks.start(
        grid,
        to_array_record(trainer.theta),
        num_rounds=cfg.phase1.rounds,
        timeout=cfg.phase1.client_timeout_s,
    )
    theta = from_array_record(result.arrays)
    atomic_write_bytes(run.source_prefix, save_safetensors(theta))
    return theta


def load_source_prefix(run: RunDir) -> Arrays:
    """The source prefix phase 1 left in the run directory."""
    if not run.source_prefix.is_file():
        raise FedpktError(f"'{run.root}' has no source prefix; run phase 1 first")
    return load_safetensors(run.source_prefix.read_bytes())


def phase2_targets(directory: ClientDirectory, cfg: FedpktConfig) -> list[ClientEntry]:
    """The Part B/C clients phase 2 personalizes: all, or a seeded draw of ``max_clients``."""
    targets = directory.part("B") + directory.part("C")
    if cfg.phase2.max_clients:
        rng = np.random.default_rng([cfg.seed, 2])
        keep = sorted(
            rng.choice(len(targets), size=min(cfg.phase2.max_clients, len(targets)), replace=False)
        )
        targets = [targets[i] for i in keep]
    return targets


def cohort_messages(
    targets: list[ClientEntry], cfg: FedpktConfig, source: Arrays | None
) -> list[tuple[Message, list[ClientEntry]]]:
    """Phase-2 messages: each node's targets in chunks of ``phase2.personas_per_message``.

    A message names its personas (``client-ids``) and their seeds; the node trains them
    ``phase2.cohort_size`` at a time. Seeds depend on the run seed and the client id only, so
    a persona's result does not depend on which cohort it lands in.
    """
    by_node: dict[int, list[ClientEntry]] = {}
    for entry in targets:
        by_node.setdefault(entry.node_id, []).append(entry)
    config_text = config_to_toml(cfg)
    size = cfg.phase2.personas_per_message
    out: list[tuple[Message, list[ClientEntry]]] = []
    for node_id, entries in by_node.items():
        for start in range(0, len(entries), size):
            chunk = entries[start : start + size]
            config = {
                FEDPKT_CONFIG: config_text,
                PHASE: PHASE_PERSONALIZE,
                SERVER_ROUND: 0,
                CLIENT_IDS: [e.client_id for e in chunk],
                SEEDS: [client_seed(cfg.seed, 0, e.client_id, "personalize") for e in chunk],
            }
            content = RecordDict({CONFIG: ConfigRecord(config)})
            if source is not None:
                content[ARRAYS] = to_array_record(source)
            message = Message(content=content, message_type=PERSONALIZE_TYPE, dst_node_id=node_id)
            out.append((message, chunk))
    return out


def stream_replies(
    grid: Grid, messages: list[Message], idle_timeout_s: float
) -> Iterator[tuple[Message, Message | None]]:
    """Push ``messages``; yield (request, reply) as each reply arrives, then (request, None)
    for every request left unanswered once no reply came for ``idle_timeout_s`` seconds."""
    ids = list(grid.push_messages(messages))
    pending = dict(zip(ids, messages, strict=True))
    last_reply = time.monotonic()
    while pending:
        replies = list(grid.pull_messages(list(pending)))
        for reply in replies:
            request = pending.pop(reply.metadata.reply_to_message_id, None)
            if request is not None:
                last_reply = time.monotonic()
                yield request, reply
        if pending and time.monotonic() - last_reply > idle_timeout_s:
            break
        if not replies:
            time.sleep(0.2)
    for request in pending.values():
        yield request, None


def run_phase2(
    grid: Grid,
    run: RunDir,
    cfg: FedpktConfig,
    directory: ClientDirectory,
    source: Arrays | None,
    settings: ServerSettings,
) -> list[dict[str, Any]]:
    """Send θ_source (None: random init) to every Part B/C client; collect metric scalars.

    Each persona's result is logged to ``metrics.jsonl`` as its message's reply arrives. A
    resumed run (``settings.resume``) keeps the results already logged and personalizes only
    the personas without one. Returns one row per persona with a result.
    """
    targets = phase2_targets(directory, cfg)
    wanted = {entry.client_id for entry in targets}
    kept = {r["client_id"]: r for r in run.events("client") if r.get("client_id") in wanted}
    if kept and not settings.resume:
        raise FedpktError(
            f"'{run.root}' already has phase-2 results for {len(kept)} personas; pass --resume "
            "to personalize only the others"
        )
    pending = [entry for entry in targets if entry.client_id not in kept]

    def emit(event: dict[str, Any]) -> None:
        run.log_event(event)
        if settings.on_event is not None:
            settings.on_event(event)

    emit({"event": "phase2_start", "personas": len(targets), "kept": len(kept)})
    rows = list(kept.values())
    if kept:
        log(INFO, "phase 2: %d personas already have results; %d to go", len(kept), len(pending))
    plan = cohort_messages(pending, cfg, source if cfg.phase2.init == "source" else None)
    entries = {id(message): chunk for message, chunk in plan}
    # No reply for this long means the node is gone: a message holds up to
    # personas_per_message personas, in the worst case trained one at a time, each within
    # the per-client timeout.
    idle = cfg.phase1.client_timeout_s * cfg.phase2.personas_per_message
    c_measured = cfg.eval.c_backend != "none"  # "none": replies leave c_score out
    for request, reply in stream_replies(grid, [m for m, _ in plan], idle):
        outcomes = _persona_outcomes(entries[id(request)], reply, cfg.phase2.max_epochs, c_measured)
        for entry, outcome in outcomes:
            if isinstance(outcome, str):
                log(WARNING, "phase 2: client %s failed: %s", entry.client_id, outcome)
                emit({"event": "client_failed", "client_id": entry.client_id, "reason": outcome})
                continue
            row = {"event": "client", "client_id": entry.client_id, "part": entry.part, **outcome}
            emit(row)
            rows.append(row)
    order = {entry.client_id: i for i, entry in enumerate(targets)}
    return sorted(rows, key=lambda row: order[row["client_id"]])


def _persona_outcomes(
    entries: list[ClientEntry], reply: Message | None, max_epochs: int, c_measured: bool = True
) -> list[tuple[ClientEntry, dict[str, float] | str]]:
    """Each persona's checked metrics, or the reason it has none, from one phase-2 reply.

    Replies are untrusted: a persona's record must pass ``check_phase2_metrics``, else the
    persona counts as failed with the reason (the run goes on)."""
    if reply is None:
        return [(entry, "no reply before the timeout") for entry in entries]
    if reply.has_error():
        return [(entry, f"client error: {reply.error.reason}") for entry in entries]
    failed = reply.content.config_records.get(FAILED, {})
    out: list[tuple[ClientEntry, dict[str, float] | str]] = []
    for entry in entries:
        record = reply.content.metric_records.get(persona_metrics_record(entry.client_id))
        if record is not None:
            try:
                checked = check_phase2_metrics(dict(record), max_epochs, c_measured=c_measured)
                out.append((entry, checked))
            except FedpktError as err:
                out.append((entry, f"rejected reply: {err}"))
        else:
            out.append((entry, str(failed.get(entry.client_id, "reply holds no result for it"))))
    return out


def phase2_failures_section(run: RunDir, succeeded: set[str]) -> dict[str, str]:
    """The report section listing personas without a result and why (empty when none)."""
    last: dict[str, str] = {}
    for event in run.events("client_failed"):
        if event["client_id"] not in succeeded:
            last[event["client_id"]] = str(event.get("reason", ""))
    if not last:
        return {}
    lines = [f"{len(last)} personas have no result (failed or rejected replies):", ""]
    lines += ["| client | reason |", "|---|---|"]
    lines += [f"| {cid} | {reason.replace('|', '/')} |" for cid, reason in sorted(last.items())]
    return {"Phase 2: failed personas": "\n".join(lines)}


def run_server(grid: Grid, settings: ServerSettings) -> None:
    """The whole server side of a run, in the order of docs/design.md's "A run, end to end"."""
    run = RunDir(settings.run_dir)
    cfg = run.config()
    started = time.perf_counter()
    ensure_partitions(cfg, run)
    nodes = wait_for_nodes(grid, settings.min_nodes, settings.node_wait_s)
    # The first message also starts each worker (imports, backbone load): allow the node wait.
    directory = handshake(grid, nodes, settings.node_wait_s)
    from_source = cfg.phase2.init == "source"
    source: Arrays | None = None
    if settings.phases == "source" or (settings.phases == "all" and from_source):
        if not directory.part("A"):
            raise FedpktError("no Part A client answered the handshake; phase 1 needs some")
        source = run_phase1(grid, run, cfg, directory, settings)
    elif settings.phases == "all":
        # Rand init + Prefix-tuning never reads the source prefix: training one would only
        # spend the clients' time (and privacy budget) on a result nobody uses.
        log(INFO, "phase 1 skipped: phase2.init='random' starts every prefix from scratch")
        run.log_event({"event": "phase1_skipped", "reason": "phase2.init='random'"})
    elif from_source:
        source = load_source_prefix(run)
    if settings.phases in ("all", "personalize"):
        rows = run_phase2(grid, run, cfg, directory, source, settings)
        _, stored = initial_prefix(cfg)
        backbone_params = backbone_num_params(
            cfg.backbone.name,
            embedded_size=cfg.backbone.embedded_size,
            embedded_recipe=cfg.backbone.embedded_recipe,
        )
        write_report(
            run.root,
            method=settings.method or run_method_name(cfg),
            rounds=run.events("round"),
            clients=rows,
            stored_params_pct=100.0 * stored / backbone_params,
            config=cfg.model_dump(mode="json"),
            sections={
                **client_dp_section(run.events("round")),
                **phase2_failures_section(run, {row["client_id"] for row in rows}),
            },
        )
    run.log_event(
        {"event": "done", "phases": settings.phases, "seconds": time.perf_counter() - started}
    )


def make_server_app(settings: ServerSettings | None = None) -> ServerApp:
    """The ServerApp; bound settings (simulation) or settings from the run config."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        # Replies pulled every 0.1 s on every backend, not every 3 s (see server/grid.py).
        run_server(prompt(grid), settings or settings_from_context(context))

    return app


app = make_server_app()
