"""Phase 2 on one node: personalize a cohort of its personas, then evaluate each on its own data.

Every persona of the cohort gets, exactly as it would alone (PersonaPKT §3.3, phase 2): a
prefix initialised from the source prefix (or at random), AdamW training with its own linear
schedule and early stopping on its own validation split, its test loss before and after, and
beam-search replies to its own test prompts, scored against its own references and persona
(F1, 2-gram F1, LCS F1, C). What is shared is only the frozen backbone's forward passes:
training runs through ``fedpkt.train.cohort.train_cohort`` (``phase2.cohort_size`` personas
per pass; 0 picks by device, ``default_cohort_size``), test losses through ``cohort_losses``,
and generation puts the test prompts of many personas in one ``generate`` call, each row under
its own persona's folded prefix.

A persona that fails (no training or test data, a non-finite loss, a scoring error) is
reported as a ``PersonaFailure`` with a one-line reason; the others go on.

Under DP-SGD (``dp.enabled``) each persona trains alone through opacus (its per-sample
clipping and accounting are per model); evaluation and generation are still batched.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from fedpkt.config import GenerationConfig, Phase2Config
from fedpkt.data.encoding import IGNORE_INDEX, EncodedExample, render_history
from fedpkt.errors import FedpktError
from fedpkt.eval.consistency import ConsistencyScorer
from fedpkt.eval.scoring import score_responses
from fedpkt.model.generate import generate_replies
from fedpkt.train.cohort import CohortJob, cohort_losses, default_cohort_size, train_cohort
from fedpkt.train.dp import train_prefix_dp
from fedpkt.train.loop import LoopSettings, TrainResult, pad_id_for

if TYPE_CHECKING:
    from fedpkt.local import LocalClient

Arrays = dict[str, np.ndarray]

GENERATION_ROWS_PER_PERSONA = 16
"""Prompts per ``generate`` call for each cohort slot (a persona alone: one call of 16)."""


@dataclass(frozen=True)
class PersonaTask:
    """One persona to personalize: its client state and its phase-2 seed."""

    client: LocalClient
    seed: int


@dataclass
class PersonalizeResult:
    """A phase-2 outcome. Only ``metrics`` ever leaves the client; ``folded`` goes to the vault."""

    metrics: dict[str, float]
    folded: torch.Tensor
    generated: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PersonaFailure:
    """A persona that could not be personalized, and why (one line)."""

    reason: str


Outcome = PersonalizeResult | PersonaFailure


def _has_response(examples: Sequence[EncodedExample]) -> bool:
    return any(label != IGNORE_INDEX for ex in examples for label in ex.labels)


def _check_data(client: LocalClient) -> None:
    for split in ("train", "test"):
        if not _has_response(client.encoded.get(split, [])):
            raise FedpktError(
                f"client {client.client_id} has no {split} responses; expected at least one"
            )


def personalize_cohort(
    tasks: Sequence[PersonaTask],
    source: Arrays | None,
    *,
    scorer: ConsistencyScorer,
    phase2: Phase2Config | None = None,
    generation: GenerationConfig | None = None,
) -> dict[str, Outcome]:
    """Train, evaluate and score every task's persona; returns client id -> outcome (in order).

    ``source`` is the source prefix's arrays (used when ``phase2.init == "source"``); every
    task's client must share one backbone. ``phase2``/``generation`` default to the first
    client's config. ``metrics`` of a result: f1, f1_2gram, lcs_f1, c_score, test_loss,
    init_test_loss, n_test_responses, n_train_dialogues, epochs, best_epoch, seconds (the
    cohort's wall time divided by its size: the client time one persona cost) and, under
    DP-SGD, epsilon.
    """
    if not tasks:
        return {}
    started = time.perf_counter()
    cfg = tasks[0].client.cfg
    phase2 = phase2 or cfg.phase2
    generation = generation or cfg.generation
    backbone = tasks[0].client.backbone
    if any(task.client.backbone is not backbone for task in tasks):
        raise FedpktError("a cohort's personas must share one backbone")
    model = backbone.model
    pad_id = pad_id_for(model, backbone.tokenizer)
    cohort_size = phase2.cohort_size or default_cohort_size(backbone.device)
    outcomes: dict[str, Outcome] = {}
    prefixes: dict[str, torch.nn.Module] = {}
    live: dict[str, PersonaTask] = {}
    for task in tasks:
        cid = task.client.client_id
        try:
            _check_data(task.client)
            init = source if phase2.init == "source" else None
            prefixes[cid] = task.client.prefix_from(init, task.seed)
            live[cid] = task
        except FedpktError as err:
            outcomes[cid] = PersonaFailure(str(err))

    def test_losses() -> dict[str, float]:
        ids = list(live)
        items = [(prefixes[c], live[c].client.encoded["test"]) for c in ids]
        return dict(zip(ids, cohort_losses(model, items, pad_id=pad_id), strict=True))

    init_losses = test_losses()
    trained, epsilons, failures = _train(model, live, prefixes, phase2, cohort_size, pad_id)
    outcomes.update(failures)
    live = {cid: task for cid, task in live.items() if cid in trained}
    if live:
        final_losses = test_losses()
        method = tasks[0].client.method
        folded = {cid: method.fold(prefixes[cid]) for cid in live}
        replies = _generate(live, folded, generation, cohort_size)
    seconds = (time.perf_counter() - started) / len(tasks)
    for cid, task in live.items():
        client = task.client
        references = [ex.response.text for ex in client.examples["test"]]
        try:
            scores = score_responses(replies[cid], references, client.data.persona, scorer)
        except (FedpktError, ValueError) as err:
            outcomes[cid] = PersonaFailure(f"{cid}: scoring failed: {err}")
            continue
        metrics = {
            "f1": scores["f1"],
            "f1_2gram": scores["f1_2gram"],
            "lcs_f1": scores["lcs_f1"],
            **{key: scores[key] for key in ("c_score",) if key in scores},  # none: not measured
            "test_loss": float(final_losses[cid]),
            "init_test_loss": float(init_losses[cid]),
            "n_test_responses": float(len(references)),
            "n_train_dialogues": float(client.data.num_dialogues("train")),
            "epochs": float(len(trained[cid].valid_losses)),
            "best_epoch": float(trained[cid].best_epoch),
            "seconds": seconds,
        }
        if cid in epsilons:
            metrics["epsilon"] = epsilons[cid]
        outcomes[cid] = PersonalizeResult(metrics, folded[cid], replies[cid])
    return {task.client.client_id: outcomes[task.client.client_id] for task in tasks}


def _train(
    model: torch.nn.Module,
    live: dict[str, PersonaTask],
    prefixes: dict[str, torch.nn.Module],
    phase2: Phase2Config,
    cohort_size: int,
    pad_id: int,
) -> tuple[dict[str, TrainResult], dict[str, float], dict[str, PersonaFailure]]:
    """Train every live persona's prefix in place: (results, ε under DP-SGD, failures)."""
    trained: dict[str, TrainResult] = {}
    epsilons: dict[str, float] = {}
    failures: dict[str, PersonaFailure] = {}
    if not live:
        return trained, epsilons, failures
    first = next(iter(live.values())).client
    if first.cfg.dp.enabled:  # opacus wraps one prefix at a time: per-example clipping per model
        for cid, task in live.items():
            try:
                private = train_prefix_dp(
                    first.backbone,
                    prefixes[cid],
                    task.client.encoded["train"],
                    task.client.encoded["valid"],
                    first.cfg.dp,
                    LoopSettings.for_phase2(phase2, task.seed),  # its global clip is dropped
                )
                trained[cid], epsilons[cid] = private.result, private.epsilon
            except FedpktError as err:
                failures[cid] = PersonaFailure(f"{cid}: {err}")
        return trained, epsilons, failures
    jobs = [
        CohortJob(
            cid,
            prefixes[cid],
            task.client.encoded["train"],
            task.client.encoded.get("valid", []),
            LoopSettings.for_phase2(phase2, task.seed),
        )
        for cid, task in live.items()
    ]
    for cid, outcome in train_cohort(model, jobs, cohort_size=cohort_size, pad_id=pad_id).items():
        if outcome.result is None:
            failures[cid] = PersonaFailure(outcome.error or f"{cid}: training failed")
        else:
            trained[cid] = outcome.result
    return trained, epsilons, failures


def _generate(
    live: dict[str, PersonaTask],
    folded: dict[str, torch.Tensor],
    generation: GenerationConfig,
    cohort_size: int,
) -> dict[str, list[str]]:
    """Beam-search replies to every live persona's test prompts, many personas per call."""
    owners: list[str] = []
    prompts: list[str] = []
    for cid, task in live.items():
        for example in task.client.examples["test"]:
            owners.append(cid)
            prompts.append(render_history(example.history))
    first = next(iter(live.values())).client
    states = torch.stack([folded[cid] for cid in owners]) if owners else None
    texts = generate_replies(
        first.backbone.model,
        first.backbone.tokenizer,
        states,
        prompts,
        generation,
        max_length=first.cfg.data.max_length,
        batch_size=GENERATION_ROWS_PER_PERSONA * cohort_size,
        method=first.method,
    )
    replies: dict[str, list[str]] = {cid: [] for cid in live}
    for cid, text in zip(owners, texts, strict=True):
        replies[cid].append(text)
    return replies
