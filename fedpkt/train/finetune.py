"""Full fine-tuning of a causal LM: the paper's centralized baselines (Fine-tuning, Persona +
Fine-tuning, Persona_id + Fine-tuning, Reptile + Fine-tuning), through the same loop as prefixes.

The process-wide backbone is frozen and shared, so a baseline first takes its own trainable copy
(``trainable_copy``) and fine-tunes that; nothing here unfreezes the shared model.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

from torch import nn

from fedpkt.data.encoding import EncodedExample
from fedpkt.train.loop import (
    LoopSettings,
    OptimizerFactory,
    ProgressFn,
    TrainResult,
    adamw,
    fit,
    pad_id_for,
)


def trainable_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every parameter trainable; the original stays frozen.

    Half-precision weights are copied as float32: AdamW updates underflow in bf16/fp16.
    """
    clone = copy.deepcopy(model)
    if any(p.is_floating_point() and p.element_size() < 4 for p in clone.parameters()):
        clone = clone.float()
    return clone.requires_grad_(True)


def finetune(
    model: nn.Module,
    tokenizer: object | None,
    train: Sequence[EncodedExample],
    valid: Sequence[EncodedExample],
    settings: LoopSettings,
    *,
    progress: ProgressFn | None = None,
    optimizer_factory: OptimizerFactory = adamw,
) -> TrainResult:
    """Fine-tune every trainable parameter of ``model`` in place, with early stopping.

    Pass a ``trainable_copy`` of the backbone; ``tokenizer`` supplies the pad id (None: the
    model config's). Dropout is on during the updates; on return the model is in eval mode and
    holds its best-validation state (see ``fedpkt.train.loop.train_loop``).
    """
    return fit(
        model,
        None,
        model,
        train,
        valid,
        settings,
        pad_id=pad_id_for(model, tokenizer),
        optimizer_factory=optimizer_factory,
        progress=progress,
    )
