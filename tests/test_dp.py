"""DP-SGD on prefix training: per-example loss and gradients, clipping, noise, ε accounting."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedpkt.config import DPConfig
from fedpkt.data.encoding import collate
from fedpkt.errors import FedpktError
from fedpkt.train.dp import (
    DPPlan,
    dp_inner_steps,
    per_example_response_loss,
    plan_dp,
    private,
    train_prefix_dp,
)
from fedpkt.train.inner_loop import InnerSettings
from fedpkt.train.loop import LoopSettings, optimizer_step, response_loss, sgd
from fedpkt.train.prefix_training import train_prefix
from tests.training_fixtures import examples, parameters_of, tiny_model, tiny_prefix

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _batch(indices: list[int]) -> dict[str, torch.Tensor]:
    data = examples()
    return collate([data[i] for i in indices], pad_id=0)


def _alone_gradient(model, seed: int, index: int) -> list[torch.Tensor]:
    """∇ of example ``index``'s own token-mean loss, on a fresh prefix (seed ``seed``)."""
    prefix = tiny_prefix(model, seed=seed, init_std=0.5)
    response_loss(model, prefix(1), _batch([index])).backward()
    return [p.grad.detach().clone() for p in prefix.parameters()]


def _plan(noise: float, clip: float, batch: int, rate: float = 0.5) -> DPPlan:
    return DPPlan(noise, rate, 10, batch, clip, target_epsilon=8.0, delta=1e-5)


def test_sample_rate_is_batch_over_examples_and_batch_is_capped_by_the_data() -> None:
    """N = 40, B = 4 -> q = 0.1; N = 3, B = 4 -> B = 3, q = 1."""
    dp = DPConfig(enabled=True, epsilon=8.0)
    assert plan_dp(dp, num_examples=40, batch_size=4, steps=10).sample_rate == pytest.approx(0.1)
    small = plan_dp(dp, num_examples=3, batch_size=4, steps=10)
    assert (small.batch_size, small.sample_rate) == (3, 1.0)


def test_smaller_epsilon_needs_more_noise() -> None:
    loose = plan_dp(DPConfig(epsilon=8.0), num_examples=40, batch_size=4, steps=50)
    tight = plan_dp(DPConfig(epsilon=1.0), num_examples=40, batch_size=4, steps=50)
    assert tight.noise_multiplier > loose.noise_multiplier > 0


def test_no_training_examples_is_a_one_line_error() -> None:
    with pytest.raises(FedpktError, match="0 training examples"):
        plan_dp(DPConfig(), num_examples=0, batch_size=4, steps=5)


def test_per_example_loss_of_a_row_is_its_own_token_mean() -> None:
    """Row i of the batched loss = the token-mean loss of example i alone (padding ignored)."""
    model = tiny_model()
    prefix = tiny_prefix(model, seed=1, init_std=0.5)
    with torch.no_grad():
        rows = per_example_response_loss(model, prefix(3), _batch([0, 3, 5]))
        alone = [response_loss(model, prefix(1), _batch([i])) for i in (0, 3, 5)]
    assert rows.shape == (3,)
    torch.testing.assert_close(rows, torch.stack(alone), rtol=1e-5, atol=1e-6)


def test_per_sample_gradient_is_the_gradient_of_that_examples_loss_alone() -> None:
    """With the batch-mean loss and loss_reduction='mean', opacus's grad_sample[i] = ∇L_i."""
    model = tiny_model()
    prefix = tiny_prefix(model, seed=1, init_std=0.5)
    with private(prefix, _plan(0.0, 1.0, 3), seed=0) as session:
        per_example_response_loss(model, session.module(3), _batch([0, 3, 5])).mean().backward()
        samples = [p.grad_sample.detach().clone() for p in prefix.parameters()]
    for row, index in enumerate((0, 3, 5)):
        for sample, alone in zip(samples, _alone_gradient(model, 1, index), strict=True):
            torch.testing.assert_close(sample[row], alone, rtol=1e-4, atol=1e-6)


def test_update_is_the_mean_of_per_example_gradients_clipped_to_c() -> None:
    """σ = 0, SGD lr 1: θ' − θ = −(1/B)·Σ_i g_i·min(1, C/‖g_i‖) with g_i each example's own
    gradient (norm over all prefix parameters), computed here by hand; C is small enough that
    every example is clipped, so the update's norm is at most C."""
    model = tiny_model()
    clip, rows = 1e-3, [0, 2, 4, 5]
    prefix = tiny_prefix(model, seed=1, init_std=0.5)
    before = parameters_of(prefix)
    with private(prefix, _plan(0.0, clip, len(rows)), seed=0) as session:
        params = list(session.module.parameters())
        optimizer = session.optimizer_factory(sgd)(params, lr=1.0, weight_decay=0.0)
        loss = per_example_response_loss(model, session.module(len(rows)), _batch(rows)).mean()
        optimizer_step(params, optimizer, loss, max_grad_norm=None, where="test")
    expected = [torch.zeros_like(p) for p in prefix.parameters()]
    for index in rows:
        grads = _alone_gradient(model, 1, index)
        norm = torch.sqrt(sum((g**2).sum() for g in grads))
        assert norm > clip  # clipping is active for every example
        for total, g in zip(expected, grads, strict=True):
            total += g * (clip / (norm + 1e-6)) / len(rows)
    after = parameters_of(prefix)
    update = [after[n] - before[n] for n in before]
    for delta, want in zip(update, expected, strict=True):
        torch.testing.assert_close(delta, -want, rtol=1e-3, atol=2e-7)  # float32 θ ~ 0.5
    assert torch.sqrt(sum((d**2).sum() for d in update)) <= clip


def test_noise_is_added_and_depends_on_the_seed() -> None:
    """σ = 1: the same batch gives different updates for seeds 1 and 2, the same for seed 1
    twice, and the update is far from the noiseless one (noise std σC/B per coordinate)."""

    def one_step(noise: float, seed: int) -> dict[str, torch.Tensor]:
        model = tiny_model()
        prefix = tiny_prefix(model, seed=1, init_std=0.5)
        with private(prefix, _plan(noise, 1.0, 2), seed=seed) as session:
            params = list(session.module.parameters())
            optimizer = session.optimizer_factory(sgd)(params, lr=1.0, weight_decay=0.0)
            loss = per_example_response_loss(model, session.module(2), _batch([1, 3])).mean()
            optimizer_step(params, optimizer, loss, max_grad_norm=None, where="test")
        return parameters_of(prefix)

    first, again, other, clean = (
        one_step(1.0, 1),
        one_step(1.0, 1),
        one_step(1.0, 2),
        one_step(0.0, 1),
    )
    name = "encoder.embedding.weight"
    torch.testing.assert_close(first[name], again[name])
    assert not torch.allclose(first[name], other[name])
    # Noise std per coordinate is σ·C/B = 0.5; the noiseless update is at most C = 1 in norm.
    assert (first[name] - clean[name]).std() == pytest.approx(0.5, rel=0.2)


def test_epsilon_after_the_planned_steps_is_at_most_and_close_to_the_target() -> None:
    """No validation -> every planned step runs: 2 epochs · ceil(6/2) = 6 steps, ε ≈ target."""
    model = tiny_model()
    prefix = tiny_prefix(model, seed=1)
    dp = DPConfig(enabled=True, epsilon=4.0, delta=1e-5, max_grad_norm=1.0)
    settings = LoopSettings(lr=1e-2, batch_size=2, max_epochs=2, patience=1)
    out = train_prefix_dp(model, prefix, examples(), [], dp, settings)
    assert out.result.steps == out.plan.steps == 6
    assert 4.0 - 0.05 <= out.epsilon <= 4.0


def test_early_stopping_spends_less_than_the_target() -> None:
    """Validation on a set it cannot improve on: patience 1 stops after epoch 1 of 5 (3 of 15
    planned steps), and ε is then well below the target."""
    model = tiny_model()
    prefix = tiny_prefix(model, seed=1)
    dp = DPConfig(enabled=True, epsilon=4.0)
    out = train_prefix_dp(
        model,
        prefix,
        examples(),
        examples()[:2],
        dp,
        LoopSettings(lr=5.0, batch_size=2, max_epochs=5, patience=1),
    )
    assert out.result.steps < out.plan.steps
    assert 0.0 < out.epsilon < 4.0 - 0.05


def test_inner_loop_makes_k_noisy_steps_and_reports_their_epsilon() -> None:
    """k = 3 steps with σ calibrated for 4 rounds · 3 = 12 steps: ε of 3 steps < target, and
    the prefix moved."""
    model = tiny_model()
    prefix = tiny_prefix(model, seed=1)
    before = parameters_of(prefix)
    out = dp_inner_steps(
        model,
        prefix,
        examples(),
        DPConfig(enabled=True, epsilon=4.0),
        InnerSettings(lr=0.1, steps=3, batch_size=2, seed=0),
        planned_steps=12,
    )
    assert out.result.steps == 3 and out.plan.steps == 12
    assert 0.0 < out.epsilon < 4.0
    assert not torch.allclose(
        parameters_of(prefix)["encoder.embedding.weight"], before["encoder.embedding.weight"]
    )


def test_a_closed_session_leaves_non_dp_training_unchanged() -> None:
    """After DP training, the hooks are gone: train_prefix on that prefix object behaves like on
    a never-wrapped prefix with the same parameters (identical losses and parameters)."""
    model = tiny_model()
    used = tiny_prefix(model, seed=1)
    dp_inner_steps(model, used, examples(), DPConfig(enabled=True), InnerSettings(0.1, 1, 2, 0))
    fresh = tiny_prefix(model, seed=1)
    fresh.load_state_dict(used.state_dict())
    settings = LoopSettings(lr=1e-2, batch_size=2, max_epochs=1, patience=1)
    runs = [train_prefix(model, p, examples(), [], settings) for p in (used, fresh)]
    assert runs[0].train_losses == runs[1].train_losses
    for name, value in parameters_of(used).items():
        torch.testing.assert_close(value, parameters_of(fresh)[name])
    assert all(not hasattr(p, "grad_sample") or p.grad_sample is None for p in used.parameters())


@pytest.mark.e2e
def test_dp_run_reports_epsilon_per_client_and_its_utility_next_to_the_non_dp_run(
    tmp_path: Path,
) -> None:
    """A reduced DP run and its non-DP twin (same data, seeds): every personalized DP client
    logs 0 < ε <= target, the report and results.json carry it, and `compare` puts the DP
    run's utility beside the twin's with the change and the largest ε."""
    from fedpkt.compare import read_comparison, write_comparison
    from fedpkt.report import read_results
    from sim.simulate import simulate
    from tests.conftest import tiny_config

    private = simulate(
        tiny_config(dp__enabled=True, dp__epsilon=8.0, phase1__rounds=1), tmp_path / "dp"
    )
    clients = private.events("client")
    assert clients
    for event in clients:
        assert 0.0 < event["epsilon"] <= 8.0 + 1e-9, event["client_id"]
    assert "Mean ε" in (tmp_path / "dp" / "report.md").read_text()
    rows = read_results(tmp_path / "dp").rows
    assert {r.method for r in rows} == {"PersonaPKT (federated, DP-SGD eps=8)"}
    for row in rows:
        spent = [e["epsilon"] for e in clients if e["part"] == row.part]
        assert row.epsilon_max == pytest.approx(max(spent))

    simulate(tiny_config(phase1__rounds=1), tmp_path / "plain")
    assert all(r.epsilon_max is None for r in read_results(tmp_path / "plain").rows)
    write_comparison([tmp_path / "plain", tmp_path / "dp"], tmp_path / "cmp")
    costs = read_comparison(tmp_path / "cmp")["privacy_costs"]
    assert [c["part"] for c in costs] == [r.part for r in rows]
    for cost, row in zip(costs, rows, strict=True):
        assert cost["private"].endswith("[federated, DP-SGD eps=8]")
        assert cost["without"].endswith("[federated]")
        assert cost["epsilon_max"] == pytest.approx(row.epsilon_max)
        assert cost["f1_private"] == pytest.approx(row.f1)
        assert cost["f1_change"] == pytest.approx(row.f1 - cost["f1_without"])


def test_short_plans_find_their_best_rdp_order_without_opacus_warnings() -> None:
    """Few steps at ε = 8 (q = 0.1, 8 steps: one phase-1 participation) put the best RDP order
    above opacus's default range (63; opacus warns there); the extended orders contain it."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan = plan_dp(DPConfig(epsilon=8.0), num_examples=40, batch_size=4, steps=8)
    assert plan.sample_rate == pytest.approx(0.1) and plan.noise_multiplier > 0


# --- opacus only when DP is on ---------------------------------------------------------------
def test_restated_rdp_orders_are_opacus_defaults() -> None:
    """fedpkt.train.dp restates opacus's default RDP orders so as not to import opacus."""
    from opacus.accountants import RDPAccountant

    from fedpkt.train.dp import OPACUS_DEFAULT_ALPHAS, RDP_ALPHAS

    assert OPACUS_DEFAULT_ALPHAS == RDPAccountant.DEFAULT_ALPHAS
    assert RDP_ALPHAS[: len(OPACUS_DEFAULT_ALPHAS)] == OPACUS_DEFAULT_ALPHAS


def test_client_app_imports_without_opacus() -> None:
    """A ClientApp without DP never needs opacus (1-5 s of its start-up): importing
    clients.app (and so fedpkt.local, fedpkt.train.dp) must not import it."""
    import subprocess
    import sys

    code = "import sys, clients.app; print('opacus' in sys.modules)"
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"
