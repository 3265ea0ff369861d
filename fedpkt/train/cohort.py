"""Cohort training: many personas' prefixes trained together, one backbone pass per step.

Phase 2 personalizes many personas against one frozen backbone. One persona's step is tiny (a
batch of 4 rows), so training them one at a time leaves a GPU, and to a lesser degree a CPU's
vector units, mostly idle. ``train_cohort`` runs ``fedpkt.train.loop.train_loop``'s algorithm
for every persona of a cohort at once: at each step every active persona contributes its own
next batch, the rows are concatenated (each row under its own persona's prefix, through the
PEFT method's ``forward``, ``fedpkt.peft``; one method per cohort) and one forward/backward
pass serves them all. Per persona, exactly as
``train_loop`` does alone:

- its own parameters, AdamW state, linear schedule (over its own number of steps) and gradient
  clipping (over its own parameters);
- its own shuffled order, drawn from a ``torch.Generator`` seeded with its ``LoopSettings.seed``;
- its own loss, the token mean over its own response tokens. The cohort minimises the *sum* of
  the personas' losses: rows never interact in a causal LM's forward pass, so
  ∂(Σ_j loss_j)/∂prefix_i = ∂loss_i/∂prefix_i and no persona's gradient touches another's prefix;
- early stopping on its own validation split (the validation passes of all personas that
  finished an epoch are batched together too), then its best state is restored.

Continuous batching: when a persona stops (patience ran out, ``max_epochs`` reached, or its loss
went non-finite, which fails that persona alone), its slot goes to the next persona of the queue,
so the batch stays full while work remains.

The contract is equivalence with one-at-a-time training (``tests/test_cohort.py``): the same
stopping epochs and ``allclose`` prefixes. Only floating-point rounding differs (matrix shapes
change with the batch); in float64 the two agree to ~1e-10.

No other randomness enters: the frozen backbone runs in eval mode (no dropout) and the prefix
MLP has none, so a persona's run is a function of its own seed whatever its cohort.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import get_linear_schedule_with_warmup

from fedpkt.data.encoding import EncodedExample, collate
from fedpkt.errors import FedpktError
from fedpkt.peft import PeftMethod, method_of, peft_forward
from fedpkt.train.loop import (
    LoopSettings,
    OptimizerFactory,
    TrainResult,
    adamw,
    apply_gradients,
    check_finite_valid,
    eval_mode,
    finite_loss,
    model_device,
    response_nll_rows,
    restore_params,
    snapshot_params,
    trainable,
)

StatesFn = Callable[[int], Tensor]


@dataclass
class CohortJob:
    """One persona's training inputs.

    Attributes:
        key: the persona's name in results and errors (its client id).
        prefix: its trainable prefix (a ``PersonaPrefix``: batch size -> (batch, m, width)).
        train / valid: its own encoded examples; an empty ``valid`` means no early stopping.
        settings: its own loop settings (seed, lr, batch size, epochs, patience, clipping).
    """

    key: str
    prefix: nn.Module
    train: Sequence[EncodedExample]
    valid: Sequence[EncodedExample]
    settings: LoopSettings


@dataclass
class CohortOutcome:
    """What ``train_cohort`` did for one persona: its ``TrainResult``, or why it failed."""

    result: TrainResult | None
    error: str | None = None


class _PersonaRun:
    """One persona's loop state: ``train_loop``'s locals, advanced one step at a time."""

    def __init__(self, job: CohortJob, optimizer_factory: OptimizerFactory) -> None:
        if len(job.train) == 0:
            raise FedpktError("training set has 0 examples; expected at least 1")
        settings = job.settings
        self.job = job
        self.params = trainable(list(job.prefix.parameters()), f"prefix of {job.key}")
        self.total_steps = math.ceil(len(job.train) / settings.batch_size) * settings.max_epochs
        self.optimizer = optimizer_factory(
            self.params, lr=settings.lr, weight_decay=settings.weight_decay
        )
        self.scheduler = get_linear_schedule_with_warmup(
            self.optimizer, round(settings.warmup_ratio * self.total_steps), self.total_steps
        )
        self.order_rng = torch.Generator().manual_seed(settings.seed)
        self.result = TrainResult(best_epoch=0)
        self.started = time.perf_counter()
        self.epoch = 0
        self.order: list[int] = []
        self.cursor = 0
        self.losses: list[float] = []
        self.best = math.inf
        self.best_state: list[Tensor] | None = None
        self.stale = 0
        self.done = False
        # train_loop validates the initial parameters before the first epoch.
        self.needs_valid = len(job.valid) > 0
        if not self.needs_valid:
            self._start_epoch()

    def _start_epoch(self) -> None:
        self.epoch += 1
        self.order = torch.randperm(len(self.job.train), generator=self.order_rng).tolist()
        self.cursor = 0
        self.losses = []

    def next_batch(self) -> list[EncodedExample]:
        size = self.job.settings.batch_size
        return [self.job.train[i] for i in self.order[self.cursor : self.cursor + size]]

    def stepped(self, loss: float) -> None:
        """After one update: count it; at the epoch's end, validate or move on."""
        self.cursor += self.job.settings.batch_size
        self.result.steps += 1
        self.losses.append(loss)
        if self.cursor < len(self.job.train):
            return
        self.result.train_losses.append(sum(self.losses) / len(self.losses))
        if len(self.job.valid) > 0:
            self.needs_valid = True
            return
        self.result.best_epoch = self.epoch
        if self.epoch >= self.job.settings.max_epochs:
            self._finish()
        else:
            self._start_epoch()

    def validated(self, value: float) -> None:
        """The validation loss after epoch ``self.epoch`` (0: the initial parameters)."""
        value = check_finite_valid(value, self.epoch)
        self.needs_valid = False
        if self.epoch == 0:
            self.best = self.result.initial_valid_loss = value
            self.best_state = snapshot_params(self.params)
            self._start_epoch()
            return
        self.result.valid_losses.append(value)
        if value < self.best:
            self.best, self.result.best_epoch = value, self.epoch
            self.best_state, self.stale = snapshot_params(self.params), 0
        else:
            self.stale += 1
            if (
                self.stale >= self.job.settings.patience
                and self.epoch < self.job.settings.max_epochs
            ):
                self.result.stopped_early = True
                self._finish()
                return
        if self.epoch >= self.job.settings.max_epochs:
            self._finish()
        else:
            self._start_epoch()

    def _finish(self) -> None:
        if self.best_state is not None:
            restore_params(self.params, self.best_state)
        self.result.seconds = time.perf_counter() - self.started
        self.done = True


def cohort_losses(
    model: nn.Module,
    items: Sequence[tuple[StatesFn, Sequence[EncodedExample]]],
    *,
    pad_id: int,
    rows: int | None = None,
) -> list[float]:
    """Token-weighted response loss of each (prefix, examples) item, many items per pass.

    The batched form of ``fedpkt.train.loop.evaluate_loss``: item i's loss is the sum of its
    token losses over its own response tokens divided by their number, with rows of several
    items sharing a forward pass (``rows`` rows at most, default ``rows_per_pass(device)``,
    sorted by length to cut padding). No gradients; model and prefixes in eval mode (restored
    after). Raises FedpktError when an item has no examples or no response tokens.
    """
    device = model_device(model)
    rows = rows or rows_per_pass(device)
    if rows < 1:
        raise FedpktError(f"rows is {rows}; expected at least 1")
    for index, (_, examples) in enumerate(items):
        if len(examples) == 0:
            raise FedpktError(f"evaluation set {index} has 0 examples; expected at least 1")
    prefixes = [fn for fn, _ in items if isinstance(fn, nn.Module)]
    method = one_method([fn for fn, _ in items])
    flat = [(i, ex) for i, (_, examples) in enumerate(items) for ex in examples]
    flat.sort(key=lambda row: len(row[1].input_ids))
    totals = [0.0] * len(items)
    counts = [0] * len(items)
    with torch.no_grad(), eval_mode(model, *prefixes):
        states = [fn(1)[0] for fn, _ in items]  # (m, width) each, computed once per item
        for start in range(0, len(flat), rows):
            chunk = flat[start : start + rows]
            batch = {k: v.to(device) for k, v in collate([ex for _, ex in chunk], pad_id).items()}
            row_states = torch.stack([states[i] for i, _ in chunk])
            output = peft_forward(
                method, model, batch["input_ids"], batch["attention_mask"], row_states
            )
            sums, tokens = response_nll_rows(output.logits, batch["labels"])
            for (i, _), row_sum, row_tokens in zip(
                chunk, sums.tolist(), tokens.tolist(), strict=True
            ):
                totals[i] += row_sum
                counts[i] += int(row_tokens)
    for index, count in enumerate(counts):
        if count == 0:
            raise FedpktError(
                f"evaluation set {index} has 0 response tokens; expected labels other than -100"
            )
    return [total / count for total, count in zip(totals, counts, strict=True)]


def train_cohort(
    model: nn.Module,
    jobs: Sequence[CohortJob],
    *,
    cohort_size: int,
    pad_id: int,
    optimizer_factory: OptimizerFactory = adamw,
) -> dict[str, CohortOutcome]:
    """Train every job's prefix in place, ``cohort_size`` personas per backbone pass.

    Jobs enter in order; a finished persona's slot goes to the next one (continuous batching).
    Validation losses of every persona waiting for one are computed together
    (``cohort_losses``). A persona whose loss or validation loss is not finite fails alone:
    its outcome holds the one-line reason and its prefix is left as it was when it failed.
    Returns key -> outcome, in job order. Each prefix ends in eval mode, holding its
    best-validation state.
    """
    if cohort_size < 1:
        raise FedpktError(f"cohort_size is {cohort_size}; expected at least 1")
    keys = [job.key for job in jobs]
    if len(set(keys)) != len(keys):
        raise FedpktError("cohort jobs have duplicate keys; expected one job per persona")
    device = model_device(model)
    queue = deque(jobs)
    active: list[_PersonaRun] = []
    outcomes: dict[str, CohortOutcome] = {}

    def finish(job: CohortJob, result: TrainResult | None, error: str | None = None) -> None:
        job.prefix.eval()
        outcomes[job.key] = CohortOutcome(None if error else result, error)

    with eval_mode(model):
        while queue or active:
            while queue and len(active) < cohort_size:
                job = queue.popleft()
                try:
                    job.prefix.train()
                    active.append(_PersonaRun(job, optimizer_factory))
                except FedpktError as err:
                    finish(job, None, f"{job.key}: {err}")
            waiting = [run for run in active if run.needs_valid]
            if waiting:
                losses = cohort_losses(
                    model,
                    [(run.job.prefix, run.job.valid) for run in waiting],
                    pad_id=pad_id,
                )
                for run, value in zip(waiting, losses, strict=True):
                    try:
                        run.validated(value)
                    except FedpktError as err:
                        run.done = True
                        finish(run.job, None, f"{run.job.key}: {err}")
                        continue
                    if run.done:
                        finish(run.job, run.result)
                active = [run for run in active if not run.done]
                continue
            if not active:
                continue
            _cohort_step(model, active, pad_id, device, finish)
            for run in active:
                if run.done and run.job.key not in outcomes:
                    finish(run.job, run.result)
            active = [run for run in active if not run.done]
    return {key: outcomes[key] for key in keys}


def one_method(modules: Sequence[object]) -> PeftMethod:
    """The PEFT method all of a pass's rows share (``method_of``); rows of different methods
    cannot share one forward pass."""
    methods = {method_of(module).name: method_of(module) for module in modules}
    if len(methods) > 1:
        raise FedpktError(
            f"a cohort mixes PEFT methods {sorted(methods)}; expected one method per cohort"
        )
    return next(iter(methods.values())) if methods else method_of(None)


def rows_per_pass(device: torch.device) -> int:
    """Rows per forward pass of a cohort: on a CPU, passes of similar-length rows cost the
    fewest padded FLOPs (compute-bound already at 16 rows of the embedded backbone); on a GPU,
    one pass for every row keeps the device busy."""
    return CPU_ROWS_PER_PASS if device.type == "cpu" else 1 << 30


CPU_ROWS_PER_PASS = 16
GPU_COHORT_SIZE = 32


def default_cohort_size(device: torch.device) -> int:
    """``phase2.cohort_size = 0``: 1 on a CPU, ``GPU_COHORT_SIZE`` on a GPU.

    On a CPU the embedded backbone is compute-bound: ``bench/phase2_cohort.py`` measured
    cohorts of 8-32 at 0.83-0.98x the CPU time of one persona at a time (padding and the
    per-persona bookkeeping cost what batching saves; ``bench/RESULTS.md``). A GPU runs one
    persona's 4-row step far below capacity, which is what cohorts are for.
    """
    return 1 if device.type == "cpu" else GPU_COHORT_SIZE


def _cohort_step(
    model: nn.Module,
    active: list[_PersonaRun],
    pad_id: int,
    device: torch.device,
    finish: Callable[..., None],
) -> None:
    """One update for every active persona from one backward pass over all their rows.

    The rows of all personas' next batches are sorted by length and run in passes of
    ``rows_per_pass`` rows (less padding); each persona's prefix states are computed once and
    indexed per row. Per-row summed losses are gathered per persona (``index_add``), so each
    persona's loss is its own token mean, and the sum of the personas' losses is
    backpropagated once.
    """
    batches = [run.next_batch() for run in active]
    owners = [k for k, rows in enumerate(batches) for _ in rows]
    flat = [ex for rows in batches for ex in rows]
    order = sorted(range(len(flat)), key=lambda r: len(flat[r].input_ids))
    states = [run.job.prefix(1) for run in active]  # (1, m, width) each
    method = one_method([run.job.prefix for run in active])
    sums = torch.zeros(len(active), dtype=torch.float64, device=device)
    counts = torch.zeros(len(active), dtype=torch.long, device=device)
    step = rows_per_pass(device)
    for start in range(0, len(order), step):
        chunk = order[start : start + step]
        batch = {k: v.to(device) for k, v in collate([flat[r] for r in chunk], pad_id).items()}
        row_states = torch.cat([states[owners[r]] for r in chunk])
        output = peft_forward(
            method, model, batch["input_ids"], batch["attention_mask"], row_states
        )
        row_sums, row_counts = response_nll_rows(output.logits, batch["labels"])
        index = torch.tensor([owners[r] for r in chunk], device=device)
        sums = sums.index_add(0, index, row_sums.to(sums.dtype))
        counts = counts.index_add(0, index, row_counts)
    kept: list[tuple[_PersonaRun, Tensor]] = []
    for k, run in enumerate(active):
        where = f"{run.job.key}, epoch {run.epoch} step {run.result.steps + 1}"
        try:
            if int(counts[k]) == 0:
                raise FedpktError(
                    f"batch has 0 response tokens at {where}; expected labels other than -100"
                )
            loss = sums[k] / counts[k]
            finite_loss(loss, where)
        except FedpktError as err:
            run.done = True
            finish(run.job, None, str(err))
            continue
        kept.append((run, loss))
    if not kept:
        return
    for run, _ in kept:
        run.optimizer.zero_grad(set_to_none=True)
    torch.stack([loss for _, loss in kept]).sum().backward()
    for run, loss in kept:
        apply_gradients(run.params, run.optimizer, run.job.settings.max_grad_norm)
        run.scheduler.step()
        run.stepped(float(loss.detach()))
