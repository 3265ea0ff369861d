"""Prefix training with a frozen backbone: phase 2's personalized prefixes, and source prefixes
trained centrally on pooled data, through the one training loop (``fedpkt.train.loop``).

Only the prefix's parameters reach the optimizer. The backbone is run in whatever mode its owner
left it (eval for the cached frozen backbone: no dropout, nothing of it changes), and gradients
reach the prefix through the backbone's activations.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from fedpkt.data.encoding import EncodedExample
from fedpkt.model.backbone import Backbone
from fedpkt.train.loop import (
    LoopSettings,
    OptimizerFactory,
    ProgressFn,
    TrainResult,
    adamw,
    fit,
    pad_id_for,
)


def backbone_parts(backbone: Backbone | nn.Module) -> tuple[nn.Module, object | None]:
    """(causal LM, tokenizer or None) of a ``Backbone``, or of a bare model."""
    if isinstance(backbone, Backbone):
        return backbone.model, backbone.tokenizer
    return backbone, None


def train_prefix(
    backbone: Backbone | nn.Module,
    prefix: nn.Module,
    train: Sequence[EncodedExample],
    valid: Sequence[EncodedExample],
    settings: LoopSettings,
    *,
    progress: ProgressFn | None = None,
    optimizer_factory: OptimizerFactory = adamw,
) -> TrainResult:
    """Train ``prefix`` in place on ``train`` with early stopping on ``valid``.

    ``prefix`` is a ``PersonaPrefix``, or any module mapping a batch size to states
    (batch, m, width) (e.g. an opacus ``GradSampleModule`` around one, with a DP
    ``optimizer_factory`` and ``settings.unclipped()``). Loss: token-mean cross-entropy on the
    response tokens. On return ``prefix`` is in eval mode and holds its best-validation state
    (the initial one if no epoch improved on it); with an empty ``valid`` all ``max_epochs`` run.
    """
    model, tokenizer = backbone_parts(backbone)
    return fit(
        model,
        prefix,
        prefix,
        train,
        valid,
        settings,
        pad_id=pad_id_for(model, tokenizer),
        optimizer_factory=optimizer_factory,
        progress=progress,
    )
