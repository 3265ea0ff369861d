"""Server-side maths of phase 1: PPReptile's outer step, the server optimizer, weighted averaging,
temperature-scaled weights and client sampling.

Everything here works on *named parameter arrays*, ``dict[str, np.ndarray]`` (float32, the
prefix parameters keyed by their module names), and knows nothing of Flower or torch, so the
server strategies, the centralized baselines and the tests share exactly these functions.

PPReptile (paper eq. 1) and the server optimizer
------------------------------------------------
The paper's outer update is ``θ ← θ + β · (1/n) Σ_i (W_i − θ)``, where ``W_i`` is client i's
prefix after k inner SGD steps started from θ. Writing ``g = θ − mean_i W_i`` (the
*pseudo-gradient*, as FedOpt does, Reddi et al. 2021) the update is ``θ ← θ − β g``: a plain SGD
step on g. So eq. 1 is the ``sgd`` server optimizer, exactly.

The paper gives α=1e-4, β=3e-5 without saying how β is applied. Under the plain rule β=3e-5
means θ moves by 3e-5 of the mean client displacement per round: after 1000 rounds θ has
travelled about 3% of the way a single client's k steps would take it, i.e. the source prefix
would barely leave its random init. Under Adam (FedAdam), β is a per-coordinate step size:
the first step moves every coordinate by ≈ β·sign(g), and 3e-5 is an ordinary Adam learning
rate for prefix parameters. We therefore default to ``adam`` (the reading under which the
published β is sensible) and keep ``sgd`` to reproduce eq. 1 literally.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from fedpkt.errors import FedpktError

Arrays = dict[str, np.ndarray]
"""Named parameter arrays: parameter name -> array (float32 for prefix parameters)."""

OptimizerKind = Literal["sgd", "adam"]
OPTIMIZER_KINDS: tuple[OptimizerKind, ...] = ("sgd", "adam")
_MAX_KEYS_SHOWN = 3


def _show_keys(keys: Sequence[str]) -> str:
    """A short, one-line rendering of a key list (long lists are cut)."""
    shown = ", ".join(repr(k) for k in list(keys)[:_MAX_KEYS_SHOWN])
    more = len(keys) - _MAX_KEYS_SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


def check_update(theta: Mapping[str, np.ndarray], update: Any, *, who: str = "update") -> None:
    """Raise a one-line FedpktError unless ``update`` matches ``theta`` key for key.

    The server calls this on every client reply before aggregating, so that a malformed or
    malicious reply fails *that* client (naming the key) instead of corrupting θ.
    Checks: a mapping; same key set (missing keys reported before extra ones); each value an
    ndarray with the same shape and dtype as θ's; every value finite (no NaN/Inf).
    ``who`` names the sender in the message, e.g. ``"client 'p0003' update"``.
    """
    if not isinstance(update, Mapping):
        raise FedpktError(f"{who} is a {type(update).__name__}; expected a dict of named arrays")
    missing = [k for k in theta if k not in update]
    if missing:
        raise FedpktError(f"{who} is missing key(s) {_show_keys(missing)}")
    extra = [k for k in update if k not in theta]
    if extra:
        raise FedpktError(f"{who} has unexpected key(s) {_show_keys(extra)}")
    for key, ref in theta.items():
        value = update[key]
        if not isinstance(value, np.ndarray):
            raise FedpktError(
                f"{who} key '{key}' is a {type(value).__name__}; expected a numpy array"
            )
        if value.shape != ref.shape:
            raise FedpktError(
                f"{who} key '{key}' has shape {tuple(value.shape)}; expected {tuple(ref.shape)}"
            )
        if value.dtype != ref.dtype:
            raise FedpktError(f"{who} key '{key}' has dtype {value.dtype}; expected {ref.dtype}")
        if value.dtype.kind in "fc" and not np.all(np.isfinite(value)):
            raise FedpktError(f"{who} key '{key}' contains NaN or Inf; expected finite values")


def _normalized_weights(weights: Sequence[float] | np.ndarray | None, n: int) -> np.ndarray:
    """Validate non-negative finite weights with a positive sum and scale them to sum to 1.

    Shape: (n,) float64. ``None`` means uniform.
    """
    if weights is None:
        return np.full(n, 1.0 / n)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,):
        raise FedpktError(f"weights has {w.size} entries; expected one per array ({n})")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise FedpktError(f"weights {w.tolist()} must be finite and >= 0")
    total = w.sum()
    if total <= 0:
        raise FedpktError(f"weights {w.tolist()} sum to {total}; expected a positive sum")
    return w / total


def _mean64(arrays_list: Sequence[Mapping[str, np.ndarray]], weights: Any) -> dict[str, Any]:
    """Weighted mean of named arrays, accumulated in float64 (shapes as the inputs)."""
    if len(arrays_list) == 0:
        raise FedpktError("no arrays to average; expected at least one client update")
    ref = arrays_list[0]
    for i, arrays in enumerate(arrays_list[1:], start=1):
        check_update(ref, arrays, who=f"arrays[{i}]")
    w = _normalized_weights(weights, len(arrays_list))
    out: dict[str, Any] = {}
    for key in ref:
        acc = np.zeros(ref[key].shape, dtype=np.float64)
        for wi, arrays in zip(w, arrays_list, strict=True):
            acc += wi * arrays[key].astype(np.float64)
        out[key] = acc
    return out


def weighted_average(
    arrays_list: Sequence[Mapping[str, np.ndarray]],
    weights: Sequence[float] | np.ndarray | None = None,
) -> Arrays:
    """Σ_i w_i·A_i / Σ_i w_i for each name: the "base" (FedAvg) aggregation.

    ``weights`` are usually example counts (``None``: uniform). Accumulates in float64 and
    returns the dtype of the first array set, so averaging never drifts with client order more
    than one rounding. Every array set must match the first in keys, shapes and dtypes.
    """
    mean = _mean64(arrays_list, weights)
    return {k: v.astype(arrays_list[0][k].dtype) for k, v in mean.items()}


def pseudo_gradient(
    theta: Mapping[str, np.ndarray],
    client_weights: Sequence[Mapping[str, np.ndarray]],
    weights: Sequence[float] | np.ndarray | None = None,
) -> Arrays:
    """g = θ − Σ_i w_i W_i (weights normalised; ``None``: the plain mean of eq. 1).

    A step θ − β·g is eq. 1; the sign is that of a gradient so any descent optimizer applies.
    Every W_i is checked against θ (keys, shapes, dtypes, finiteness). Output dtype is θ's.
    """
    for i, w in enumerate(client_weights):
        check_update(theta, w, who=f"client_weights[{i}]")
    mean = _mean64(client_weights, weights)
    return {k: (theta[k].astype(np.float64) - mean[k]).astype(theta[k].dtype) for k in theta}


@dataclass
class OptimizerState:
    """A server optimizer's state, split for checkpoints into arrays and JSON-able metadata.

    ``arrays``: Adam's moments as ``"m/<name>"`` and ``"v/<name>"`` (float32, θ's shapes);
    empty for sgd or before the first step. ``meta``: kind, lr, beta1, beta2, eps and the step
    count t, all JSON scalars.
    """

    meta: dict[str, Any]
    arrays: Arrays = field(default_factory=dict)


class ServerOptimizer:
    """Applies a pseudo-gradient to θ on the server, with state carried across rounds.

    ``sgd``: θ ← θ − lr·g (eq. 1 with lr=β, exactly).
    ``adam`` (FedAdam with Adam's bias correction): m ← β1 m + (1−β1) g, v ← β2 v + (1−β2) g²,
    θ ← θ − lr · m̂ / (√v̂ + eps) with m̂ = m/(1−β1^t), v̂ = v/(1−β2^t). On the first step
    m̂ = g and v̂ = g², so each coordinate moves by lr·|g|/(|g|+eps) ≈ lr·sign(g).

    Maths runs in float64; θ and the moments are stored in θ's dtype (float32), so a
    checkpointed state resumes to bit-identical results.

    >>> opt = ServerOptimizer("sgd", lr=0.5)
    >>> opt.step({"p": np.array([2.0], np.float32)}, {"p": np.array([1.0], np.float32)})["p"]
    array([1.5], dtype=float32)
    """

    def __init__(
        self,
        kind: OptimizerKind,
        lr: float,
        *,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
    ) -> None:
        if kind not in OPTIMIZER_KINDS:
            raise FedpktError(f"server optimizer '{kind}' is unknown; expected 'sgd' or 'adam'")
        if not (math.isfinite(lr) and lr > 0):
            raise FedpktError(f"server optimizer lr={lr}; expected a finite number > 0")
        for label, beta in (("beta1", beta1), ("beta2", beta2)):
            if not 0.0 <= beta < 1.0:
                raise FedpktError(f"server optimizer {label}={beta}; expected 0 <= {label} < 1")
        if not (math.isfinite(eps) and eps > 0):
            raise FedpktError(f"server optimizer eps={eps}; expected a finite number > 0")
        self.kind: OptimizerKind = kind
        self.lr = float(lr)
        self.beta1 = float(beta1)
        self.beta2 = float(beta2)
        self.eps = float(eps)
        self.t = 0
        self._m: Arrays = {}
        self._v: Arrays = {}

    def step(self, theta: Mapping[str, np.ndarray], grad: Mapping[str, np.ndarray]) -> Arrays:
        """Return the new θ (a new dict; inputs are not modified) and advance the state."""
        check_update(theta, grad, who="pseudo-gradient")
        if self.kind == "sgd":
            self.t += 1
            return {
                k: (theta[k].astype(np.float64) - self.lr * grad[k].astype(np.float64)).astype(
                    theta[k].dtype
                )
                for k in theta
            }
        if self._m:
            check_update(theta, self._m, who="adam state m")
        t = self.t + 1
        new_theta: Arrays = {}
        new_m: Arrays = {}
        new_v: Arrays = {}
        for k in theta:
            g = grad[k].astype(np.float64)
            m_prev = self._m[k].astype(np.float64) if self._m else np.zeros_like(g)
            v_prev = self._v[k].astype(np.float64) if self._v else np.zeros_like(g)
            m = self.beta1 * m_prev + (1.0 - self.beta1) * g
            v = self.beta2 * v_prev + (1.0 - self.beta2) * g * g
            m_hat = m / (1.0 - self.beta1**t)
            v_hat = v / (1.0 - self.beta2**t)
            update = self.lr * m_hat / (np.sqrt(v_hat) + self.eps)
            dtype = theta[k].dtype
            new_theta[k] = (theta[k].astype(np.float64) - update).astype(dtype)
            new_m[k] = m.astype(dtype)
            new_v[k] = v.astype(dtype)
        self._m, self._v, self.t = new_m, new_v, t
        return new_theta

    def _meta(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "lr": self.lr,
            "beta1": self.beta1,
            "beta2": self.beta2,
            "eps": self.eps,
            "t": self.t,
        }

    def state_dict(self) -> OptimizerState:
        """The state as arrays (copies) + JSON metadata, for a checkpoint."""
        arrays = {f"m/{k}": v.copy() for k, v in self._m.items()}
        arrays.update({f"v/{k}": v.copy() for k, v in self._v.items()})
        return OptimizerState(meta=self._meta(), arrays=arrays)

    def load_state_dict(self, state: OptimizerState) -> None:
        """Restore a checkpointed state; its hyper-parameters must equal this optimizer's.

        A resumed run must reach the same result as an uninterrupted one, so a checkpoint made
        with another kind, lr, betas or eps is refused (one line naming the field).
        """
        meta = state.meta
        mine = self._meta()
        for key in ("kind", "lr", "beta1", "beta2", "eps"):
            if key not in meta:
                raise FedpktError(f"optimizer state has no '{key}'; expected keys {list(mine)}")
            if meta[key] != mine[key]:
                raise FedpktError(
                    f"optimizer state {key}={meta[key]!r} differs from the configured "
                    f"{key}={mine[key]!r}; expected the same setting to resume"
                )
        t = meta.get("t")
        if not isinstance(t, int) or isinstance(t, bool) or t < 0:
            raise FedpktError(f"optimizer state t={t!r}; expected an integer >= 0")
        m = {k[2:]: v for k, v in state.arrays.items() if k.startswith("m/")}
        v = {k[2:]: a for k, a in state.arrays.items() if k.startswith("v/")}
        stray = [k for k in state.arrays if not k.startswith(("m/", "v/"))]
        if stray:
            raise FedpktError(f"optimizer state has unexpected array(s) {_show_keys(stray)}")
        if self.kind == "sgd" and (m or v):
            raise FedpktError("optimizer state for 'sgd' has moment arrays; expected none")
        if self.kind == "adam":
            if (t == 0) != (not m):
                raise FedpktError(
                    f"adam state has t={t} and {len(m)} moment arrays; expected moments iff t > 0"
                )
            if m:
                check_update(m, v, who="adam state v (against m)")
                check_update(m, m, who="adam state m")
        self.t = t
        self._m = {k: a.copy() for k, a in m.items()}
        self._v = {k: a.copy() for k, a in v.items()}


def ppreptile_step(
    theta: Mapping[str, np.ndarray],
    client_weights: Sequence[Mapping[str, np.ndarray]],
    optimizer: ServerOptimizer,
    weights: Sequence[float] | np.ndarray | None = None,
) -> Arrays:
    """One PPReptile outer step: θ ← optimizer.step(θ, θ − mean_i W_i).

    β is ``optimizer.lr``. With ``ServerOptimizer("sgd", lr=β)`` and ``weights=None`` this is
    eq. 1, θ + β·(1/n)·Σ(W_i − θ). ``weights`` (e.g. temperature weights or example counts)
    replace the plain mean by a weighted one.
    """
    return optimizer.step(theta, pseudo_gradient(theta, client_weights, weights))


def temperature_weights(counts: Sequence[float] | np.ndarray, temperature: float) -> np.ndarray:
    """p_i = n_i^(1/T) / Σ_j n_j^(1/T): temperature-scaled mixing (shape (len(counts),)).

    T=1 gives p ∝ n (big personas dominate); T→∞ (``math.inf`` allowed) gives uniform. Computed
    in log space, so huge counts or tiny T do not overflow. Every n_i must be > 0: a persona
    with no data has no place in the mixture.
    """
    n = np.asarray(counts, dtype=np.float64)
    if n.ndim != 1 or n.size == 0:
        raise FedpktError(f"counts has shape {n.shape}; expected a non-empty list")
    if not np.all(np.isfinite(n)) or np.any(n <= 0):
        raise FedpktError(f"counts {n.tolist()} must all be finite and > 0")
    if math.isnan(temperature) or temperature <= 0:
        raise FedpktError(f"temperature T={temperature}; expected T > 0")
    logits = np.log(n) / temperature
    p = np.exp(logits - logits.max())
    return p / p.sum()


def sample_clients(
    rng: np.random.Generator,
    client_ids: Sequence[str],
    n: int,
    weights: Sequence[float] | np.ndarray | None = None,
) -> list[str]:
    """Draw ``n`` distinct clients, uniformly or with probabilities ∝ ``weights``.

    The ids are sorted first (weights kept aligned), so the draw depends only on the set of
    clients and the rng state, not on the order in which nodes connected. If ``n`` >= the
    number of clients, every client is returned in sorted order and the rng is not used.
    Otherwise the result is in draw order. Zero weights are allowed but at least ``n`` must be
    positive.
    """
    ids = list(client_ids)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise FedpktError(f"sample size n={n!r}; expected an integer >= 1")
    if not ids:
        raise FedpktError("no clients to sample from; expected at least one client id")
    if len(set(ids)) != len(ids):
        dupes = sorted({c for c in ids if ids.count(c) > 1})
        raise FedpktError(f"client ids contain duplicates {_show_keys(dupes)}")
    order = sorted(range(len(ids)), key=lambda i: ids[i])
    sorted_ids = [ids[i] for i in order]
    p = None
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (len(ids),):
            raise FedpktError(f"weights has {w.size} entries; expected one per client ({len(ids)})")
        p = _normalized_weights(w[order], len(ids))
        positive = int(np.count_nonzero(p))
        if positive < min(n, len(ids)):
            raise FedpktError(
                f"only {positive} client(s) have a positive weight; expected at least n={n}"
            )
    if n >= len(ids):
        return sorted_ids
    picked = rng.choice(len(ids), size=int(n), replace=False, p=p)
    return [sorted_ids[int(i)] for i in picked]
