"""Specification of fedpkt.algorithms: every expected figure is worked out by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedpkt.algorithms import (
    OptimizerState,
    ServerOptimizer,
    check_update,
    ppreptile_step,
    pseudo_gradient,
    sample_clients,
    temperature_weights,
    weighted_average,
)
from fedpkt.errors import FedpktError


def f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


THETA = {"a": f32(1.0, 2.0), "b": np.array([[0.0]], dtype=np.float32)}


# --- check_update -------------------------------------------------------------------------


def test_check_update_accepts_matching_update() -> None:
    check_update(THETA, {"a": f32(5.0, 6.0), "b": np.array([[1.0]], dtype=np.float32)})


def test_check_update_names_missing_key() -> None:
    with pytest.raises(FedpktError, match=r"missing key.*'b'"):
        check_update(THETA, {"a": f32(5.0, 6.0)})


def test_check_update_names_extra_key() -> None:
    update = {"a": f32(1, 2), "b": np.zeros((1, 1), np.float32), "c": f32(0)}
    with pytest.raises(FedpktError, match=r"unexpected key.*'c'"):
        check_update(THETA, update)


def test_check_update_names_wrong_shape() -> None:
    with pytest.raises(FedpktError, match=r"key 'b' has shape \(1,\); expected \(1, 1\)"):
        check_update(THETA, {"a": f32(1, 2), "b": f32(0)})


def test_check_update_names_wrong_dtype() -> None:
    with pytest.raises(FedpktError, match="key 'a' has dtype float64; expected float32"):
        check_update(THETA, {"a": np.array([1.0, 2.0]), "b": np.zeros((1, 1), np.float32)})


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_check_update_rejects_non_finite(bad: float) -> None:
    with pytest.raises(FedpktError, match="key 'a' contains NaN or Inf"):
        check_update(THETA, {"a": f32(1.0, bad), "b": np.zeros((1, 1), np.float32)})


def test_check_update_rejects_non_mapping_and_non_array() -> None:
    with pytest.raises(FedpktError, match="is a list"):
        check_update(THETA, [1, 2])
    with pytest.raises(FedpktError, match="key 'a' is a list"):
        check_update(THETA, {"a": [1.0, 2.0], "b": np.zeros((1, 1), np.float32)})


def test_check_update_message_is_one_line_and_names_sender() -> None:
    with pytest.raises(FedpktError) as info:
        check_update(THETA, {"a": f32(1, 2)}, who="client 'p7' update")
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("client 'p7' update")


# --- weighted_average / pseudo_gradient ---------------------------------------------------


def test_weighted_average_by_example_counts() -> None:
    """(1·[0, 4] + 3·[4, 8]) / 4 = [3, 7]."""
    out = weighted_average([{"x": f32(0, 4)}, {"x": f32(4, 8)}], [1, 3])
    np.testing.assert_array_equal(out["x"], f32(3, 7))
    assert out["x"].dtype == np.float32


def test_weighted_average_uniform_when_no_weights() -> None:
    """([1] + [2] + [6]) / 3 = [3]."""
    out = weighted_average([{"x": f32(1)}, {"x": f32(2)}, {"x": f32(6)}])
    np.testing.assert_array_equal(out["x"], f32(3))


def test_weighted_average_rejects_bad_weights() -> None:
    arrays = [{"x": f32(1)}, {"x": f32(2)}]
    with pytest.raises(FedpktError, match="sum to 0"):
        weighted_average(arrays, [0, 0])
    with pytest.raises(FedpktError, match=">= 0"):
        weighted_average(arrays, [1, -1])
    with pytest.raises(FedpktError, match="one per array"):
        weighted_average(arrays, [1])
    with pytest.raises(FedpktError, match="at least one"):
        weighted_average([])


def test_weighted_average_rejects_mismatched_arrays() -> None:
    with pytest.raises(FedpktError, match=r"arrays\[1\] key 'x' has shape"):
        weighted_average([{"x": f32(1)}, {"x": f32(1, 2)}])


def test_pseudo_gradient_is_theta_minus_mean() -> None:
    """θ=[1, 2]; W=[3, 2], [1, 0] -> mean [2, 1]; g = θ − mean = [−1, 1]."""
    g = pseudo_gradient({"a": f32(1, 2)}, [{"a": f32(3, 2)}, {"a": f32(1, 0)}])
    np.testing.assert_array_equal(g["a"], f32(-1, 1))


def test_pseudo_gradient_weighted() -> None:
    """θ=[0]; W=[4] (w=3), [8] (w=1) -> mean (12+8)/4 = 5; g = −5."""
    g = pseudo_gradient({"a": f32(0)}, [{"a": f32(4)}, {"a": f32(8)}], [3, 1])
    np.testing.assert_array_equal(g["a"], f32(-5))


def test_pseudo_gradient_checks_each_client() -> None:
    with pytest.raises(FedpktError, match=r"client_weights\[1\] key 'a' contains NaN"):
        pseudo_gradient({"a": f32(0)}, [{"a": f32(1)}, {"a": f32(math.nan)}])


# --- ServerOptimizer / ppreptile_step -----------------------------------------------------


def test_sgd_ppreptile_step_matches_eq1_by_hand() -> None:
    """θ=[1, 2], β=0.5, W1=[3, 2], W2=[1, 0].

    Eq. 1: θ + β·mean(W − θ) = [1, 2] + 0.5·mean([2, 0], [0, −2]) = [1, 2] + 0.5·[1, −1]
    = [1.5, 1.5].
    """
    opt = ServerOptimizer("sgd", lr=0.5)
    new = ppreptile_step({"a": f32(1, 2)}, [{"a": f32(3, 2)}, {"a": f32(1, 0)}], opt)
    np.testing.assert_array_equal(new["a"], f32(1.5, 1.5))


def test_sgd_reproduces_eq1_on_random_arrays() -> None:
    rng = np.random.default_rng(0)
    theta = {"p": rng.normal(size=(3, 4)).astype(np.float32)}
    clients = [{"p": rng.normal(size=(3, 4)).astype(np.float32)} for _ in range(4)]
    beta = 3e-5
    got = ppreptile_step(theta, clients, ServerOptimizer("sgd", lr=beta))
    t64 = theta["p"].astype(np.float64)
    eq1 = t64 + beta * np.mean([c["p"].astype(np.float64) - t64 for c in clients], axis=0)
    np.testing.assert_array_equal(got["p"], eq1.astype(np.float32))


def test_step_does_not_modify_inputs() -> None:
    theta = {"a": f32(1, 2)}
    ServerOptimizer("adam", lr=0.1).step(theta, {"a": f32(1, 1)})
    np.testing.assert_array_equal(theta["a"], f32(1, 2))


def test_adam_first_step_is_minus_lr_times_sign() -> None:
    """t=1: m̂ = g, v̂ = g², step = lr·g/(|g|+eps). lr=0.01, eps=1e-8.

    g=[2, −0.5, 0] -> θ moves by [−0.01, +0.01, 0] (up to eps/|g| ~ 1e-8 relative).
    """
    opt = ServerOptimizer("adam", lr=0.01)
    new = opt.step({"a": f32(1, 1, 1)}, {"a": f32(2, -0.5, 0)})
    np.testing.assert_allclose(new["a"], f32(0.99, 1.01, 1.0), rtol=0, atol=1e-7)


def test_adam_second_step_by_hand() -> None:
    """β1=0.5, β2=0.5, eps=1e-8, lr=1, θ0=0; g1=1, g2=3.

    t=1: m=0.5, v=0.5 -> m̂=1, v̂=1, θ1 = 0 − 1 = −1.
    t=2: m=0.5·0.5+0.5·3=1.75, v=0.5·0.5+0.5·9=4.75; m̂=1.75/0.75=7/3, v̂=4.75/0.75=19/3;
    θ2 = −1 − (7/3)/√(19/3) = −1 − 0.92717... = −1.92717...
    """
    opt = ServerOptimizer("adam", lr=1.0, beta1=0.5, beta2=0.5)
    theta = opt.step({"a": f32(0)}, {"a": f32(1)})
    np.testing.assert_allclose(theta["a"], f32(-1), atol=1e-6)
    theta = opt.step(theta, {"a": f32(3)})
    expected = -1 - (7 / 3) / math.sqrt(19 / 3)
    np.testing.assert_allclose(theta["a"], f32(expected), atol=1e-6)
    assert opt.t == 2


def test_adam_state_round_trips_through_json_and_arrays() -> None:
    """Checkpoint after step 1, restore in a fresh optimizer: step 2 is bit-identical."""
    rng = np.random.default_rng(1)
    theta = {"p": rng.normal(size=5).astype(np.float32)}
    g1 = {"p": rng.normal(size=5).astype(np.float32)}
    g2 = {"p": rng.normal(size=5).astype(np.float32)}
    a = ServerOptimizer("adam", lr=3e-5)
    theta1 = a.step(theta, g1)
    state = a.state_dict()
    assert set(state.arrays) == {"m/p", "v/p"}
    meta = json.loads(json.dumps(state.meta))
    b = ServerOptimizer("adam", lr=3e-5)
    b.load_state_dict(OptimizerState(meta=meta, arrays=dict(state.arrays)))
    np.testing.assert_array_equal(a.step(theta1, g2)["p"], b.step(theta1, g2)["p"])
    assert b.t == 2


def test_sgd_state_round_trip_has_no_arrays() -> None:
    a = ServerOptimizer("sgd", lr=0.1)
    a.step({"a": f32(0)}, {"a": f32(1)})
    state = a.state_dict()
    assert state.arrays == {}
    b = ServerOptimizer("sgd", lr=0.1)
    b.load_state_dict(state)
    assert b.t == 1


def test_load_state_refuses_other_hyperparameters() -> None:
    state = ServerOptimizer("adam", lr=0.1).state_dict()
    with pytest.raises(FedpktError, match=r"lr=0.1 differs from the configured lr=0.2"):
        ServerOptimizer("adam", lr=0.2).load_state_dict(state)
    with pytest.raises(FedpktError, match="kind='adam' differs"):
        ServerOptimizer("sgd", lr=0.1).load_state_dict(state)


def test_load_state_refuses_inconsistent_moments() -> None:
    opt = ServerOptimizer("adam", lr=0.1)
    opt.step({"a": f32(0)}, {"a": f32(1)})
    state = opt.state_dict()
    del state.arrays["v/a"]
    with pytest.raises(FedpktError, match="missing key"):
        ServerOptimizer("adam", lr=0.1).load_state_dict(state)


def test_optimizer_rejects_bad_settings() -> None:
    with pytest.raises(FedpktError, match="'rmsprop' is unknown"):
        ServerOptimizer("rmsprop", lr=0.1)  # type: ignore[arg-type]
    with pytest.raises(FedpktError, match="lr=0"):
        ServerOptimizer("sgd", lr=0)
    with pytest.raises(FedpktError, match=r"beta2=1.0"):
        ServerOptimizer("adam", lr=0.1, beta2=1.0)


# --- temperature_weights ------------------------------------------------------------------


def test_temperature_weights_by_hand() -> None:
    """T=2, n=[1, 4, 16]: n^(1/2) = [1, 2, 4], sum 7 -> [1/7, 2/7, 4/7]."""
    np.testing.assert_allclose(temperature_weights([1, 4, 16], 2.0), [1 / 7, 2 / 7, 4 / 7])


def test_temperature_weights_infinite_t_is_uniform() -> None:
    np.testing.assert_array_equal(temperature_weights([1, 10, 1000], math.inf), [1 / 3] * 3)


def test_temperature_weights_reject_bad_input() -> None:
    with pytest.raises(FedpktError, match="> 0"):
        temperature_weights([3, 0], 1.0)
    with pytest.raises(FedpktError, match="T > 0"):
        temperature_weights([3, 1], 0.0)
    with pytest.raises(FedpktError, match="non-empty"):
        temperature_weights([], 1.0)


counts_st = st.lists(st.integers(min_value=1, max_value=10**6), min_size=1, max_size=30)
temps_st = st.floats(min_value=0.05, max_value=1e3)


@settings(max_examples=60, deadline=None)
@given(counts_st, temps_st)
def test_temperature_weights_sum_to_one(counts: list[int], t: float) -> None:
    p = temperature_weights(counts, t)
    assert p.shape == (len(counts),)
    assert np.all(p > 0)
    assert math.isclose(p.sum(), 1.0, rel_tol=1e-12)


@settings(max_examples=60, deadline=None)
@given(counts_st)
def test_temperature_one_is_proportional(counts: list[int]) -> None:
    n = np.array(counts, dtype=np.float64)
    np.testing.assert_allclose(temperature_weights(counts, 1.0), n / n.sum(), rtol=1e-9)


@settings(max_examples=60, deadline=None)
@given(counts_st)
def test_large_temperature_tends_to_uniform(counts: list[int]) -> None:
    """At T=1e9, n^(1/T) = exp(ln n / T) with ln n <= 14, so every ratio is within 2e-8 of 1."""
    p = temperature_weights(counts, 1e9)
    np.testing.assert_allclose(p, 1.0 / len(counts), rtol=1e-6)


@settings(max_examples=60, deadline=None)
@given(counts_st, temps_st)
def test_temperature_weights_monotone_in_count(counts: list[int], t: float) -> None:
    p = temperature_weights(counts, t)
    for i in range(len(counts)):
        for j in range(len(counts)):
            if counts[i] < counts[j]:
                assert p[i] <= p[j]
            if counts[i] == counts[j]:
                assert p[i] == p[j]


# --- sample_clients -----------------------------------------------------------------------

IDS = [f"c{i:02d}" for i in range(10)]


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 10))
def test_sampling_is_deterministic_and_distinct(seed: int, n: int) -> None:
    a = sample_clients(np.random.default_rng(seed), IDS, n)
    b = sample_clients(np.random.default_rng(seed), IDS, n)
    assert a == b
    assert len(a) == n == len(set(a))
    assert set(a) <= set(IDS)


def test_sampling_ignores_input_order() -> None:
    weights = [float(i + 1) for i in range(10)]
    a = sample_clients(np.random.default_rng(7), IDS, 4, weights)
    b = sample_clients(np.random.default_rng(7), IDS[::-1], 4, weights[::-1])
    assert a == b


def test_sampling_more_than_available_returns_all_sorted() -> None:
    assert sample_clients(np.random.default_rng(0), ["b", "c", "a"], 5) == ["a", "b", "c"]


def test_sampling_never_picks_zero_weight_clients() -> None:
    weights = [0.0] * 8 + [1.0, 1.0]
    for seed in range(20):
        got = sample_clients(np.random.default_rng(seed), IDS, 2, weights)
        assert sorted(got) == ["c08", "c09"]


def test_weighted_sampling_follows_weights() -> None:
    """Single draws with p = [0.1, 0.9]: over 2000 draws 'c01' appears ~1800 times (sd ~13)."""
    rng = np.random.default_rng(3)
    hits = sum(sample_clients(rng, ["c00", "c01"], 1, [1, 9]) == ["c01"] for _ in range(2000))
    assert 1740 < hits < 1860


def test_sampling_rejects_bad_input() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(FedpktError, match="duplicates"):
        sample_clients(rng, ["a", "a"], 1)
    with pytest.raises(FedpktError, match="n=0"):
        sample_clients(rng, IDS, 0)
    with pytest.raises(FedpktError, match="one per client"):
        sample_clients(rng, IDS, 2, [1.0])
    with pytest.raises(FedpktError, match="only 1 client"):
        sample_clients(rng, IDS, 2, [1.0] + [0.0] * 9)
