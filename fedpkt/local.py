"""What one client does with its own data: the jobs a Flower ClientApp (or a baseline) runs.

A ``LocalClient`` holds one persona's data, tokenised once, and a reference to the process-wide
frozen backbone. Its three jobs — a phase-1 step from a received θ, a validation loss, and
phase-2 personalization with local evaluation — are plain functions of their inputs, so the
Flower clients and the centralized baselines call exactly this code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedpkt.config import FedpktConfig, GenerationConfig, Phase2Config, PrefixConfig
from fedpkt.data.encoding import EncodedExample, encode_examples, render_history
from fedpkt.data.examples import examples_from_dialogues
from fedpkt.data.partition import load_client
from fedpkt.data.schema import ClientData, Example, Split
from fedpkt.errors import FedpktError
from fedpkt.eval.consistency import ConsistencyScorer
from fedpkt.model.backbone import Backbone
from fedpkt.model.generate import generate_replies
from fedpkt.model.positions import input_budget
from fedpkt.peft import PeftMethod, get_method
from fedpkt.personalize import PersonaFailure, PersonalizeResult, PersonaTask, personalize_cohort
from fedpkt.strategies import Phase1Strategy, build_strategy
from fedpkt.train.dp import dp_inner_steps
from fedpkt.train.inner_loop import InnerSettings, sgd_inner_steps
from fedpkt.train.loop import evaluate_loss, sgd

Arrays = dict[str, np.ndarray]


@dataclass
class StepResult:
    """A phase-1 client reply: W_i, n_i, the mean inner-loop loss, and (under DP-SGD) the ε
    of these k steps (None without DP)."""

    arrays: Arrays
    num_examples: int
    loss: float
    epsilon: float | None = None


def new_prefix(backbone: Backbone, cfg: PrefixConfig, seed: int) -> nn.Module:
    """A freshly initialised module of the configured PEFT method (``cfg.method``; a
    reparameterised prefix by default) for this backbone (deterministic in seed).

    Float32 whatever the backbone's dtype (bf16/fp16 backbones train float32 prefixes), except
    under a float64 backbone, where the prefix is float64 too: the equivalence tests of cohort
    training run in float64 so that rounding cannot flip a beam or a stopping epoch.
    """
    prefix = get_method(cfg.method).build(backbone.model.config, cfg, seed=seed)
    dtype = torch.float64 if backbone.model.dtype == torch.float64 else torch.float32
    return prefix.to(device=backbone.device, dtype=dtype)


class LocalClient:
    """One persona's on-device state: its own data (tokenised once) and the shared backbone."""

    def __init__(self, data: ClientData, backbone: Backbone, cfg: FedpktConfig) -> None:
        self.data = data
        self.backbone = backbone
        self.cfg = cfg
        self.strategy = build_strategy(cfg.phase1)  # its client half shapes source_step
        self.examples: dict[Split, list[Example]] = {
            split: examples_from_dialogues(dialogues, cfg.data.history_turns)
            for split, dialogues in data.splits.items()
        }
        # data.max_length, or fewer where prefix + example would overrun the position table
        self.max_tokens = input_budget(
            backbone.model.config, cfg.data.max_length, cfg.prefix.num_virtual_tokens
        )
        self.encoded: dict[Split, list[EncodedExample]] = {
            split: encode_examples(examples, backbone.tokenizer, self.max_tokens)
            for split, examples in self.examples.items()
        }

    @classmethod
    def open(
        cls, data_root: str | Path, client_id: str, backbone: Backbone, cfg: FedpktConfig
    ) -> LocalClient:
        """Load only this client's folder under ``data_root``."""
        return cls(load_client(data_root, client_id), backbone, cfg)

    @property
    def client_id(self) -> str:
        return str(self.data.meta["client_id"])

    @property
    def num_train_examples(self) -> int:
        return len(self.encoded.get("train", []))

    @property
    def method(self) -> PeftMethod:
        """The run's per-persona PEFT method (``[prefix] method``)."""
        return get_method(self.cfg.prefix.method)

    def prefix_from(self, arrays: Arrays | None, seed: int) -> nn.Module:
        """A prefix initialised from received arrays (source/θ), or randomly when None."""
        prefix = new_prefix(self.backbone, self.cfg.prefix, seed)
        if arrays is not None:
            self.method.load_arrays(prefix, arrays)
        return prefix

    # -- phase 1 ----------------------------------------------------------------------------
    def source_step(
        self,
        theta: Arrays,
        settings: InnerSettings,
        *,
        strategy: Phase1Strategy | None = None,
    ) -> StepResult:
        """W_i = SGD(L_i, θ, α, k): k SGD steps from θ on this client's training data.

        The configured strategy's client half may change the step (``client_optimizer``: e.g.
        FedProx's proximal gradient); under DP-SGD it wraps the optimizer opacus wraps.
        ``strategy``: the one to step for (default: this client's configured one).
        """
        prefix = self.prefix_from(theta, settings.seed)
        optimizer = (strategy or self.strategy).client_optimizer(sgd)
        if self.cfg.dp.enabled:  # σ calibrated for a client picked in every round: rounds · k
            private = dp_inner_steps(
                self.backbone,
                prefix,
                self.encoded["train"],
                self.cfg.dp,
                settings,
                planned_steps=settings.steps * max(self.cfg.phase1.rounds, 1),
                optimizer_factory=optimizer,
            )
            return StepResult(
                self.method.arrays(prefix),
                self.num_train_examples,
                float(private.result.mean_loss),
                epsilon=private.epsilon,
            )
        result = sgd_inner_steps(
            self.backbone,
            prefix,
            self.encoded["train"],
            settings,
            optimizer_factory=optimizer,
        )
        return StepResult(
            self.method.arrays(prefix), self.num_train_examples, float(result.mean_loss)
        )

    def validation_loss(self, theta: Arrays, batch_size: int = 8) -> tuple[float, int]:
        """Mean response-token loss of θ on this client's validation split."""
        prefix = self.prefix_from(theta, seed=0)
        loss = evaluate_loss(self.backbone.model, prefix, self.encoded["valid"], batch_size)
        return float(loss), len(self.encoded["valid"])

    # -- phase 2 ----------------------------------------------------------------------------
    def personalize(
        self,
        source: Arrays | None,
        *,
        seed: int,
        scorer: ConsistencyScorer,
        phase2: Phase2Config | None = None,
        generation: GenerationConfig | None = None,
    ) -> PersonalizeResult:
        """This persona alone through ``personalize_cohort`` (a cohort of one).

        Raises FedpktError with the persona's one-line reason when it fails.
        """
        outcome = personalize_cohort(
            [PersonaTask(self, seed)], source, scorer=scorer, phase2=phase2, generation=generation
        )[self.client_id]
        if isinstance(outcome, PersonaFailure):
            raise FedpktError(outcome.reason)
        return outcome

    def generate(
        self, folded: torch.Tensor | None, examples: list[Example], generation: GenerationConfig
    ) -> list[str]:
        """Beam-search replies for ``examples`` conditioned on one folded prefix (m, width)."""
        if not examples:
            return []
        prompts = [render_history(ex.history) for ex in examples]
        return generate_replies(
            self.backbone.model,
            self.backbone.tokenizer,
            folded,
            prompts,
            generation,
            max_length=self.cfg.data.max_length,
            method=self.method,
        )


# The only names a phase-2 reply may carry (the privacy contract; `fedpkt audit` checks it).
PHASE2_METRICS = frozenset(
    {
        "f1",
        "f1_2gram",
        "lcs_f1",
        "c_score",
        "test_loss",
        "init_test_loss",
        "n_test_responses",
        "n_train_dialogues",
        "epochs",
        "best_epoch",
        "seconds",
        "epsilon",
    }
)


def metrics_only(metrics: dict[str, Any]) -> dict[str, float]:
    """The allowed phase-2 reply: known names, finite float scalars; anything else is an error."""
    unknown = sorted(set(metrics) - PHASE2_METRICS)
    if unknown:
        raise ValueError(f"phase-2 metrics {unknown} are not in the privacy contract")
    clean: dict[str, float] = {}
    for key, value in metrics.items():
        number = float(value)
        if not np.isfinite(number):
            raise ValueError(f"metric '{key}' is not finite: {value!r}")
        clean[key] = number
    return clean


MAX_PERSONA_SENTENCES = 64
"""Bound on |C|: C is a mean over replies of a sum of ±1 over the persona's sentences
(PersonaPKT §4.3), and PERSONA-CHAT personas have 3-5 sentences."""


def check_phase2_metrics(
    metrics: dict[str, Any], max_epochs: int, *, c_measured: bool = True
) -> dict[str, float]:
    """A phase-2 reply as the server accepts it, or FedpktError naming the first problem.

    Replies are untrusted input: every contract name but ``epsilon`` (DP-SGD only) must be
    present, each value a finite number in its range: F1s in [0, 1], |C| at most
    ``MAX_PERSONA_SENTENCES``, losses and seconds >= 0, counts whole and >= 0, 0 <= best_epoch
    <= epochs <= ``max_epochs``, ε >= 0. ``c_measured`` False (``eval.c_backend = "none"``):
    ``c_score`` may be absent, as such replies leave it out.
    """
    try:
        clean = metrics_only(metrics)
    except (TypeError, ValueError) as err:
        raise FedpktError(str(err)) from None
    optional = {"epsilon"} if c_measured else {"epsilon", "c_score"}
    missing = sorted(PHASE2_METRICS - optional - set(clean))
    if missing:
        raise FedpktError(f"phase-2 reply lacks metrics {missing}")
    ranges = {
        "f1": (0.0, 1.0),
        "f1_2gram": (0.0, 1.0),
        "lcs_f1": (0.0, 1.0),
        "c_score": (-MAX_PERSONA_SENTENCES, MAX_PERSONA_SENTENCES),
        "epochs": (0, max_epochs),
        "best_epoch": (0, clean["epochs"]),
    }
    for key, value in clean.items():
        low, high = ranges.get(key, (0.0, np.inf))
        if not low <= value <= high:
            raise FedpktError(f"metric '{key}' = {value!r} is outside [{low}, {high}]")
    for key in ("n_test_responses", "n_train_dialogues", "epochs", "best_epoch"):
        if not float(clean[key]).is_integer():
            raise FedpktError(f"metric '{key}' = {clean[key]!r} is not a whole count")
    return clean
