"""Phase 1 with client-level DP (Flower's DP strategy wrappers) or with SecAgg+.

Both are wrappers around :class:`server.strategy.SourcePrefixStrategy` and are
:class:`server.strategy.Phase1Hooks` themselves: the one round loop (``Phase1Hooks.start``) calls
the wrapper's four hooks, and the wrapper ends in the same SourceTrainer outer step
(``SourceTrainer.apply_mean``), so no strategy's maths is duplicated. A wrapper reaches the
wrapped strategy through its public methods only (``configure_train``, ``collect_updates``,
``train_metrics``, ``record_epsilon``, the trainer's ``apply_mean``/``skip_round``/
``aggregation_weights``) and adds its round-event fields through ``round_info``.

Client-level DP (McMahan et al. 2018; Andrew et al. 2021 for adaptive clipping)
------------------------------------------------------------------------------
Flower's ``DifferentialPrivacyServerSide{Fixed,Adaptive}Clipping`` clips each reply's update
W_i − θ to norm C and adds N(0, (z·C/m)²) to the aggregate its inner strategy returns. The inner
strategy here is :class:`UpdateMean`: W̄ = θ + (1/m) Σ_i clip(W_i − θ), with m = b_out, the
number of clients *sampled* (a fixed denominator, so one client moves W̄ by at most C/m even
when others drop out). The wrapper's output is the noised mean W̃; the outer step then runs on
it, ``SourceTrainer.apply_mean(W̃)``: PPReptile's θ ← opt(θ, g = θ − W̃), or W̃ itself for
the averaging strategies (``base``, ``temperature``, ``fedprox``). The outer step only
post-processes a DP release, so the guarantee holds whatever the server optimizer; under DP
every strategy averages uniformly (count or temperature weights would break the C/m
sensitivity).

ε is accounted with opacus's RDP accountant for the subsampled Gaussian mechanism: q = b_out /
|Part A| under uniform client sampling (temperature sampling gets no amplification, q = 1), z
the configured noise multiplier, one composition per released round, δ = ``dp.delta``.
Flower 1.42's own ``PrivacyAccountant`` (``flwr.serverapp``) is not used: its wrappers accept it
only around ``FedAvg.aggregate_train``, and its RDP backend needs ``dp-accounting``, which is
not installed. Adaptive clipping spends part of z on the noisy clipped-count (σ_b); Flower
raises the update's own multiplier to z_Δ = (z⁻² − (2σ_b)⁻²)^(-1/2) so that the pair costs what
one Gaussian of multiplier z costs, hence ε is computed from z in both modes.

The noise is drawn from numpy's global RNG, unseeded on purpose: noise reproducible from the
run's seed could be subtracted again. A resumed DP run is therefore not bit-identical to an
uninterrupted one (the ε ledger and the adaptive C are restored from the last round event).

SecAgg+ (Bell et al. 2020) through Flower
-----------------------------------------
Flower 1.42 ships SecAgg+ only for the legacy API: ``SecAggPlusWorkflow`` (server) drives a
``LegacyContext`` holding a legacy ``flwr.server.strategy.Strategy`` (``configure_fit`` /
``aggregate_fit`` on FitIns/FitRes) and ``secaggplus_mod`` (client) reads the reply as a FitRes.
There is no Message-API SecAgg+ strategy. So :class:`SecAggPlusTraining` is a Message-API
Strategy whose ``configure_train`` runs the workflow's four stages itself (setup, share keys,
collect masked vectors, unmask; each a ``grid.send_and_receive``) through a small legacy
adapter (:class:`_LegacyRound`), returns no message for the loop to send, and applies the outer
step in ``aggregate_train``. Clients send Δ_i = W_i − θ, weighted by the strategy's
``aggregation_weights`` (1 for PPReptile, n_i for base and fedprox, n_i^(1/T) for temperature)
and quantized to 2^22 levels over ±``secagg_clipping_range``;
the server only ever sees Σ w_i Δ_i / Σ w_i. The client side is ``clients/secure.py``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from logging import INFO
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common import FitIns, FitRes, Parameters, ndarrays_to_parameters
from flwr.common import parameters_to_ndarrays as legacy_ndarrays
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy as LegacyStrategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
)
from flwr.supercore import log

from fedpkt.config import DPConfig, FedpktConfig, Phase1Config, PrivacyConfig
from fedpkt.errors import FedpktError
from fedpkt.source import ClientUpdate
from fedpkt.strategies import build_strategy
from fedpkt.train.dp import RDP_ALPHAS
from server.strategy import Phase1Hooks, SourcePrefixStrategy
from wire import CLIENT_ID, CONFIG, from_array_record, to_array_record

Arrays = dict[str, np.ndarray]

# Config keys the server adds to a SecAgg+ train message (read by clients/secure.py).
SECAGG_NAMES = "secagg-names"
SECAGG_WEIGHT = "secagg-weight"


# ================================================================================ accounting
def dp_sample_rate(cfg: Phase1Config, population: int) -> float:
    """q: the probability that one Part A client takes part in a round.

    Uniform sampling of b_out of N clients gives q = b_out / N (the usual Poisson approximation
    of sampling without replacement, as in McMahan et al. 2018). Temperature sampling favours
    some clients; no amplification is claimed for it (q = 1).
    """
    if population <= 0:
        raise FedpktError(f"client-level DP population {population}; expected >= 1 client")
    if cfg.sampling != "uniform":
        return 1.0
    return min(1.0, cfg.clients_per_round / population)


def client_dp_epsilon(
    noise_multiplier: float, sample_rate: float, rounds: int, delta: float
) -> float:
    """ε after ``rounds`` releases of the subsampled Gaussian mechanism (RDP, opacus).

    0 rounds cost nothing (ε = 0). Example: z = 1, q = 1, one round, δ = 1e-5 gives ε ≈ 4.73
    under RDP (a single unamplified Gaussian release is expensive); q = 0.01 over 100 rounds
    gives ε ≈ 1.21.
    """
    if rounds <= 0:
        return 0.0
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent  # DP runs only

    orders = RDP_ALPHAS
    rdp = compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=rounds, orders=orders)
    epsilon, _ = get_privacy_spent(orders=orders, rdp=rdp, delta=delta)
    return float(epsilon)


# ======================================================================= client-level DP
class _SourceEvaluation(Phase1Hooks):
    """Phase-1 training wrappers change how θ is aggregated, never federated validation:
    evaluation always goes through the wrapped SourcePrefixStrategy (``self.source``)."""

    source: SourcePrefixStrategy

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.source.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.source.aggregate_evaluate(server_round, replies)


class UpdateMean(_SourceEvaluation):
    """The inner strategy Flower's DP wrapper aggregates with: W̄ = θ + Σ_i (W_i − θ) / m.

    The replies it receives are already clipped by the wrapper; m is the number of clients
    sampled this round (fixed denominator: the sensitivity stays C/m when some drop out).
    Shapes: θ and W̄ are the prefix's named float32 arrays.
    """

    def __init__(self, source: SourcePrefixStrategy) -> None:
        self.source = source
        self.sampled = 0
        self._screened: dict[str, ClientUpdate] = {}  # reply message id -> its screened update

    def expect(self, screened: list[tuple[Message, ClientUpdate]]) -> None:
        """The screened replies the DP wrapper will pass on (clipped): each reply's count and
        loss are looked up by its message id, whatever order the wrapper passes them in."""
        self._screened = {msg.metadata.message_id: update for msg, update in screened}

    def summary(self) -> None:
        self.source.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(self.source.configure_train(server_round, arrays, config, grid))
        self.sampled = len(messages)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        theta = self.source.trainer.theta
        updates = []
        for msg in replies:
            u = self._screened[msg.metadata.message_id]
            arrays = from_array_record(msg.content["arrays"])
            updates.append(ClientUpdate(u.client_id, arrays, u.num_examples, u.loss))
        mean = {
            name: (
                ref.astype(np.float64)
                + sum(u.arrays[name].astype(np.float64) - ref for u in updates) / self.sampled
            ).astype(ref.dtype)
            for name, ref in theta.items()
        }
        return to_array_record(mean), self.source.train_metrics(updates)


class ClientLevelDP(_SourceEvaluation):
    """Client-level DP phase 1: screen replies, Flower's clipping wrapper, outer step, ε.

    The loop calls these hooks; each round's noise multiplier, clipping norm and ε go into the
    round event (``metrics.jsonl``) through ``round_info``.
    """

    def __init__(
        self,
        source: SourcePrefixStrategy,
        dp: DPConfig,
        population: int,
        resumed: dict[str, Any] | None = None,
    ) -> None:
        self.source = source
        self.dp = dp
        self.mean = UpdateMean(source)
        sampled = min(source.cfg.clients_per_round, population)
        self.sample_rate = dp_sample_rate(source.cfg, population)
        resumed = resumed or {}
        self.releases = int(resumed.get("dp_releases", 0))
        self._info: dict[str, object] = {}
        clip = float(resumed.get("dp_clip_norm", dp.client_dp_clip))
        self.wrapper: (
            DifferentialPrivacyServerSideFixedClipping
            | DifferentialPrivacyServerSideAdaptiveClipping
        )
        if dp.client_dp == "fixed":
            self.wrapper = DifferentialPrivacyServerSideFixedClipping(
                self.mean, dp.client_dp_noise, clip, sampled
            )
        elif dp.client_dp == "adaptive":
            # σ_b defaults to m/20 in Flower, which needs z < m/10: impossible for small
            # cohorts. σ_b = max(m/20, z) keeps z_Δ = z / sqrt(1 - 1/4) ≈ 1.155 z at worst.
            self.wrapper = DifferentialPrivacyServerSideAdaptiveClipping(
                self.mean,
                dp.client_dp_noise,
                sampled,
                initial_clipping_norm=clip,
                target_clipped_quantile=dp.client_dp_target_quantile,
                clip_norm_lr=dp.client_dp_clip_lr,
                clipped_count_stddev=max(sampled / 20, dp.client_dp_noise),
            )
        else:
            raise FedpktError(f"dp.client_dp='{dp.client_dp}'; expected 'fixed' or 'adaptive'")

    def summary(self) -> None:
        log(
            INFO,
            "\t├── client-level DP: %s clipping, z=%g, C=%g, q=%.4g, delta=%g",
            self.dp.client_dp,
            self.dp.client_dp_noise,
            self.wrapper.clipping_norm,
            self.sample_rate,
            self.dp.delta,
        )
        self.wrapper.summary()

    def epsilon(self) -> float:
        return client_dp_epsilon(
            self.dp.client_dp_noise, self.sample_rate, self.releases, self.dp.delta
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._info = {}
        return self.wrapper.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        screened = self.source.collect_updates(server_round, replies)
        theta = self.source.trainer.theta
        for msg, update in screened:
            # Flower clips by array position: put every reply in θ's key order first.
            msg.content["arrays"] = to_array_record({k: update.arrays[k] for k in theta})
        self.mean.expect(screened)
        clip_used = float(self.wrapper.clipping_norm)  # adaptive C moves inside the call
        noised, metrics = self.wrapper.aggregate_train(server_round, [m for m, _ in screened])
        if noised is None:
            theta = self.source.trainer.theta
            self.source.trainer.skip_round(server_round)
        else:
            self.releases += 1
            w_tilde = {k: v.astype(np.float32) for k, v in from_array_record(noised).items()}
            loss = float(np.mean([u.loss for _, u in screened]))
            theta = self.source.trainer.apply_mean(w_tilde, loss, "client-dp-mean")
        self._info = {
            "dp_mode": self.dp.client_dp,
            "dp_noise_multiplier": self.dp.client_dp_noise,
            "dp_update_noise_multiplier": float(self.wrapper.noise_multiplier),
            "dp_clip_norm_used": clip_used,
            "dp_clip_norm": float(self.wrapper.clipping_norm),
            "dp_sample_rate": self.sample_rate,
            "dp_releases": self.releases,
            "dp_delta": self.dp.delta,
            "dp_epsilon": self.epsilon(),
        }
        return to_array_record(theta), metrics

    def round_info(self) -> dict[str, object]:
        """This round's noise multiplier, clipping norm, sampling rate, releases and ε."""
        return dict(self._info)


# ==================================================================================== SecAgg+
def secagg_weights(cfg: Phase1Config, counts: dict[str, int], client_ids: list[str]) -> list[float]:
    """Each sampled client's aggregation weight, in ``client_ids`` order: the configured
    strategy's ``aggregation_weights`` of the clients' n_i (SecAgg+ divides by the sum, so
    unnormalised weights suffice). Example: counts {a: 4, b: 16}; ppreptile -> [1, 1], base ->
    [4, 16], temperature with T = 2 -> ∝ [2, 4] (scaled to sum 1: [1/3, 2/3]).
    """
    return build_strategy(cfg).aggregation_weights([float(counts[c]) for c in client_ids])


class _LegacyRound(LegacyStrategy):
    """The legacy strategy SecAggPlusWorkflow needs, for one round: hands out the prepared
    FitIns and keeps the securely aggregated parameters and the per-client metrics."""

    def __init__(self, instructions: list[tuple[ClientProxy, FitIns]]) -> None:
        self.instructions = instructions
        self.aggregate: list[np.ndarray] | None = None
        self.results: list[tuple[int, dict[str, Any]]] = []
        self.failures = 0

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return None

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        return self.instructions

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[Any],
    ) -> tuple[Parameters | None, dict[str, Any]]:
        # The workflow set every FitRes.parameters to the one unmasked weighted mean.
        self.results = [(int(proxy.node_id), dict(res.metrics)) for proxy, res in results]
        self.failures = len(failures)
        if results:
            self.aggregate = legacy_ndarrays(results[0][1].parameters)
        return None, {}

    def configure_evaluate(self, *args: Any, **kwargs: Any) -> list[Any]:
        return []

    def aggregate_evaluate(self, *args: Any, **kwargs: Any) -> tuple[None, dict[str, Any]]:
        return None, {}

    def evaluate(self, *args: Any, **kwargs: Any) -> None:
        return None


class SecAggPlusTraining(_SourceEvaluation):
    """Phase-1 training rounds through Flower's SecAgg+ (see the module docstring)."""

    def __init__(self, source: SourcePrefixStrategy, privacy: PrivacyConfig, timeout: float):
        self.source = source
        self.privacy = privacy
        self.timeout = timeout
        self.aggregate: Arrays | None = None
        self.legacy: _LegacyRound | None = None
        self._info: dict[str, object] = {}

    def summary(self) -> None:
        log(
            INFO,
            "\t├── SecAgg+: shares=%g, threshold=%g, clipping range=±%g",
            self.privacy.secagg_num_shares,
            self.privacy.secagg_threshold,
            self.privacy.secagg_clipping_range,
        )
        self.source.summary()

    def _instructions(
        self, server_round: int, arrays: ArrayRecord, grid: Grid
    ) -> tuple[list[tuple[ClientProxy, FitIns]], float]:
        """The source strategy's train messages as FitIns (θ in name order) + max weight."""
        messages = list(self.source.configure_train(server_round, arrays, ConfigRecord(), grid))
        names = sorted(self.source.trainer.theta)
        theta = self.source.trainer.theta
        ids = [str(m.content[CONFIG][CLIENT_ID]) for m in messages]
        weights = secagg_weights(self.source.cfg, self.source.trainer.counts, ids)
        weight_of = dict(zip(ids, weights, strict=True))  # client id -> its weight
        instructions = []
        for msg in messages:
            config = dict(msg.content["config"])
            config[SECAGG_NAMES] = json.dumps(names)  # legacy configs hold scalars only
            config[SECAGG_WEIGHT] = weight_of[str(config[CLIENT_ID])]
            proxy = GridClientProxy(msg.metadata.dst_node_id, grid, 0)
            params = ndarrays_to_parameters([theta[name] for name in names])
            instructions.append((proxy, FitIns(parameters=params, config=config)))
        return instructions, max(weights, default=1.0)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Run the whole SecAgg+ exchange now; the loop gets no message to send itself."""
        self._info = {}
        instructions, max_weight = self._instructions(server_round, arrays, grid)
        if len(instructions) < 2:
            raise FedpktError(
                f"round {server_round}: SecAgg+ needs >= 2 clients per round; "
                f"{len(instructions)} sampled (phase1.clients_per_round)"
            )
        self.legacy = _LegacyRound(instructions)
        context = LegacyContext(
            Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}),
            strategy=self.legacy,
        )
        context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord(
            {WorkflowKey.CURRENT_ROUND: server_round}
        )
        context.state.array_records[MAIN_PARAMS_RECORD] = arrays
        workflow = SecAggPlusWorkflow(
            num_shares=float(self.privacy.secagg_num_shares),
            reconstruction_threshold=float(self.privacy.secagg_threshold),
            # The largest weight maps to the full quantization range: best precision.
            max_weight=max_weight,
            clipping_range=self.privacy.secagg_clipping_range,
            timeout=self.timeout,
        )
        workflow(grid, context)
        return []

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """θ from the unmasked mean update: W̄ = θ + Σ w_i Δ_i / Σ w_i, then the outer step."""
        legacy = self.legacy
        if legacy is None or legacy.aggregate is None:
            raise FedpktError(
                f"round {server_round}: SecAgg+ halted before unmasking (too few clients "
                "answered a stage); continue with --resume (which may raise "
                "phase1.client_timeout_s)"
            )
        if len(legacy.results) < self.source.cfg.min_clients:
            raise FedpktError(
                f"round {server_round}: {len(legacy.results)} SecAgg+ contributions, fewer "
                f"than phase1.min_clients={self.source.cfg.min_clients}"
            )
        theta = self.source.trainer.theta
        names = sorted(theta)  # the legacy vector's order, sent to clients as SECAGG_NAMES
        w_bar = {
            name: (theta[name].astype(np.float64) + delta).astype(theta[name].dtype)
            for name, delta in zip(names, legacy.aggregate, strict=True)
        }
        self.aggregate = w_bar
        by_node = {e.node_id: e.client_id for e in self.source.directory.entries.values()}
        updates = [
            ClientUpdate(by_node.get(node, f"node-{node}"), {}, 1, float(m["train-loss"]))
            for node, m in legacy.results
        ]
        for node, m in legacy.results:
            if "epsilon" in m:
                self.source.record_epsilon(by_node.get(node, f"node-{node}"), float(m["epsilon"]))
        new_theta = self.source.trainer.apply_mean(w_bar, updates[0].loss, "secagg-mean")
        self._info = {
            "secagg": True,
            "secagg_clients": len(legacy.results),
            "secagg_failures": legacy.failures,
        }
        self.legacy = None
        return to_array_record(new_theta), self.source.train_metrics(updates)

    def round_info(self) -> dict[str, object]:
        """This round's SecAgg+ contributions and failures."""
        return dict(self._info)


# ================================================================================= wiring
def phase1_hooks(
    source: SourcePrefixStrategy,
    cfg: FedpktConfig,
    population: int,
    resumed: dict[str, Any] | None = None,
) -> Phase1Hooks:
    """The strategy whose ``start`` runs phase 1: plain, client-level DP, or SecAgg+."""
    if cfg.privacy.secagg:
        return SecAggPlusTraining(source, cfg.privacy, cfg.phase1.client_timeout_s)
    if cfg.dp.client_dp != "off":
        return ClientLevelDP(source, cfg.dp, population, resumed)
    return source


def client_dp_section(rounds: list[dict[str, Any]]) -> dict[str, str]:
    """The report section on client-level DP (title -> Markdown); empty without DP rounds."""
    dp_rounds = [r for r in rounds if r.get("dp_mode")]
    if not dp_rounds:
        return {}
    last = max(dp_rounds, key=lambda r: r["round"])
    lines = [
        f"Phase 1 ran with client-level DP ({last['dp_mode']} clipping, Flower's server-side "
        "wrapper): each W_i − θ clipped to norm C, Gaussian noise on the mean.",
        "",
        "| Noise multiplier z | Update noise z_Δ | Clip norm C (last) | Sampling rate q "
        "| Released rounds | δ | ε |",
        "|---|---|---|---|---|---|---|",
        f"| {last['dp_noise_multiplier']:g} | {last['dp_update_noise_multiplier']:.4g} "
        f"| {last['dp_clip_norm']:.4g} | {last['dp_sample_rate']:.4g} | {last['dp_releases']} "
        f"| {last['dp_delta']:g} | {last['dp_epsilon']:.4g} |",
    ]
    if not math.isfinite(float(last["dp_epsilon"])):
        lines.append("")
        lines.append("ε is infinite: the noise is too small for any finite guarantee.")
    return {"Client-level differential privacy (phase 1)": "\n".join(lines)}
