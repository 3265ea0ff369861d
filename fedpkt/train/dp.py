"""DP-SGD (opacus) on a client's prefix training: per-example clipping, Gaussian noise, ε spent.

Why this module is small: the training loops already have an optimizer seam
(``fedpkt.train.loop.OptimizerFactory``). DP-SGD needs three things on top of it:

1. **Per-example gradients of the prefix.** ``PersonaPrefix.forward(batch)`` runs its encoder
   batch-first, so an opacus ``GradSampleModule`` around it records one gradient per example on
   every prefix parameter. The frozen backbone has no trainable parameters and is never wrapped.
2. **A per-example loss.** Example i's loss is the mean cross-entropy over *its own* response
   tokens, L_i = S_i / T_i (``per_example_response_loss``). The batch loss given to backward is
   the mean over examples, (1/B)·Σ L_i, and the ``GradSampleModule`` runs with
   ``loss_reduction="mean"``, which multiplies the recorded backprops by the batch size B: the
   per-sample gradient of row i is exactly ∇L_i (the test checks it against L_i alone). The
   token-weighted loss of non-DP training (Σ S_i / Σ T_i) would not do: each row's gradient
   would then depend on the other rows' token counts, which breaks the sensitivity argument.
3. **Noise calibrated to a budget, and the budget spent.** ``plan_dp`` computes the noise
   multiplier σ with opacus ``get_noise_multiplier`` from (ε, δ, sampling rate q = B/N, planned
   steps); an RDP accountant hooked to the ``DPOptimizer`` counts the steps actually taken, so
   ``epsilon`` is what was spent (less than the target when early stopping ends training sooner).

The update is then opacus's: clip every per-example gradient to ``max_grad_norm`` C, sum, add
N(0, σ²C²) noise, divide by the expected batch size B, and hand the result to the base optimizer
(AdamW for phase 2, plain SGD for phase 1's inner loop).

Caveats (stated, not hidden): the accountant assumes Poisson sampling with rate q; the loops draw
fixed-size batches (a shuffled epoch in phase 2, B distinct examples per step in phase 1), which
is the usual practical approximation (opacus's own ``poisson_sampling=False``). Early stopping
and best-epoch selection look at the client's validation split, which DP does not cover.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fedpkt.config import DPConfig
from fedpkt.data.encoding import IGNORE_INDEX, EncodedExample
from fedpkt.errors import FedpktError
from fedpkt.model.backbone import Backbone
from fedpkt.peft import PeftMethod, method_of, peft_forward
from fedpkt.train.inner_loop import InnerResult, InnerSettings, inner_steps
from fedpkt.train.loop import (
    Batch,
    LoopSettings,
    OptimizerFactory,
    ProgressFn,
    TrainResult,
    adamw,
    collate_for,
    evaluate_loss,
    pad_id_for,
    sgd,
    train_loop,
)
from fedpkt.train.prefix_training import backbone_parts

ACCOUNTANT = "rdp"
# RDP orders searched when converting to (ε, δ): opacus's defaults (``RDPAccountant.
# DEFAULT_ALPHAS``, restated here so that importing this module does not import opacus: a
# client without DP never needs it) stop at 63, which is too low for few-shot clients (q = 1,
# few steps, small ε) — opacus then warns that the best order is the largest and reports a
# looser ε. Extending the range only tightens the bound.
OPACUS_DEFAULT_ALPHAS: list[float] = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
RDP_ALPHAS: list[float] = [*OPACUS_DEFAULT_ALPHAS, *range(64, 257, 8), 384, 512, 1024]
"""The accountant used both to calibrate σ and to report ε (the same one, so they agree)."""


# --- the budget ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DPPlan:
    """The noise calibration of one client's training.

    Attributes:
        noise_multiplier: σ; the noise added to a summed batch gradient has std σ·C.
        sample_rate: q = B / N, the probability the accountant gives an example of being in a step.
        steps: planned optimizer steps T that σ was calibrated for.
        batch_size: B, the expected batch size (the divisor of the noisy sum).
        max_grad_norm: C, the per-example clipping norm.
        target_epsilon: ε that T steps at (σ, q) do not exceed.
        delta: δ.
    """

    noise_multiplier: float
    sample_rate: float
    steps: int
    batch_size: int
    max_grad_norm: float
    target_epsilon: float
    delta: float


def plan_dp(dp: DPConfig, *, num_examples: int, batch_size: int, steps: int) -> DPPlan:
    """σ for ``steps`` steps of batches of ``batch_size`` out of ``num_examples`` at (ε, δ).

    The batch is capped at the data size (a client with 3 examples and B = 4 uses B = 3, q = 1).
    Worked example (see the tests): N = 40, B = 4 gives q = 0.1.
    """
    if num_examples < 1:
        raise FedpktError("DP training got 0 training examples; expected at least 1")
    if batch_size < 1:
        raise FedpktError(f"batch_size is {batch_size}; expected at least 1")
    if steps < 1:
        raise FedpktError(f"DP planned steps is {steps}; expected at least 1")
    from opacus.accountants.utils import get_noise_multiplier  # opacus only when DP is on

    batch = min(batch_size, num_examples)
    rate = batch / num_examples
    try:
        sigma = get_noise_multiplier(
            target_epsilon=dp.epsilon,
            target_delta=dp.delta,
            sample_rate=rate,
            steps=steps,
            accountant=ACCOUNTANT,
            alphas=RDP_ALPHAS,
        )
    except ValueError as exc:  # opacus: the search for σ did not bracket the target
        raise FedpktError(
            f"dp.epsilon {dp.epsilon} is unreachable for q={rate:.4g}, {steps} steps, "
            f"delta={dp.delta} ({exc}); expected a larger epsilon or delta"
        ) from exc
    return DPPlan(sigma, rate, steps, batch, dp.max_grad_norm, dp.epsilon, dp.delta)


# --- the per-example loss ----------------------------------------------------------------------


def per_example_response_loss(
    model: nn.Module, states: Tensor | None, batch: Batch, method: PeftMethod | None = None
) -> Tensor:
    """Each example's mean cross-entropy over its own response tokens: (batch,) float32.

    ``states`` (batch, m, width) of ``method`` (default: prefix tuning) or None; ``batch``
    holds input_ids/attention_mask/labels (batch, T), labels -100 where no loss is taken. Row i
    is S_i / T_i with S_i the summed next-token loss over row i's labelled positions and T_i
    their number.
    """
    output = peft_forward(method, model, batch["input_ids"], batch["attention_mask"], states)
    logits = output.logits[:, :-1].float()
    targets = batch["labels"][:, 1:].to(logits.device)
    per_token = nn.functional.cross_entropy(
        logits.transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
    )  # (batch, T-1), 0 where ignored
    counts = (targets != IGNORE_INDEX).sum(dim=1)
    if bool((counts == 0).any()):
        row = int((counts == 0).nonzero()[0])
        raise FedpktError(f"batch row {row} has 0 response tokens; expected labels other than -100")
    return per_token.sum(dim=1) / counts


def mean_per_example_loss(
    model: nn.Module, states: Tensor | None, batch: Batch, method: PeftMethod | None = None
) -> Tensor:
    """The batch loss DP-SGD steps on: the mean of the per-example losses (opacus clips each
    example's gradient of its own term, then rescales by the batch size)."""
    return per_example_response_loss(model, states, batch, method).mean()


# --- the private session ----------------------------------------------------------------------


class PrivateTraining:
    """A prefix wrapped for DP-SGD, its optimizer factory and its accountant.

    ``module`` is the ``GradSampleModule`` to train (callable like the prefix: batch size ->
    states); ``optimizer_factory(base)`` turns a base factory (adamw, sgd) into one building a
    ``DPOptimizer`` whose every step is counted by ``accountant``. Use as a context manager (or
    call ``close``) so that the hooks come off the prefix afterwards.
    """

    def __init__(self, prefix: nn.Module, plan: DPPlan, *, seed: int) -> None:
        from opacus import GradSampleModule
        from opacus.accountants import RDPAccountant

        self.plan = plan
        self.module = GradSampleModule(prefix, batch_first=True, loss_reduction="mean")
        self.accountant = RDPAccountant()
        self._seed = seed

    def optimizer_factory(self, base: OptimizerFactory) -> OptimizerFactory:
        """A factory wrapping ``base``'s optimizer in a seeded ``DPOptimizer`` (see module doc)."""
        from opacus.optimizers import DPOptimizer

        plan = self.plan

        def build(
            params: list[nn.Parameter], *, lr: float, weight_decay: float
        ) -> torch.optim.Optimizer:
            optimizer = DPOptimizer(
                base(params, lr=lr, weight_decay=weight_decay),
                noise_multiplier=plan.noise_multiplier,
                max_grad_norm=plan.max_grad_norm,
                expected_batch_size=plan.batch_size,
                loss_reduction="mean",
                generator=torch.Generator(device=params[0].device).manual_seed(self._seed),
            )
            optimizer.attach_step_hook(self.accountant.get_optimizer_hook_fn(plan.sample_rate))
            return optimizer

        return build

    @property
    def steps_taken(self) -> int:
        """DP steps the accountant has counted."""
        return sum(steps for _, _, steps in self.accountant.history)

    @property
    def epsilon(self) -> float:
        """ε spent so far at ``plan.delta`` (0 before the first step)."""
        if not self.accountant.history:
            return 0.0
        return float(self.accountant.get_epsilon(delta=self.plan.delta, alphas=RDP_ALPHAS))

    def close(self) -> None:
        """Remove opacus's hooks and per-sample buffers from the prefix."""
        self.module._close()

    def __enter__(self) -> PrivateTraining:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def private(prefix: nn.Module, plan: DPPlan, *, seed: int) -> Iterator[PrivateTraining]:
    """``with private(prefix, plan, seed=s) as dp: ...`` — a ``PrivateTraining`` that cleans up."""
    session = PrivateTraining(prefix, plan, seed=seed)
    try:
        yield session
    finally:
        session.close()


# --- the two client trainings under DP ------------------------------------------------------


@dataclass(frozen=True)
class DPTrainResult:
    """Phase-2 DP training: the loop's result, the ε spent and the plan it ran under."""

    result: TrainResult
    epsilon: float
    plan: DPPlan


def train_prefix_dp(
    backbone: Backbone | nn.Module,
    prefix: nn.Module,
    train: Sequence[EncodedExample],
    valid: Sequence[EncodedExample],
    dp: DPConfig,
    settings: LoopSettings,
    *,
    progress: ProgressFn | None = None,
    optimizer_factory: OptimizerFactory = adamw,
) -> DPTrainResult:
    """``train_prefix`` under DP-SGD: the same ``train_loop`` (epochs, schedule, early stopping,
    best state restored), with the per-example loss, no global clip and a ``DPOptimizer``.

    σ is calibrated for all ``max_epochs · ceil(N / B)`` steps; ε is what the steps actually run
    spent. ``settings.max_grad_norm`` is not used: DP clips per example, and a second, global
    clip would be wrong. On return ``prefix`` (unwrapped, hooks removed) is in eval mode.
    """
    model, tokenizer = backbone_parts(backbone)
    settings = settings.unclipped()
    batch_size = settings.batch_size
    steps = settings.max_epochs * math.ceil(max(len(train), 1) / batch_size)
    plan = plan_dp(dp, num_examples=len(train), batch_size=batch_size, steps=steps)
    with private(prefix, plan, seed=settings.seed) as session:
        wrapped = session.module
        method = method_of(prefix)

        def loss_fn(batch: Batch) -> Tensor:
            states = wrapped(batch["input_ids"].shape[0])
            return mean_per_example_loss(model, states, batch, method)

        def valid_loss() -> float:
            return evaluate_loss(model, prefix, valid, batch_size)

        wrapped.train()
        try:
            result = train_loop(
                list(wrapped.parameters()),
                train,
                collate_for(model, pad_id_for(model, tokenizer)),
                loss_fn,
                valid_loss if len(valid) > 0 else None,
                settings,
                optimizer_factory=session.optimizer_factory(optimizer_factory),
                progress=progress,
            )
        finally:
            prefix.eval()
        return DPTrainResult(result, session.epsilon, plan)


@dataclass(frozen=True)
class DPInnerResult:
    """Phase-1 DP inner loop: the inner result, the ε of these steps and the plan."""

    result: InnerResult
    epsilon: float
    plan: DPPlan


def dp_inner_steps(
    backbone: Backbone | nn.Module,
    prefix: nn.Module,
    train: Sequence[EncodedExample],
    dp: DPConfig,
    settings: InnerSettings,
    *,
    planned_steps: int | None = None,
    optimizer_factory: OptimizerFactory = sgd,
) -> DPInnerResult:
    """PPReptile's k SGD steps (``sgd_inner_steps``' batches and update) under DP-SGD.

    ``planned_steps`` (default ``settings.steps``) is what σ is calibrated for: pass rounds · k so
    that a client picked in every phase-1 round still stays within ε over the whole phase. The
    returned ε is that of these ``settings.steps`` steps alone.
    """
    model, tokenizer = backbone_parts(backbone)
    steps = settings.steps
    planned = steps if planned_steps is None else planned_steps
    if planned < steps:
        raise FedpktError(f"planned_steps is {planned}; expected at least steps ({steps})")
    plan = plan_dp(dp, num_examples=len(train), batch_size=settings.batch_size, steps=planned)
    with private(prefix, plan, seed=settings.seed) as session:
        inner = inner_steps(
            model,
            session.module,
            session.module,
            train,
            settings,
            pad_id=pad_id_for(model, tokenizer),
            optimizer_factory=session.optimizer_factory(optimizer_factory),
            loss_fn=mean_per_example_loss,
        )
        return DPInnerResult(inner, session.epsilon, plan)
