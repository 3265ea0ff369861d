"""Reptile's inner loop: exactly k plain SGD steps on seeded batches, prefix or whole model."""

from __future__ import annotations

import pytest
import torch

from fedpkt.data.encoding import collate
from fedpkt.errors import FedpktError
from fedpkt.train.finetune import trainable_copy
from fedpkt.train.inner_loop import (
    InnerSettings,
    sgd_inner_steps,
    sgd_inner_steps_model,
    step_batches,
)
from fedpkt.train.loop import response_loss
from tests.training_fixtures import examples, parameters_of, tiny_model, tiny_prefix

LR = 0.5


def test_one_step_is_theta_minus_lr_times_the_batch_gradient():
    """steps=1: W = θ - α·∇L(θ) on the batch ``step_batches`` draws, computed here by hand."""
    model = tiny_model()
    data = examples()
    prefix = tiny_prefix(model, init_std=1.0)
    [indices] = step_batches(len(data), 1, 2, seed=3)
    batch = collate([data[i] for i in indices], pad_id=0)
    loss = response_loss(model, prefix(len(indices)), batch)
    grads = torch.autograd.grad(loss, list(prefix.parameters()))
    expected = {
        name: (p - LR * g).detach()
        for (name, p), g in zip(prefix.named_parameters(), grads, strict=True)
    }
    result = sgd_inner_steps(
        model, prefix, data, InnerSettings(lr=LR, steps=1, batch_size=2, seed=3)
    )
    for name, value in parameters_of(prefix).items():
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-6)
    assert result.mean_loss == pytest.approx(float(loss.detach()), rel=1e-6)


def test_exactly_k_updates_are_made():
    """The optimizer factory is the DP seam; a counting one sees k steps and nothing else."""
    model = tiny_model()
    calls: list[str] = []

    def counting_sgd(params, *, lr, weight_decay):
        optimizer = torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
        optimizer.register_step_post_hook(lambda *_: calls.append("step"))
        return optimizer

    result = sgd_inner_steps(
        model,
        tiny_prefix(model),
        examples(),
        InnerSettings(lr=LR, steps=5, batch_size=2, seed=0),
        optimizer_factory=counting_sgd,
    )
    assert calls == ["step"] * 5
    assert (result.steps, result.num_examples) == (5, len(examples()))


def test_same_seed_gives_identical_parameters():
    model = tiny_model()
    runs = []
    for _ in range(2):
        prefix = tiny_prefix(model, seed=4)
        sgd_inner_steps(model, prefix, examples(), InnerSettings(LR, 3, 2, 11))
        runs.append(parameters_of(prefix))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_batches_are_distinct_within_a_step_and_repeat_across_steps():
    """3 examples, 4 steps of 2: 8 draws from 3 examples, each batch 2 different indices."""
    batches = step_batches(3, 4, 2, seed=0)
    assert len(batches) == 4
    assert all(len(set(b)) == 2 and set(b) <= {0, 1, 2} for b in batches)
    assert step_batches(3, 4, 2, seed=0) == batches


def test_a_client_with_fewer_examples_than_the_batch_uses_all_of_them():
    assert step_batches(1, 2, 4, seed=5) == [[0], [0]]


def test_no_examples_is_a_one_line_error():
    with pytest.raises(FedpktError, match=r"^inner loop got 0 training examples; expected"):
        step_batches(0, 1, 2, seed=0)


def test_full_model_variant_takes_the_same_sgd_step():
    """The model variant's one step equals θ - α·∇L(θ) over every weight of the copy."""
    model = trainable_copy(tiny_model())
    data = examples()
    [indices] = step_batches(len(data), 1, 2, seed=1)
    batch = collate([data[i] for i in indices], pad_id=0)
    loss = response_loss(model, None, batch)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    expected = [(p - 0.1 * g).detach() for p, g in zip(model.parameters(), grads, strict=True)]
    sgd_inner_steps_model(model, data, InnerSettings(lr=0.1, steps=1, batch_size=2, seed=1))
    for value, want in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(value.detach(), want, rtol=1e-5, atol=1e-6)
