"""FedProx (``fedpkt/strategies/fedprox.py``): the proximal term, with and without DP-SGD, and
the whole strategy federated, centralized and in ``compare``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from torch import nn

from fedpkt.baseline_settings import select_settings
from fedpkt.centralized import open_clients, train_source_centralized
from fedpkt.compare import paper_setting
from fedpkt.config import DPConfig
from fedpkt.model.backbone import load_backbone
from fedpkt.strategies import build_strategy
from fedpkt.strategies.fedprox import proximal
from fedpkt.train.dp import DPPlan, dp_inner_steps, private
from fedpkt.train.inner_loop import InnerSettings, sgd_inner_steps
from fedpkt.train.loop import sgd
from sim.simulate import simulate
from tests.conftest import tiny_config
from tests.training_fixtures import examples, parameters_of, tiny_model, tiny_prefix

# opacus on a prefix whose inputs need no gradient: a known, harmless PyTorch warning.
pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")

LR = 0.1


def _distance(after: dict[str, torch.Tensor], before: dict[str, torch.Tensor]) -> float:
    """‖W − θ‖ over all prefix parameters."""
    return float(torch.sqrt(sum(((after[n] - before[n]) ** 2).sum() for n in before)))


def _client_step(mu: float, *, dp: bool, strategy: str = "fedprox") -> dict[str, torch.Tensor]:
    """k = 6 inner steps of a tiny prefix with the client half of ``strategy`` (lr 0.1, b = 2)."""
    values = {"phase1__strategy": strategy} | ({"phase1__mu": mu} if strategy == "fedprox" else {})
    factory = build_strategy(tiny_config(**values).phase1).client_optimizer(sgd)
    model = tiny_model()
    prefix = tiny_prefix(model, seed=1)
    settings = InnerSettings(lr=LR, steps=6, batch_size=2, seed=3)
    if dp:
        dp_config = DPConfig(enabled=True, epsilon=8.0)
        dp_inner_steps(model, prefix, examples(), dp_config, settings, optimizer_factory=factory)
    else:
        sgd_inner_steps(model, prefix, examples(), settings, optimizer_factory=factory)
    return parameters_of(prefix)


def test_proximal_step_adds_mu_times_the_distance_to_theta() -> None:
    """w = θ + 1 with zero data gradient, lr 0.1, μ = 2: w ← w − 0.1·2·(w − θ) = θ + 0.8."""
    w = nn.Parameter(torch.zeros(3))
    optimizer = proximal(sgd, 2.0)([w], lr=0.1, weight_decay=0.0)  # θ = 0, taken here
    with torch.no_grad():
        w += 1.0
    w.grad = torch.zeros(3)
    optimizer.step()
    torch.testing.assert_close(w.detach(), torch.full((3,), 0.8))


def _dp_step_on_a_displaced_linear(prox_in_loss: float, mu: float) -> torch.Tensor:
    """One DP-SGD step (σ = 0, C = 1, lr 0.1) of a linear layer whose data loss has zero
    gradient, moved to θ + 1 after its optimizer was built (θ = the initial weights)."""
    torch.manual_seed(0)
    layer = nn.Linear(2, 1, bias=False)
    theta = layer.weight.detach().clone()
    plan = DPPlan(0.0, 0.5, 1, 2, 1.0, target_epsilon=8.0, delta=1e-5)
    with private(layer, plan, seed=0) as session:
        params = list(session.module.parameters())
        optimizer = session.optimizer_factory(proximal(sgd, mu))(params, lr=0.1, weight_decay=0.0)
        with torch.no_grad():
            layer.weight += 1.0
        loss = 0.0 * session.module(torch.ones(2, 2)).sum()
        loss = loss + prox_in_loss / 2 * ((layer.weight - theta) ** 2).sum()
        loss.backward()
        optimizer.step()
    return layer.weight.detach() - theta


def test_proximal_gradient_survives_dp_sgd_where_a_loss_term_vanishes() -> None:
    """Under opacus's DPOptimizer, μ/2·‖w − θ‖² in the batch loss is lost (p.grad is replaced by
    the clipped per-example gradients, here 0), while μ(w − θ) added before the base step
    survives: w − θ = 1 − 0.1·2·1 = 0.8."""
    in_loss = _dp_step_on_a_displaced_linear(prox_in_loss=2.0, mu=0.0)
    torch.testing.assert_close(in_loss, torch.ones_like(in_loss))
    hooked = _dp_step_on_a_displaced_linear(prox_in_loss=0.0, mu=2.0)
    torch.testing.assert_close(hooked, torch.full_like(hooked, 0.8))


@pytest.mark.parametrize("dp", [False, True])
def test_mu_zero_steps_exactly_like_base(dp: bool) -> None:
    """μ = 0: the proximal gradient is 0, so FedProx's client step is FedAvg's, bit for bit."""
    fedprox, base = _client_step(0.0, dp=dp), _client_step(0.0, dp=dp, strategy="base")
    for name in base:
        assert torch.equal(fedprox[name], base[name]), name


def test_large_mu_keeps_a_dp_trained_prefix_near_theta() -> None:
    """αμ = 1: each step's w − θ becomes −α·(that step's noised gradient) alone, instead of the
    sum of all k = 6 noisy steps (noise dominates at ε = 8 on 6 examples), so ‖W − θ‖ shrinks
    by about √6 ≈ 2.4; asserted: below half of μ = 0's."""
    theta = parameters_of(tiny_prefix(tiny_model(), seed=1))
    far = _distance(_client_step(0.0, dp=True), theta)
    near = _distance(_client_step(1.0 / LR, dp=True), theta)
    assert near < 0.5 * far


def test_fedprox_has_its_label_in_compare_and_a_centralized_setting() -> None:
    config = {"phase1": {"strategy": {"name": "fedprox", "mu": 0.1}}}
    label = paper_setting("PersonaPKT (federated)", "federated", config)
    assert label == "PersonaPKT (FedProx)"
    (setting,) = select_settings("pkt-fedprox")
    assert (setting.method, setting.strategy) == ("PersonaPKT (FedProx)", "fedprox")
    assert "pkt-fedprox" not in [s.key for s in select_settings(None)]  # the paper's eight


@pytest.mark.e2e
def test_federated_fedprox_under_dp_sgd_equals_centralized(tmp_path: Path) -> None:
    """One code path: Flower and the in-process loop give the same FedProx source prefix, with
    DP-SGD on the clients (the noise is seeded per client and round)."""
    cfg = tiny_config(
        phase1__rounds=2, phase1__strategy="fedprox", phase1__mu=5.0, dp__enabled=True
    )
    run = simulate(cfg, tmp_path / "fed", phases="source")
    backbone = load_backbone("embedded", embedded_size="tiny")
    clients = open_clients(cfg, run.data, backbone, "A")
    central = train_source_centralized(cfg, clients, backbone)
    federated = load_file(str(run.source_prefix))
    assert set(central) == set(federated)
    for name in central:
        np.testing.assert_allclose(federated[name], central[name], rtol=1e-5, atol=1e-6)
    assert all(r["epsilon_max"] is not None for r in run.events("round"))


@pytest.mark.e2e
def test_fedprox_baseline_setting_matches_the_federated_run_in_compare(tmp_path: Path) -> None:
    """``fedpkt baselines --only pkt-fedprox`` and ``fedpkt simulate`` with FedProx score the
    same (one code path), and ``compare`` shows both under FedProx's label."""
    from fedpkt.compare import read_comparison, write_comparison
    from fedpkt.report import read_results
    from sim.baselines import run_baselines

    cfg = tiny_config(
        phase1__rounds=2, phase1__strategy="fedprox", phase1__mu=5.0, phase2__max_epochs=1
    )
    central = run_baselines(cfg, tmp_path / "central", only="pkt-fedprox")
    fed = simulate(cfg, tmp_path / "fed")
    central_rows = {r.part: r for r in read_results(central.root).rows}
    fed_rows = {r.part: r for r in read_results(fed.root).rows}
    assert {r.method for r in central_rows.values()} == {"PersonaPKT (FedProx)"}
    for part in ("B", "C"):
        assert fed_rows[part].f1 == pytest.approx(central_rows[part].f1, abs=1e-6)
    write_comparison([fed.root, central.root], tmp_path / "cmp")
    rows = read_comparison(tmp_path / "cmp")["rows"]
    assert {(r["setting"], r["mode"]) for r in rows} == {
        ("PersonaPKT (FedProx)", "centralized"),
        ("PersonaPKT (FedProx)", "federated"),
    }
