"""The one training loop: prefix training, full fine-tuning, losses, early stopping, schedule."""

from __future__ import annotations

import io
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from fedpkt.data.encoding import EncodedExample
from fedpkt.errors import FedpktError
from fedpkt.model.prefix import forward_with_prefix
from fedpkt.train.finetune import finetune, trainable_copy
from fedpkt.train.loop import (
    LoopSettings,
    StepEvent,
    evaluate_loss,
    rich_progress,
    sgd,
    train_loop,
)
from fedpkt.train.prefix_training import train_prefix
from tests.training_fixtures import examples, parameters_of, tiny_model, tiny_prefix

PREFIX_SETTINGS = LoopSettings(lr=5e-2, batch_size=2, max_epochs=4, patience=2, seed=0)


class Scalar(nn.Module):
    """One trainable number w, for loops whose every value can be worked out by hand."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(value))


def toy_loop(module: Scalar, settings: LoopSettings, valid=True, progress=None):
    """Train loss (w-3)² on one dummy example per epoch; validation loss (w-1)²."""
    return train_loop(
        list(module.parameters()),
        [0],
        lambda batch: batch,
        lambda batch: (module.w - 3.0) ** 2,
        (lambda: float((module.w.detach() - 1.0) ** 2)) if valid else None,
        settings,
        optimizer_factory=sgd,
        progress=progress,
    )


def test_prefix_training_lowers_the_validation_loss():
    model = tiny_model()
    prefix = tiny_prefix(model, init_std=1.0)
    data = examples()
    before = evaluate_loss(model, prefix, data, batch_size=4)
    result = train_prefix(model, prefix, data, data, PREFIX_SETTINGS)
    after = evaluate_loss(model, prefix, data, batch_size=4)
    assert after < before - 0.1
    assert result.best_valid_loss == pytest.approx(after, rel=1e-5)


def test_prefix_training_changes_only_the_prefix():
    model = tiny_model()
    frozen = parameters_of(model)
    prefix = tiny_prefix(model)
    start = parameters_of(prefix)
    train_prefix(model, prefix, examples(), examples(), PREFIX_SETTINGS)
    assert all(torch.equal(frozen[k], v) for k, v in parameters_of(model).items())
    assert any(not torch.equal(start[k], v) for k, v in parameters_of(prefix).items())


def test_same_seed_gives_identical_parameters():
    model = tiny_model()
    runs = []
    for _ in range(2):
        prefix = tiny_prefix(model, seed=7)
        train_prefix(model, prefix, examples(), examples()[:2], PREFIX_SETTINGS)
        runs.append(parameters_of(prefix))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_a_different_seed_shuffles_differently():
    """Same init, different loop seed: the batch order differs, so the parameters differ."""
    model = tiny_model()
    runs = []
    for seed in (0, 1):
        prefix = tiny_prefix(model, seed=7)
        settings = replace(PREFIX_SETTINGS, seed=seed, max_epochs=1)
        train_prefix(model, prefix, examples(), [], settings)
        runs.append(parameters_of(prefix))
    assert any(not torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_early_stopping_restores_the_best_epoch():
    """SGD on (w-3)² from w=0, validated on (w-1)²; 1 step per epoch, lr 0.1 decaying linearly
    over 10 steps (lr_t = 0.1·(10-t)/10), gradient 2(w-3):

    epoch 1: w = 0     + 0.10·6       = 0.6       valid 0.16
    epoch 2: w = 0.6   + 0.09·4.8     = 1.032     valid 0.001024   (best)
    epoch 3: w = 1.032 + 0.08·3.936   = 1.34688   valid 0.1203
    epoch 4: w = 1.34688 + 0.07·3.30624 = 1.5783168 valid 0.3345  -> patience 2 spent, stop.
    The kept w is epoch 2's.
    """
    module = Scalar(0.0)
    settings = LoopSettings(lr=0.1, batch_size=1, max_epochs=10, patience=2, max_grad_norm=100.0)
    result = toy_loop(module, settings)
    assert result.best_epoch == 2
    assert result.stopped_early
    assert result.steps == 4
    assert result.initial_valid_loss == pytest.approx(1.0)
    assert result.valid_losses == pytest.approx([0.16, 0.001024, 0.12031, 0.33452], abs=1e-4)
    assert float(module.w.detach()) == pytest.approx(1.032, abs=1e-6)


def test_no_improvement_keeps_the_initial_parameters():
    """Starting at w=1 (valid loss 0), every step moves w away from 1: best_epoch is 0."""
    module = Scalar(1.0)
    settings = LoopSettings(lr=0.1, batch_size=1, max_epochs=5, patience=1, max_grad_norm=100.0)
    result = toy_loop(module, settings)
    assert result.best_epoch == 0
    assert result.epochs == 1
    assert float(module.w.detach()) == 1.0


def test_without_validation_all_epochs_run_and_the_last_state_is_kept():
    """lr 0.1 constant-free schedule over 3 steps: lr 0.1, 0.0667, 0.0333; w from 0:
    0.6, then 0.6 + 0.0667·4.8 = 0.92, then 0.92 + 0.0333·4.16 = 1.05867."""
    module = Scalar(0.0)
    settings = LoopSettings(lr=0.1, batch_size=1, max_epochs=3, patience=1, max_grad_norm=100.0)
    result = toy_loop(module, settings, valid=False)
    assert (result.epochs, result.best_epoch, result.valid_losses) == (3, 3, [])
    assert float(module.w.detach()) == pytest.approx(0.6 + 0.32 + 0.138667, abs=1e-5)


def test_warmup_then_linear_decay_learning_rates():
    """5 steps, warmup_ratio 0.4 -> 2 warmup steps; peak 1.0:
    lr = 0/2, 1/2, then (5-2)/(5-2), (5-3)/3, (5-4)/3 = 0, 0.5, 1, 2/3, 1/3."""
    events: list[StepEvent] = []
    settings = LoopSettings(
        lr=1.0, batch_size=1, max_epochs=5, patience=5, warmup_ratio=0.4, max_grad_norm=None
    )
    toy_loop(Scalar(0.0), settings, valid=False, progress=events.append)
    assert [e.lr for e in events] == pytest.approx([0.0, 0.5, 1.0, 2 / 3, 1 / 3])
    assert [e.step for e in events] == [1, 2, 3, 4, 5]
    assert {e.total_steps for e in events} == {5}


def test_gradient_clipping_bounds_the_update():
    """Gradient 2(0-3) = -6 clipped to norm 0.5 -> w = 0 + lr·0.5 = 0.05 (one step, lr 0.1)."""
    module = Scalar(0.0)
    settings = LoopSettings(lr=0.1, batch_size=1, max_epochs=1, patience=1, max_grad_norm=0.5)
    toy_loop(module, settings, valid=False)
    assert float(module.w.detach()) == pytest.approx(0.05)


def test_nan_loss_stops_with_a_one_line_error():
    model = tiny_model()
    prefix = tiny_prefix(model)
    with torch.no_grad():
        prefix.encoder.embedding.weight.fill_(math.nan)
    with pytest.raises(FedpktError, match=r"^training loss is nan at epoch 1 step 1; expected"):
        train_prefix(model, prefix, examples(), [], PREFIX_SETTINGS)


def test_invalid_settings_are_one_line_errors():
    with pytest.raises(FedpktError, match=r"^warmup_ratio is 1.5; expected 0 <= value < 1$"):
        LoopSettings(lr=0.1, batch_size=1, max_epochs=1, patience=1, warmup_ratio=1.5)


def test_evaluate_loss_is_the_token_weighted_mean_over_response_tokens():
    """Worked out independently: each example alone, log-softmax at positions prompt_len-1 ..
    T-2 predicting tokens prompt_len .. T-1; the result is the sum of those NLLs over all
    examples divided by the total number of response tokens (not a mean of per-example means),
    whatever the batch size."""
    model = tiny_model()
    prefix = tiny_prefix(model, init_std=1.0)
    data = examples()
    total, count, per_example = 0.0, 0, []
    with torch.no_grad():
        for ex in data:
            ids = torch.tensor([ex.input_ids])
            logits = forward_with_prefix(model, ids, torch.ones_like(ids), prefix(1)).logits[0]
            logp = F.log_softmax(logits.float(), dim=-1)
            targets = ids[0, ex.prompt_len :]
            nll = -logp[ex.prompt_len - 1 : -1].gather(1, targets[:, None]).sum()
            total, count = total + float(nll), count + len(targets)
            per_example.append(float(nll) / len(targets))
    expected = total / count
    assert expected != pytest.approx(sum(per_example) / len(per_example), rel=1e-4)
    for batch_size in (1, 4):
        assert evaluate_loss(model, prefix, data, batch_size) == pytest.approx(expected, rel=1e-5)


def test_examples_without_response_tokens_are_rejected():
    """Loss is taken on response tokens only, so a set whose labels are all -100 has none."""
    model = tiny_model()
    data = examples()[:1]
    no_targets = [EncodedExample(data[0].input_ids, (-100,) * len(data[0].labels), 1)]
    with pytest.raises(FedpktError, match=r"^evaluation set has 0 response tokens"):
        evaluate_loss(model, None, no_targets)


def test_finetune_trains_a_copy_and_leaves_the_backbone_frozen():
    backbone = tiny_model()
    original = parameters_of(backbone)
    model = trainable_copy(backbone)
    data = examples()
    before = evaluate_loss(model, None, data)
    settings = LoopSettings(lr=1e-2, batch_size=3, max_epochs=3, patience=1)
    result = finetune(model, None, data, data, settings)
    assert evaluate_loss(model, None, data) < before - 0.1
    assert result.best_epoch == 3
    assert not model.training
    assert all(torch.equal(original[k], v) for k, v in parameters_of(backbone).items())
    assert not any(p.requires_grad for p in backbone.parameters())


def test_rich_progress_shows_steps_epoch_and_loss():
    """Five events, the last at step 5 of 5 in epoch 2 with loss 2.0: the bar says so."""
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=120)
    with rich_progress("persona B-0001", console=console) as update:
        for step in range(1, 6):
            update(StepEvent(1 + step // 3, step, 5, 2.5 - step * 0.1, 0.01))
    shown = buffer.getvalue()
    assert "persona B-0001" in shown
    assert "5/5" in shown
    assert "epoch 2 loss 2.0000" in shown
