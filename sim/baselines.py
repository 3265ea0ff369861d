"""``fedpkt baselines``: the paper's eight Table 2 settings, centrally, on a run's own Parts.

Everything a federated run would see is reused: the same ``ensure_partitions`` (so the same
Parts and 8:1:1 splits from the same config and seed), the same ``LocalClient`` per persona,
the same phase-1 server maths (``train_source_centralized``), the same phase-2 seeds and
``max_clients`` draw, the same generation and metrics. Only the transport is gone.

Layout of the run directory::

    config.toml            resolved config (as for simulate)
    data/                  the prepared client partitions
    metrics.jsonl          every round/client event, each tagged with its "setting"
    <setting-key>/         one per setting: results.{json,csv}, report.md, plots/
    results.{json,csv}     the combined rows (one per method and Part), Table 2 order
    baselines.json         which settings ran, when, and how long they took

Re-running with ``--only`` replaces just those settings' sub-directories; the combined
results always gather every setting present.
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedpkt.atomic import atomic_write_json
from fedpkt.baseline_settings import ALL_SETTINGS, Setting, select_settings
from fedpkt.baselines import (
    encode_split,
    evaluate_model,
    finetune_model,
    finetune_pooled,
    model_num_params,
    persona_context,
    persona_numbers,
    personalize_seed,
    phase2_targets,
    reptile_meta_train,
)
from fedpkt.centralized import open_clients, train_source_centralized
from fedpkt.config import FedpktConfig
from fedpkt.errors import FedpktError
from fedpkt.eval.consistency import ConsistencyScorer, make_scorer
from fedpkt.local import LocalClient
from fedpkt.model.backbone import Backbone, load_backbone
from fedpkt.model.backbone_info import backbone_num_params
from fedpkt.peft import DEFAULT_METHOD, get_method
from fedpkt.personalize import PersonaFailure, PersonaTask, personalize_cohort
from fedpkt.preflight import check_run_inputs
from fedpkt.report import ResultRow, read_results, write_report, write_results
from fedpkt.rundir import RunDir, check_run_dir, create_run_dir, ensure_partitions, run_path
from fedpkt.runlock import check_unlocked, hold_run_dir
from fedpkt.train.finetune import trainable_copy
from fedpkt.train.loop import evaluate_loss

EventFn = Callable[[dict[str, Any]], None]
MANIFEST = "baselines.json"


@dataclass
class Cohort:
    """The clients of one run, opened once and shared by every setting."""

    backbone: Backbone
    part_a: dict[str, LocalClient]
    targets: list[LocalClient]  # the phase-2 personas (B then C), as the server picks them
    parts: dict[str, str]  # client id -> "B" | "C"
    numbers: dict[str, int]  # client id -> persona number (Persona_id + FT)
    scorer: ConsistencyScorer | None
    backbone_params: int


@dataclass
class Outcome:
    """One setting's events (``report`` shapes) and its stored parameters per persona (%)."""

    clients: list[dict[str, Any]] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    stored_params_pct: float = 0.0


def open_cohort(cfg: FedpktConfig, data_root: Path) -> Cohort:
    """Load the backbone, the scorer and every client of Parts A, B and C."""
    backbone = load_backbone(
        cfg.backbone.name,
        embedded_size=cfg.backbone.embedded_size,
        embedded_recipe=cfg.backbone.embedded_recipe,
        device=cfg.backbone.device,
        dtype=cfg.backbone.dtype,
    )
    by_part = {part: open_clients(cfg, data_root, backbone, part) for part in ("A", "B", "C")}
    if not by_part["A"]:
        raise FedpktError(f"data '{data_root}' has 0 Part A clients; baselines need some")
    ids = phase2_targets(cfg, list(by_part["B"]), list(by_part["C"]))
    parts = {cid: part for part in ("B", "C") for cid in by_part[part]}
    return Cohort(
        backbone=backbone,
        part_a=by_part["A"],
        targets=[by_part[parts[cid]][cid] for cid in ids],
        parts=parts,
        numbers=persona_numbers({p: list(c) for p, c in by_part.items()}),
        scorer=make_scorer(cfg.eval),
        backbone_params=backbone_num_params(
            cfg.backbone.name,
            embedded_size=cfg.backbone.embedded_size,
            embedded_recipe=cfg.backbone.embedded_recipe,
        ),
    )


def _context(setting: Setting, client: LocalClient, cohort: Cohort) -> str:
    return persona_context(setting.context, client.data.persona, cohort.numbers[client.client_id])


def _client_event(client: LocalClient, cohort: Cohort, metrics: Mapping[str, float]) -> dict:
    return {
        "event": "client",
        "client_id": client.client_id,
        "part": cohort.parts[client.client_id],
        **metrics,
    }


def _run_finetune(setting: Setting, cfg: FedpktConfig, cohort: Cohort, emit: EventFn) -> Outcome:
    """One model fine-tuned on pooled Part A, then tested on every B/C persona."""
    contexts = {cid: _context(setting, c, cohort) for cid, c in cohort.part_a.items()}
    model, trained = finetune_pooled(cohort.backbone, cohort.part_a, contexts, cfg)
    outcome = Outcome(stored_params_pct=100.0 * model_num_params(model) / cohort.backbone_params)
    for client in cohort.targets:
        started = time.perf_counter()
        metrics = evaluate_model(
            model, client, _context(setting, client, cohort), cohort.scorer, cfg
        )
        metrics |= {
            "epochs": float(trained.epochs),
            "best_epoch": float(trained.best_epoch),
            "seconds": time.perf_counter() - started,
        }
        outcome.clients.append(emit(_client_event(client, cohort, metrics)))
    return outcome


def _run_reptile(setting: Setting, cfg: FedpktConfig, cohort: Cohort, emit: EventFn) -> Outcome:
    """Reptile-meta-trained model, then one fine-tuned copy per persona (scored, discarded)."""
    outcome = Outcome()
    meta = reptile_meta_train(
        cfg,
        cohort.backbone,
        cohort.part_a,
        on_round=lambda r: outcome.rounds.append(emit({"event": "round", **r})),
    )
    for client in cohort.targets:
        started = time.perf_counter()
        test = encode_split(client, "test", "")
        init_loss = evaluate_loss(meta, None, test, cfg.phase2.batch_size)
        model = trainable_copy(meta)
        trained = finetune_model(
            model,
            cohort.backbone.tokenizer,
            client.encoded["train"],
            client.encoded.get("valid", []),
            cfg,
            personalize_seed(cfg, client.client_id),
        )
        metrics = evaluate_model(model, client, "", cohort.scorer, cfg)
        per_model = 100.0 * model_num_params(model) / cohort.backbone_params
        del model
        gc.collect()
        metrics |= {
            "init_test_loss": init_loss,
            "epochs": float(trained.epochs),
            "best_epoch": float(trained.best_epoch),
            "seconds": time.perf_counter() - started,
        }
        outcome.clients.append(emit(_client_event(client, cohort, metrics)))
        # N personas, one full model each: N x 100 % (N = personas this run personalized).
        outcome.stored_params_pct = len(cohort.targets) * per_model
    return outcome


def row_name(setting: Setting, cfg: FedpktConfig) -> str:
    """The paper's name of ``setting``; its prefix rows run the configured PEFT method
    (``prefix.method``), so under another method they carry its label: "Rand init +
    Prompt-tuning", "PersonaPKT (PPReptile) + Prompt-tuning" (as ``fedpkt compare`` names the
    federated runs of that method)."""
    peft = get_method(cfg.prefix.method)
    if setting.family != "prefix" or peft.name == DEFAULT_METHOD:
        return setting.method
    if setting.strategy is None:
        return f"Rand init + {peft.label}"
    return f"{setting.method} + {peft.label}"


def _run_prefix(setting: Setting, cfg: FedpktConfig, cohort: Cohort, emit: EventFn) -> Outcome:
    """Source prefix (PersonaPKT rows) or none (Rand init), then every persona personalized
    in cohorts (``personalize_cohort``, the code a phase-2 ClientApp runs)."""
    stored = get_method(cfg.prefix.method).stored_params(
        cohort.backbone.model.config, cfg.prefix.num_virtual_tokens
    )
    outcome = Outcome(stored_params_pct=100.0 * stored / cohort.backbone_params)
    source = None
    phase2 = cfg.phase2.model_copy(update={"init": "random"})
    if setting.strategy is not None:
        strategy_cfg = cfg.model_copy(update={"phase1": cfg.phase1.with_strategy(setting.strategy)})
        source = train_source_centralized(
            strategy_cfg,
            cohort.part_a,
            cohort.backbone,
            on_round=lambda r: outcome.rounds.append(emit({"event": "round", **r})),
        )
        phase2 = cfg.phase2.model_copy(update={"init": "source"})
    tasks = [PersonaTask(c, personalize_seed(cfg, c.client_id)) for c in cohort.targets]
    results = personalize_cohort(tasks, source, scorer=cohort.scorer, phase2=phase2)
    for client in cohort.targets:
        result = results[client.client_id]
        if isinstance(result, PersonaFailure):
            raise FedpktError(result.reason)
        outcome.clients.append(emit(_client_event(client, cohort, result.metrics)))
    return outcome


RUNNERS = {"finetune": _run_finetune, "reptile": _run_reptile, "prefix": _run_prefix}


def combined_rows(run: RunDir) -> list[ResultRow]:
    """Rows of every setting sub-directory that holds results, in Table 2 order."""
    rows: list[ResultRow] = []
    for setting in ALL_SETTINGS:
        sub = run.root / setting.key
        if (sub / "results.json").is_file():
            rows += read_results(sub).rows
    return rows


def _update_manifest(run: RunDir, key: str, entry: dict[str, Any]) -> None:
    path = run.root / MANIFEST
    data = json.loads(path.read_text()) if path.is_file() else {"settings": {}}
    data["settings"][key] = entry
    atomic_write_json(path, data)


def run_baselines(
    cfg: FedpktConfig,
    run_dir: str | Path | None = None,
    *,
    only: str | list[str] | None = None,
    on_event: EventFn | None = None,
) -> RunDir:
    """Run the selected settings (default: all eight) and write their results; returns the run.

    ``on_event`` sees ``setting`` (start, with ``total`` personas), ``round`` and ``client``
    events, and ``setting_done``; each also goes to ``metrics.jsonl`` tagged with the setting.
    """
    settings = select_settings(only)
    root = check_baselines(cfg, run_dir)
    with hold_run_dir(root):
        return _run_baselines(cfg, root, settings, on_event)


def check_baselines(cfg: FedpktConfig, run_dir: str | Path | None = None) -> Path:
    """Everything ``run_baselines`` can refuse before it writes anything; returns the run
    directory it will use: the inputs (``fedpkt.preflight``), then a run directory in use or
    holding another experiment."""
    check_run_inputs(cfg)
    load_backbone(  # loaded once here (the runs reuse it): broken weights refused early
        cfg.backbone.name,
        embedded_size=cfg.backbone.embedded_size,
        embedded_recipe=cfg.backbone.embedded_recipe,
        device=cfg.backbone.device,
        dtype=cfg.backbone.dtype,
    )
    root = run_path(cfg, run_dir, prefix="baselines").absolute()
    check_unlocked(root)
    check_run_dir(cfg, root)
    return root


def _run_baselines(
    cfg: FedpktConfig, root: Path, settings: list[Setting], on_event: EventFn | None
) -> RunDir:
    run = create_run_dir(cfg, root)
    cohort = open_cohort(cfg, ensure_partitions(cfg, run))
    if not cohort.targets:
        raise FedpktError(f"run '{run.root}' has 0 Part B/C clients to evaluate; expected some")
    for setting in settings:
        started = time.perf_counter()

        last_round = time.perf_counter()

        def emit(event: dict[str, Any], key: str = setting.key) -> dict[str, Any]:
            nonlocal last_round
            if event["event"] == "round":  # the centralized rounds: no failures, all sampled
                now = time.perf_counter()
                event = {
                    **event,
                    "sampled": min(cfg.phase1.clients_per_round, len(cohort.part_a)),
                    "failures": 0,
                    "seconds": now - last_round,
                }
                last_round = now
            run.log_event({**event, "setting": key})
            if on_event is not None:
                on_event({**event, "setting": key})
            return event

        name = row_name(setting, cfg)
        emit({"event": "setting", "method": name, "total": len(cohort.targets)})
        outcome = RUNNERS[setting.family](setting, cfg, cohort, emit)
        seconds = time.perf_counter() - started
        write_report(
            run.root / setting.key,
            method=name,
            rounds=outcome.rounds,
            clients=outcome.clients,
            stored_params_pct=outcome.stored_params_pct,
            config=cfg.model_dump(mode="json"),
        )
        _update_manifest(
            run,
            setting.key,
            {"method": name, "seconds": seconds, "finished": time.time()},
        )
        emit({"event": "setting_done", "method": name, "seconds": seconds})
    write_results(run.root, combined_rows(run), cfg.model_dump(mode="json"))
    return run
