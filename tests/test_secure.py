"""Client-level DP (Flower's DP wrappers) and SecAgg+ for phase 1 (``server/secure.py``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.secure_aggregation.secaggplus_constants import Key
from flwr.supercore.task_identity import TaskIdentity
from safetensors.numpy import load_file

from fedpkt.config import FedpktConfig
from fedpkt.errors import FedpktError
from fedpkt.rundir import RunDir
from fedpkt.source import SourceTrainer
from fedpkt.train.dp import RDP_ALPHAS
from server.secure import (
    ClientLevelDP,
    client_dp_epsilon,
    client_dp_section,
    dp_sample_rate,
    secagg_weights,
)
from server.strategy import (
    ClientDirectory,
    ClientEntry,
    SourcePrefixStrategy,
    to_array_record,
)
from sim.simulate import simulate
from tests.conftest import tiny_config

DELTA = 1e-5


def _rdp_gaussian_epsilon(z: float, rounds: int, delta: float) -> float:
    """ε of ``rounds`` unsampled Gaussian releases, by hand: RDP_α = rounds·α / (2z²),
    converted as ε = min_α RDP_α − (ln δ + ln α)/(α − 1) + ln((α − 1)/α) (Balle et al. 2020,
    the conversion opacus uses) over the orders fedpkt searches (opacus's defaults, extended)."""
    return min(
        rounds * a / (2 * z * z) - (math.log(delta) + math.log(a)) / (a - 1) + math.log((a - 1) / a)
        for a in RDP_ALPHAS
    )


# ================================================================================ accounting
def test_sample_rate_is_clients_per_round_over_part_a() -> None:
    """Uniform sampling of b_out = 3 of N = 12 Part A clients: q = 3/12 = 0.25."""
    cfg = tiny_config(phase1__sampling="uniform", phase1__clients_per_round=3).phase1
    assert dp_sample_rate(cfg, 12) == pytest.approx(0.25)


def test_temperature_sampling_claims_no_amplification() -> None:
    """Temperature sampling is not uniform: q = 1 (no amplification by subsampling)."""
    cfg = tiny_config(phase1__sampling="temperature").phase1
    assert dp_sample_rate(cfg, 12) == 1.0


def test_epsilon_of_no_release_is_zero() -> None:
    assert client_dp_epsilon(1.0, 0.25, 0, DELTA) == 0.0


def test_epsilon_without_sampling_matches_the_gaussian_rdp_formula() -> None:
    """q = 1: each round is one Gaussian release; z = 1, 2 rounds, δ = 1e-5 -> ε ≈ 7.08."""
    expected = _rdp_gaussian_epsilon(1.0, 2, DELTA)
    assert expected == pytest.approx(7.077, abs=1e-3)
    assert client_dp_epsilon(1.0, 1.0, 2, DELTA) == pytest.approx(expected, rel=1e-9)


def test_subsampling_lowers_epsilon() -> None:
    """Same z and rounds: q = 0.01 spends far less than q = 1 (privacy amplification)."""
    assert client_dp_epsilon(1.0, 0.01, 10, DELTA) < client_dp_epsilon(1.0, 1.0, 10, DELTA) / 5


# ============================================================ client-level DP, composition
def _dp_strategy(tmp_path: Path, cfg: FedpktConfig) -> tuple[SourcePrefixStrategy, ClientDirectory]:
    """A SourcePrefixStrategy on θ = {"w": [0, 0]} over Part A clients a, b, c (n_i = 10)."""
    directory = ClientDirectory(
        {cid: ClientEntry(cid, node, "A", 10) for node, cid in enumerate("abc", start=1)}
    )
    trainer = SourceTrainer(
        {"w": np.zeros(2, dtype=np.float32)}, cfg.phase1, {c: 10 for c in "abc"}, cfg.seed
    )
    return SourcePrefixStrategy(trainer, directory, "", RunDir(tmp_path)), directory


@pytest.fixture
def server_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages are stamped with the run and task a ServerApp runs as; outside a run, fake one."""
    for attr, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, attr, value)


def _dp_round(
    tmp_path: Path, replies_w: dict[str, list[float]], resumed: dict | None = None
) -> tuple[ClientLevelDP, np.ndarray]:
    """One DP round without Flower's runtime: hooks called directly; z is negligible (1e-6)."""
    cfg = tiny_config(
        phase1__server_optimizer="sgd",
        phase1__outer_lr=1.0,  # θ ← θ − 1·(θ − W̃) = W̃: the outer step shows the DP mean
        dp__client_dp="fixed",
        dp__client_dp_noise=1e-6,
        dp__client_dp_clip=1.0,
    )
    source, _ = _dp_strategy(tmp_path, cfg)
    hooks = ClientLevelDP(source, cfg.dp, population=3, resumed=resumed)
    theta = to_array_record(source.trainer.theta)
    sent = list(hooks.configure_train(1, theta, ConfigRecord(), None))  # type: ignore[arg-type]
    assert len(sent) == 3
    replies = []
    for msg in sent:
        cid = str(msg.content["config"]["client-id"])
        if cid not in replies_w:
            continue  # this client dropped out
        content = RecordDict(
            {
                "arrays": to_array_record({"w": np.array(replies_w[cid], dtype=np.float32)}),
                "metrics": MetricRecord({"num-examples": 10, "train-loss": 1.0}),
            }
        )
        replies.append(Message(content, reply_to=msg))
    arrays, _ = hooks.aggregate_train(1, replies)
    assert arrays is not None
    return hooks, arrays["w"].numpy()


@pytest.mark.usefixtures("server_identity")
def test_dp_mean_clips_each_update_then_averages(tmp_path: Path) -> None:
    """C = 1: W_a − θ = [3, 4] (norm 5) is scaled to [0.6, 0.8]; b = [0.3, 0.4] and
    c = [0, −0.5] (norms 0.5) pass. W̃ = ([0.6, 0.8] + [0.3, 0.4] + [0, −0.5]) / 3
    = [0.3, 0.2333]; with β = 1 and SGD the new θ is W̃."""
    _, theta = _dp_round(tmp_path, {"a": [3, 4], "b": [0.3, 0.4], "c": [0, -0.5]})
    np.testing.assert_allclose(theta, [0.3, 0.7 / 3], atol=1e-4)


@pytest.mark.usefixtures("server_identity")
def test_dp_mean_divides_by_the_sampled_count_when_a_client_drops(tmp_path: Path) -> None:
    """c drops: W̃ = ([0.6, 0.8] + [0.3, 0.4]) / 3 (m = 3 sampled, not 2 replied) = [0.3, 0.4],
    so one client still moves the mean by at most C/m."""
    _, theta = _dp_round(tmp_path, {"a": [3, 4], "b": [0.3, 0.4]})
    np.testing.assert_allclose(theta, [0.3, 0.4], atol=1e-4)


@pytest.mark.usefixtures("server_identity")
def test_dp_round_reports_noise_and_epsilon_in_its_round_info(tmp_path: Path) -> None:
    hooks, _ = _dp_round(tmp_path, {"a": [3, 4], "b": [0.3, 0.4], "c": [0, -0.5]})
    info = hooks.round_info()
    assert info["dp_noise_multiplier"] == 1e-6
    assert info["dp_clip_norm"] == 1.0
    assert info["dp_releases"] == 1
    assert info["dp_epsilon"] == client_dp_epsilon(1e-6, 1.0, 1, DELTA)


@pytest.mark.usefixtures("server_identity")
def test_resumed_dp_run_keeps_counting_releases(tmp_path: Path) -> None:
    """Resumed after 2 released rounds, one more round makes 3 (ε of 3 rounds)."""
    hooks, _ = _dp_round(tmp_path, {"a": [0.1, 0], "b": [0, 0.1]}, resumed={"dp_releases": 2})
    assert hooks.round_info()["dp_releases"] == 3
    assert hooks.round_info()["dp_epsilon"] == client_dp_epsilon(1e-6, 1.0, 3, DELTA)


def test_client_dp_report_section_shows_the_last_epsilon() -> None:
    rounds = [
        {"event": "round", "round": r, "dp_mode": "fixed", "dp_noise_multiplier": 1.0,
         "dp_update_noise_multiplier": 1.0, "dp_clip_norm": 0.1, "dp_sample_rate": 0.25,
         "dp_releases": r, "dp_delta": DELTA, "dp_epsilon": eps}
        for r, eps in ((1, 0.5), (2, 0.75))
    ]  # fmt: skip
    ((title, text),) = client_dp_section(rounds).items()
    assert "differential privacy" in title.lower()
    assert "| 1 | 1 | 0.1 | 0.25 | 2 | 1e-05 | 0.75 |" in text


def test_no_dp_rounds_give_no_report_section() -> None:
    assert client_dp_section([{"event": "round", "round": 1}]) == {}


def test_secagg_and_server_side_clipping_are_refused_together() -> None:
    with pytest.raises(FedpktError, match=r"privacy\.secagg"):
        tiny_config(privacy__secagg=True, dp__client_dp="fixed")


# ======================================================================== SecAgg+ weights
def test_secagg_weights_follow_the_strategy() -> None:
    """counts a = 4, b = 16: PPReptile [1, 1]; base [4, 16]; temperature T = 2 ∝ √n = [2, 4],
    i.e. [1/3, 2/3] once normalised (SecAgg+ divides by the sum anyway)."""
    counts = {"a": 4, "b": 16}
    ppreptile = tiny_config().phase1
    base = tiny_config(phase1__strategy="base").phase1
    temperature = tiny_config(phase1__strategy="temperature", phase1__temperature=2.0).phase1
    assert secagg_weights(ppreptile, counts, ["a", "b"]) == [1.0, 1.0]
    assert secagg_weights(base, counts, ["a", "b"]) == [4.0, 16.0]
    np.testing.assert_allclose(secagg_weights(temperature, counts, ["a", "b"]), [1 / 3, 2 / 3])
    fedprox = tiny_config(phase1__strategy="fedprox").phase1
    assert secagg_weights(fedprox, counts, ["a", "b"]) == [4.0, 16.0]


# ========================================================================= Flower runs (e2e)
@pytest.mark.e2e
def test_fixed_client_dp_run_logs_noise_and_epsilon_per_round(tmp_path: Path) -> None:
    """Tiny corpus: 3 Part A clients, all sampled (q = 1); z = 1 -> ε ≈ 4.73 after round 1 and
    ≈ 7.08 after round 2 (the Gaussian RDP formula above)."""
    cfg = tiny_config(phase1__rounds=2, dp__client_dp="fixed", dp__client_dp_noise=1.0)
    run = simulate(cfg, tmp_path / "run", phases="source")
    rounds = run.events("round")
    assert [r["dp_releases"] for r in rounds] == [1, 2]
    assert all(r["dp_noise_multiplier"] == 1.0 for r in rounds)
    assert all(r["dp_sample_rate"] == 1.0 for r in rounds)
    for r in rounds:
        assert r["dp_epsilon"] == pytest.approx(_rdp_gaussian_epsilon(1.0, r["round"], DELTA))
    assert run.source_prefix.is_file()


@pytest.mark.e2e
def test_adaptive_client_dp_run_moves_the_clip_norm(tmp_path: Path) -> None:
    """m = 3, z = 1: σ_b = max(3/20, z) = 1, so the update gets z_Δ = (1 − (2·1)⁻²)^(−1/2)
    = 2/√3 ≈ 1.1547; C starts at 0.1 and is updated from the noisy clipped fraction."""
    cfg = tiny_config(phase1__rounds=1, dp__client_dp="adaptive", dp__client_dp_noise=1.0)
    run = simulate(cfg, tmp_path / "run", phases="source")
    (event,) = run.events("round")
    assert event["dp_update_noise_multiplier"] == pytest.approx(2 / math.sqrt(3))
    assert event["dp_clip_norm_used"] == 0.1
    assert event["dp_clip_norm"] != 0.1 and event["dp_clip_norm"] > 0
    assert event["dp_epsilon"] == pytest.approx(_rdp_gaussian_epsilon(1.0, 1, DELTA))


SECAGG_SAME = {"phase1__rounds": 1, "phase1__server_optimizer": "sgd", "phase1__outer_lr": 1.0}


@pytest.fixture(scope="module")
def secagg_and_plain(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunDir, RunDir]:
    """One round each, same seeds, β = 1 with SGD so θ_1 = mean W_i (the aggregate itself)."""
    root = tmp_path_factory.mktemp("secagg")
    secure = simulate(
        tiny_config(privacy__secagg=True, **SECAGG_SAME), root / "sec", phases="source"
    )
    plain = simulate(tiny_config(**SECAGG_SAME), root / "plain", phases="source")
    return secure, plain


@pytest.mark.e2e
def test_secagg_theta_matches_plain_within_quantisation_error(
    secagg_and_plain: tuple[RunDir, RunDir],
) -> None:
    """Each Δ_i entry is stochastically rounded to a grid of step 2·r/2^22 (r = 1.0, the
    clipping range), an error below one step; the mean of 3 such errors is below one step too:
    |θ_secagg − θ_plain| < 2/2^22 ≈ 4.8e-7 (+ float32 rounding of θ, ~1e-8)."""
    secure, plain = secagg_and_plain
    step = 2 * 1.0 / 2**22
    a, b = load_file(str(secure.source_prefix)), load_file(str(plain.source_prefix))
    assert set(a) == set(b)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=0, atol=step + 1e-7)
    (event,) = secure.events("round")
    assert event["secagg"] is True and event["secagg_clients"] == 3


@pytest.mark.e2e
def test_secagg_train_replies_carry_no_prefix_arrays(
    secagg_and_plain: tuple[RunDir, RunDir],
) -> None:
    """Under SecAgg+ no train reply that left a client holds an array: only masked vectors."""
    secure, _ = secagg_and_plain
    train = [
        json.loads(line)
        for path in secure.egress.glob("*.jsonl")
        for line in path.read_text().splitlines()
        if json.loads(line)["message_type"] == "train"
    ]
    assert len(train) == 3 * 4  # 3 clients × the 4 SecAgg+ stages
    assert not [r for e in train for r in e["records"] if r["kind"] == "array"]
    masked = [r for e in train for r in e["records"] if r["key"] == Key.MASKED_PARAMETERS]
    assert len(masked) == 3
