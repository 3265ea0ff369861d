"""The one local training loop, and the response-token loss every trainer and evaluator uses.

Prefix training (phase 2, the source prefix trained centrally), full fine-tuning (the centralized
baselines) and the k-step inner loop (phase 1) differ only in *what* is trained and *how a batch's
loss is computed*; everything else lives here once, so that federated clients and centralized
baselines run literally the same code:

- ``train_loop``: epochs over a seeded shuffle, AdamW + linear schedule with warmup, gradient
  clipping, early stopping on validation loss with patience (the best state is restored).
- ``optimizer_step``: one update (finite-loss check, backward, clip, step) shared with the inner
  loop.
- ``OptimizerFactory``: the seam where DP-SGD plugs in. A DP variant passes a factory returning an
  opacus ``DPOptimizer`` (per-sample clipping and noise inside ``step``), sets
  ``max_grad_norm=None`` (no second, global clip) and hands the trainer a ``GradSampleModule``
  around the prefix; the loop itself needs no change.
- ``response_loss`` / ``evaluate_loss``: cross-entropy on the persona's response tokens only
  (labels are -100 elsewhere), token-weighted: the mean over all response tokens of all
  examples, so a long reply counts in proportion to its length, exactly as HF's causal-LM loss
  averages a batch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol, TypeVar

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import Tensor, nn
from transformers import get_linear_schedule_with_warmup

from fedpkt.data.encoding import IGNORE_INDEX, EncodedExample, collate, pad_token_id
from fedpkt.errors import FedpktError
from fedpkt.peft import PeftMethod, method_of, peft_forward

if TYPE_CHECKING:
    from fedpkt.config import Phase2Config

Batch = dict[str, Tensor]
StatesFn = Callable[[int], Tensor]
"""Batch size -> states (batch, m, width); a PEFT method's module is one (``fedpkt.peft``)."""

T = TypeVar("T")


# --- results and progress ----------------------------------------------------------------------


@dataclass
class TrainResult:
    """What one training run did.

    Attributes:
        best_epoch: epoch whose parameters were kept (1-based); 0 when no epoch beat the
            validation loss of the initial parameters, which are then kept unchanged.
        train_losses: per epoch, the mean of its batch losses (each a token mean).
        valid_losses: per epoch, the token-weighted validation loss after that epoch
            (empty when there is no validation data: then no early stopping).
        initial_valid_loss: validation loss before the first update (nan without validation).
        steps: optimizer updates made.
        stopped_early: True when patience ran out before ``max_epochs``.
        seconds: wall time of the run.
    """

    best_epoch: int
    train_losses: list[float] = field(default_factory=list)
    valid_losses: list[float] = field(default_factory=list)
    initial_valid_loss: float = math.nan
    steps: int = 0
    stopped_early: bool = False
    seconds: float = 0.0

    @property
    def epochs(self) -> int:
        """Epochs actually run."""
        return len(self.train_losses)

    @property
    def best_valid_loss(self) -> float:
        """Validation loss of the kept parameters (nan without validation)."""
        if self.best_epoch == 0:
            return self.initial_valid_loss
        return self.valid_losses[self.best_epoch - 1]


@dataclass(frozen=True)
class StepEvent:
    """Reported to the progress callback after every optimizer update.

    ``lr`` is the learning rate the update used; ``loss`` the batch loss before it.
    """

    epoch: int
    step: int
    total_steps: int
    loss: float
    lr: float


ProgressFn = Callable[[StepEvent], None]


@contextmanager
def rich_progress(description: str, console: Console | None = None) -> Iterator[ProgressFn]:
    """A rich progress bar as a ``ProgressFn``: ``with rich_progress("B-0003") as cb: ...``.

    The bar shows steps done of the total, the epoch and the last batch loss, and disappears
    when the block ends (``transient``) so that per-client bars do not pile up in a log.
    """
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("epoch {task.fields[epoch]} loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(description, total=None, epoch=0, loss=math.nan)

        def update(event: StepEvent) -> None:
            bar.update(
                task,
                completed=event.step,
                total=event.total_steps,
                epoch=event.epoch,
                loss=event.loss,
            )

        yield update


# --- the optimizer seam ------------------------------------------------------------------------


class OptimizerFactory(Protocol):
    """Builds the optimizer for the trained parameters (swap it to plug in DP-SGD)."""

    def __call__(
        self, params: list[nn.Parameter], *, lr: float, weight_decay: float
    ) -> torch.optim.Optimizer: ...


def adamw(params: list[nn.Parameter], *, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW, the paper's optimizer for every trained model."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def sgd(params: list[nn.Parameter], *, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """Plain SGD (no momentum): Reptile's inner loop, W = SGD(L, θ, α, k)."""
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)


@dataclass(frozen=True)
class LoopSettings:
    """Hyper-parameters of ``train_loop`` (validated on construction, one-line errors).

    What ``train_prefix``, ``finetune`` and ``train_prefix_dp`` take. A run's settings come
    from its ``[phase2]`` section through ``for_phase2`` (the one mapping); the defaults here
    serve tests and benchmarks. ``max_grad_norm=None`` disables global clipping (for DP-SGD,
    which clips per sample).
    """

    lr: float
    batch_size: int
    max_epochs: int
    patience: int
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        positive = {"lr": self.lr}
        at_least_one = {
            "batch_size": self.batch_size,
            "max_epochs": self.max_epochs,
            "patience": self.patience,
        }
        for name, value in positive.items():
            if not value > 0:
                raise FedpktError(f"{name} is {value!r}; expected a number > 0")
        for name, value in at_least_one.items():
            if not (isinstance(value, int) and value >= 1):
                raise FedpktError(f"{name} is {value!r}; expected an integer >= 1")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise FedpktError(f"warmup_ratio is {self.warmup_ratio!r}; expected 0 <= value < 1")
        if self.weight_decay < 0:
            raise FedpktError(f"weight_decay is {self.weight_decay!r}; expected >= 0")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise FedpktError(f"max_grad_norm is {self.max_grad_norm!r}; expected > 0 or None")

    @classmethod
    def for_phase2(
        cls, phase2: Phase2Config, seed: int, *, lr: float | None = None
    ) -> LoopSettings:
        """Phase 2's schedule for one persona (``lr``: another learning rate, e.g. the full
        fine-tuning baselines' ``phase2.finetune_lr``)."""
        return cls(
            lr=phase2.lr if lr is None else lr,
            batch_size=phase2.batch_size,
            max_epochs=phase2.max_epochs,
            patience=phase2.patience,
            warmup_ratio=phase2.warmup_ratio,
            weight_decay=phase2.weight_decay,
            max_grad_norm=phase2.max_grad_norm,
            seed=seed,
        )

    def unclipped(self) -> LoopSettings:
        """The same settings without the global gradient clip (DP-SGD clips per example)."""
        return replace(self, max_grad_norm=None)


# --- one update, shared by every loop ------------------------------------------------------------


def trainable(params: Sequence[nn.Parameter], what: str) -> list[nn.Parameter]:
    """The parameters that require grad; a one-line error when there are none."""
    kept = [p for p in params if p.requires_grad]
    if not kept:
        raise FedpktError(f"{what} has no trainable parameters; expected requires_grad=True")
    return kept


def optimizer_step(
    params: Sequence[nn.Parameter],
    optimizer: torch.optim.Optimizer,
    loss: Tensor,
    *,
    max_grad_norm: float | None,
    where: str,
) -> float:
    """Backpropagate ``loss`` and update ``params``; returns the loss value.

    A NaN/Inf loss stops training with one line naming ``where`` it happened, before any
    parameter is touched (a diverged run must not silently produce a garbage prefix).
    """
    value = finite_loss(loss, where)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    apply_gradients(params, optimizer, max_grad_norm)
    return value


def finite_loss(loss: Tensor, where: str) -> float:
    """The loss as a float; FedpktError naming ``where`` when it is NaN or infinite."""
    value = float(loss.detach())
    if not math.isfinite(value):
        raise FedpktError(
            f"training loss is {value} at {where}; expected a finite value "
            "(lower the learning rate or check the initial parameters)"
        )
    return value


def apply_gradients(
    params: Sequence[nn.Parameter], optimizer: torch.optim.Optimizer, max_grad_norm: float | None
) -> None:
    """Clip (global norm over ``params``, unless None) and step, then clear the gradients."""
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


@contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Seed the global RNGs (CPU and initialised CUDA devices) inside a forked state.

    Dropout draws from the global RNG; forking keeps a run reproducible from ``seed`` without
    changing the caller's random stream.
    """
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    devices = list(range(torch.cuda.device_count())) if cuda else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def snapshot_params(params: Sequence[nn.Parameter]) -> list[Tensor]:
    return [p.detach().clone() for p in params]


def restore_params(params: Sequence[nn.Parameter], state: Sequence[Tensor]) -> None:
    with torch.no_grad():
        for param, saved in zip(params, state, strict=True):
            param.copy_(saved)


def check_finite_valid(value: float, epoch: int) -> float:
    if not math.isfinite(value):
        raise FedpktError(f"validation loss is {value} after epoch {epoch}; expected finite")
    return value


# --- the loop ----------------------------------------------------------------------------------


def train_loop(
    params: Sequence[nn.Parameter],
    train: Sequence[T],
    collate_fn: Callable[[list[T]], Batch],
    loss_fn: Callable[[Batch], Tensor],
    valid_loss_fn: Callable[[], float] | None,
    settings: LoopSettings,
    *,
    optimizer_factory: OptimizerFactory = adamw,
    progress: ProgressFn | None = None,
) -> TrainResult:
    """Train ``params`` on ``train`` by minimising ``loss_fn``; keep the best-validation state.

    Each epoch visits every example once in an order drawn from a ``torch.Generator`` seeded
    with ``settings.seed``; the learning rate follows a linear warmup over
    ``round(warmup_ratio · total_steps)`` steps then decays linearly to 0 at
    ``total_steps = max_epochs · ceil(len(train) / batch_size)``. Any other randomness inside
    ``loss_fn`` (dropout) draws from the global RNG, which is re-seeded from ``settings.seed``
    inside a forked RNG state, so a run is reproducible and the caller's RNG is left untouched.

    Early stopping: the validation loss is measured before training and after each epoch; after
    ``patience`` epochs without a strict improvement training stops, and the parameters of the
    best epoch (or the initial ones) are copied back. Without ``valid_loss_fn`` all
    ``max_epochs`` run and the last parameters are kept.
    """
    params = trainable(params, "the trained module")
    if len(train) == 0:
        raise FedpktError("training set has 0 examples; expected at least 1")
    started = time.perf_counter()
    steps_per_epoch = math.ceil(len(train) / settings.batch_size)
    total_steps = steps_per_epoch * settings.max_epochs
    optimizer = optimizer_factory(params, lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = get_linear_schedule_with_warmup(
        optimizer, round(settings.warmup_ratio * total_steps), total_steps
    )
    order_rng = torch.Generator().manual_seed(settings.seed)
    result = TrainResult(best_epoch=0)

    with seeded_rng(settings.seed):
        best = math.inf
        best_state: list[Tensor] | None = None
        if valid_loss_fn is not None:
            best = result.initial_valid_loss = check_finite_valid(valid_loss_fn(), 0)
            best_state = snapshot_params(params)
        stale = 0
        for epoch in range(1, settings.max_epochs + 1):
            order = torch.randperm(len(train), generator=order_rng).tolist()
            losses = []
            for start in range(0, len(train), settings.batch_size):
                batch = collate_fn([train[i] for i in order[start : start + settings.batch_size]])
                lr = scheduler.get_last_lr()[0]
                loss = optimizer_step(
                    params,
                    optimizer,
                    loss_fn(batch),
                    max_grad_norm=settings.max_grad_norm,
                    where=f"epoch {epoch} step {result.steps + 1}",
                )
                scheduler.step()
                result.steps += 1
                losses.append(loss)
                if progress is not None:
                    progress(StepEvent(epoch, result.steps, total_steps, loss, lr))
            result.train_losses.append(sum(losses) / len(losses))
            if valid_loss_fn is None:
                result.best_epoch = epoch
                continue
            valid = check_finite_valid(valid_loss_fn(), epoch)
            result.valid_losses.append(valid)
            if valid < best:
                best, result.best_epoch, best_state, stale = (
                    valid,
                    epoch,
                    snapshot_params(params),
                    0,
                )
            else:
                stale += 1
                if stale >= settings.patience and epoch < settings.max_epochs:
                    result.stopped_early = True
                    break
        if best_state is not None:
            restore_params(params, best_state)
    result.seconds = time.perf_counter() - started
    return result


# --- the response-token loss -------------------------------------------------------------------


def pad_id_for(model: nn.Module, tokenizer: object | None = None) -> int:
    """The id that pads batches: the tokenizer's (``pad_token_id``), else the model config's pad
    or EOS id, else 0. Its value never changes a loss: padded positions are masked as keys and
    carry label -100.
    """
    if tokenizer is not None:
        return pad_token_id(tokenizer)
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(model.config, name, None)
        if isinstance(value, list):
            value = value[0] if value else None
        if isinstance(value, int):
            return value
    return 0


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (where batches must go)."""
    return next(model.parameters()).device


def collate_for(
    model: nn.Module, pad_id: int | None = None
) -> Callable[[list[EncodedExample]], Batch]:
    """A collate function that right-pads (with ``pad_id_for(model)`` by default) onto the
    model's device."""
    pad_id = pad_id_for(model) if pad_id is None else pad_id
    device = model_device(model)

    def collate_fn(examples: list[EncodedExample]) -> Batch:
        return {key: value.to(device) for key, value in collate(examples, pad_id).items()}

    return collate_fn


def response_nll(logits: Tensor, labels: Tensor) -> tuple[Tensor, int]:
    """Summed next-token cross-entropy over labelled positions, and how many there are.

    ``logits`` (batch, T, vocab) predict token t+1 at position t; ``labels`` (batch, T) hold the
    target ids aligned with the input (HF convention) and -100 where no loss is taken (prompt,
    padding). Computed in float32 at least (float64 logits stay float64), whatever the
    model's dtype.
    """
    shifted, targets = _shifted(logits, labels)
    total = F.cross_entropy(
        shifted.reshape(-1, shifted.shape[-1]),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return total, int((targets != IGNORE_INDEX).sum())


def response_nll_rows(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """``response_nll`` per row: summed cross-entropy (batch,) and labelled positions (batch,).

    Used where one batch holds several personas' rows (``fedpkt.train.cohort``) and each
    persona's token mean must be formed from its own rows only.
    """
    shifted, targets = _shifted(logits, labels)
    per_token = F.cross_entropy(
        shifted.transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
    )
    return per_token.sum(dim=1), (targets != IGNORE_INDEX).sum(dim=1)


def _shifted(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Logits at positions 0..T-2 (float32 or wider) and the labels they predict (1..T-1)."""
    shifted = logits[:, :-1]
    shifted = shifted.to(torch.promote_types(shifted.dtype, torch.float32))
    return shifted, labels[:, 1:].to(shifted.device)


def response_loss(
    model: nn.Module, states: Tensor | None, batch: Batch, method: PeftMethod | None = None
) -> Tensor:
    """Mean cross-entropy over the response tokens of ``batch`` (token-weighted).

    ``states`` (batch, m, width) of ``method`` (default: prefix tuning) or None for the bare
    model.
    """
    output = peft_forward(method, model, batch["input_ids"], batch["attention_mask"], states)
    total, count = response_nll(output.logits, batch["labels"])
    if count == 0:
        raise FedpktError("batch has 0 response tokens; expected labels other than -100")
    return total / count


@contextmanager
def eval_mode(*modules: nn.Module | None) -> Iterator[None]:
    """Put ``modules`` in eval mode (no dropout), restoring each one's previous mode after."""
    present = [module for module in modules if isinstance(module, nn.Module)]
    previous = [module.training for module in present]
    for module in present:
        module.eval()
    try:
        yield
    finally:
        for module, was_training in zip(present, previous, strict=True):
            module.train(was_training)


def evaluate_loss(
    model: nn.Module,
    states_fn: StatesFn | None,
    examples: Sequence[EncodedExample],
    batch_size: int = 8,
) -> float:
    """Token-weighted mean cross-entropy of ``model`` (under a prefix) on response tokens.

    ``states_fn`` maps a batch size to prefix states (a ``PersonaPrefix`` does), or None for the
    bare model. The result is sum(token losses) / number of response tokens over all
    ``examples``: one number per split, independent of ``batch_size``. Runs without gradients
    and in eval mode (model and prefix), restoring their modes afterwards.
    """
    if len(examples) == 0:
        raise FedpktError("evaluation set has 0 examples; expected at least 1")
    if batch_size < 1:
        raise FedpktError(f"batch_size is {batch_size}; expected at least 1")
    collate_fn = collate_for(model)
    prefix_module = states_fn if isinstance(states_fn, nn.Module) else None
    method = method_of(states_fn)
    total, count = 0.0, 0
    with torch.no_grad(), eval_mode(model, prefix_module):
        for start in range(0, len(examples), batch_size):
            batch = collate_fn(list(examples[start : start + batch_size]))
            states = states_fn(batch["input_ids"].shape[0]) if states_fn is not None else None
            output = peft_forward(
                method, model, batch["input_ids"], batch["attention_mask"], states
            )
            batch_total, batch_count = response_nll(output.logits, batch["labels"])
            total += float(batch_total)
            count += batch_count
    if count == 0:
        raise FedpktError("evaluation set has 0 response tokens; expected labels other than -100")
    return total / count


# --- the loop applied to a language model ---------------------------------------------------------


def fit(
    model: nn.Module,
    states_fn: StatesFn | None,
    trained: nn.Module,
    train: Sequence[EncodedExample],
    valid: Sequence[EncodedExample],
    settings: LoopSettings,
    *,
    pad_id: int | None = None,
    optimizer_factory: OptimizerFactory = adamw,
    progress: ProgressFn | None = None,
) -> TrainResult:
    """``train_loop`` on the response-token loss of ``model`` under ``states_fn``.

    ``trained`` owns the optimised parameters: the prefix (``states_fn`` is then the prefix too)
    or the model itself (``states_fn`` None, full fine-tuning). It is in train mode for the
    updates and in eval mode on return, holding its best-validation state. Validation uses
    ``evaluate_loss`` on ``valid``; an empty ``valid`` means no early stopping.
    """

    method = method_of(states_fn)

    def loss_fn(batch: Batch) -> Tensor:
        states = states_fn(batch["input_ids"].shape[0]) if states_fn is not None else None
        return response_loss(model, states, batch, method)

    def valid_loss() -> float:
        return evaluate_loss(model, states_fn, valid, settings.batch_size)

    trained.train()
    try:
        return train_loop(
            list(trained.parameters()),
            train,
            collate_for(model, pad_id),
            loss_fn,
            valid_loss if len(valid) > 0 else None,
            settings,
            optimizer_factory=optimizer_factory,
            progress=progress,
        )
    finally:
        trained.eval()
