"""Reptile's inner loop, W_i = SGD(L_i, θ, α, k): k plain SGD steps on one persona's data.

PPReptile (phase 1) runs it on a prefix with the backbone frozen; the full-model Reptile
baseline runs it on a trainable copy of the backbone, and DP-SGD (``fedpkt.train.dp``) runs it
with opacus's optimizer and a per-example loss. All go through ``inner_steps``, and each
update is ``fedpkt.train.loop.optimizer_step``, the same update the epoch loop makes.

Batches: every step draws ``min(batch_size, n)`` distinct examples uniformly from a
``torch.Generator`` seeded with ``seed``, independently of the other steps. A client with fewer
than ``k · batch_size`` examples therefore sees examples again across steps (sampling with
replacement across steps, without replacement inside a batch), and any client's k steps are
reproducible from (θ, data, seed) alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from fedpkt.data.encoding import EncodedExample
from fedpkt.errors import FedpktError
from fedpkt.model.backbone import Backbone
from fedpkt.peft import PeftMethod, method_of
from fedpkt.train.loop import (
    Batch,
    OptimizerFactory,
    StatesFn,
    collate_for,
    optimizer_step,
    pad_id_for,
    response_loss,
    seeded_rng,
    sgd,
    trainable,
)
from fedpkt.train.prefix_training import backbone_parts

if TYPE_CHECKING:
    from fedpkt.config import Phase1Config


@dataclass(frozen=True)
class InnerSettings:
    """One client's inner loop (paper eq. 2): k = ``steps`` SGD steps of learning rate α =
    ``lr`` on batches of b_in = ``batch_size`` examples, drawn from ``seed``.

    A run's come from ``[phase1]`` through ``for_phase1`` (the one mapping); a Flower client
    gets the same three numbers in its train message. Raises FedpktError on construction for a
    non-positive lr, steps or batch size.
    """

    lr: float
    steps: int
    batch_size: int
    seed: int

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise FedpktError(f"lr is {self.lr!r}; expected a number > 0")
        for name, value in (("steps", self.steps), ("batch_size", self.batch_size)):
            if not (isinstance(value, int) and value >= 1):
                raise FedpktError(f"{name} is {value!r}; expected an integer >= 1")

    @classmethod
    def for_phase1(cls, phase1: Phase1Config, seed: int) -> InnerSettings:
        """``phase1.inner_lr``, ``inner_steps`` and ``inner_batch_size``, with ``seed``."""
        return cls(phase1.inner_lr, phase1.inner_steps, phase1.inner_batch_size, seed)


@dataclass(frozen=True)
class InnerResult:
    """One client's inner loop: mean batch loss over the k steps (each taken before its
    update), the client's example count n_i (the weight a server may use) and k."""

    mean_loss: float
    num_examples: int
    steps: int


def step_batches(num_examples: int, steps: int, batch_size: int, seed: int) -> list[list[int]]:
    """The example indices of each of ``steps`` batches (see the module doc for the scheme)."""
    if num_examples < 1:
        raise FedpktError("inner loop got 0 training examples; expected at least 1")
    if steps < 1:
        raise FedpktError(f"steps is {steps}; expected at least 1")
    if batch_size < 1:
        raise FedpktError(f"batch_size is {batch_size}; expected at least 1")
    generator = torch.Generator().manual_seed(seed)
    size = min(batch_size, num_examples)
    return [torch.randperm(num_examples, generator=generator)[:size].tolist() for _ in range(steps)]


LossFn = Callable[[nn.Module, Tensor | None, Batch, PeftMethod], Tensor]
"""(model, states, batch, the states' PEFT method) -> the loss to step on."""


def inner_steps(
    model: nn.Module,
    states_fn: StatesFn | None,
    trained: nn.Module,
    train: Sequence[EncodedExample],
    settings: InnerSettings,
    *,
    pad_id: int | None,
    optimizer_factory: OptimizerFactory,
    loss_fn: LossFn = response_loss,
) -> InnerResult:
    """k updates of ``trained``'s parameters by ``loss_fn`` of ``model`` under ``states_fn``
    (None: the bare model, which is then ``trained``).

    ``loss_fn`` and ``optimizer_factory`` are the DP-SGD seam: opacus needs a loss whose
    per-example gradients do not mix examples, and its own optimizer; the batches, seeds and
    update are this loop's, so a DP client's k steps differ from a plain one only by those two.
    """
    seed = settings.seed
    batches = step_batches(len(train), settings.steps, settings.batch_size, seed)
    params = trainable(list(trained.parameters()), "the inner-loop module")
    optimizer = optimizer_factory(params, lr=settings.lr, weight_decay=0.0)
    collate_fn = collate_for(model, pad_id)
    losses: list[float] = []
    method = method_of(states_fn)
    trained.train()
    try:
        with seeded_rng(seed):
            for step, indices in enumerate(batches, start=1):
                batch = collate_fn([train[i] for i in indices])
                states: Tensor | None = None
                if states_fn is not None:
                    states = states_fn(len(indices))
                losses.append(
                    optimizer_step(
                        params,
                        optimizer,
                        loss_fn(model, states, batch, method),
                        max_grad_norm=None,
                        where=f"inner step {step}",
                    )
                )
    finally:
        trained.eval()
    return InnerResult(sum(losses) / len(losses), len(train), len(losses))


def sgd_inner_steps(
    backbone: Backbone | nn.Module,
    prefix: nn.Module,
    train: Sequence[EncodedExample],
    settings: InnerSettings,
    *,
    optimizer_factory: OptimizerFactory = sgd,
) -> InnerResult:
    """PPReptile's client step: ``settings.steps`` SGD updates of ``prefix`` (in place), lr α,
    batches of b_in examples; the backbone stays frozen.

    ``optimizer_factory`` is the DP-SGD seam (default: plain SGD without momentum).
    """
    model, tokenizer = backbone_parts(backbone)
    return inner_steps(
        model,
        prefix,
        prefix,
        train,
        settings,
        pad_id=pad_id_for(model, tokenizer),
        optimizer_factory=optimizer_factory,
    )


def sgd_inner_steps_model(
    model: nn.Module,
    train: Sequence[EncodedExample],
    settings: InnerSettings,
    *,
    tokenizer: object | None = None,
    optimizer_factory: OptimizerFactory = sgd,
) -> InnerResult:
    """Full-model Reptile's client step: ``steps`` SGD updates of every trainable parameter of
    ``model`` (in place; pass a ``trainable_copy``), same batching as ``sgd_inner_steps``."""
    return inner_steps(
        model,
        None,
        model,
        train,
        settings,
        pad_id=pad_id_for(model, tokenizer),
        optimizer_factory=optimizer_factory,
    )
