"""Phase 1's server side as a plain state machine: sample clients, apply their updates, checkpoint.

Both the Flower strategy (``server/``) and the centralized baselines drive this one class, so
federated and centralized source-prefix training differ only in how client updates are
computed and transported — never in the maths. The state (θ, server optimizer, sampling RNG,
round) round-trips through a checkpoint bit-exactly, which is what makes resume reproduce an
uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from fedpkt.algorithms import OptimizerState, check_update, sample_clients, temperature_weights
from fedpkt.atomic import atomic_write_bytes, atomic_write_json
from fedpkt.config import FedpktConfig, Phase1Config
from fedpkt.errors import FedpktError
from fedpkt.peft import get_method
from fedpkt.strategies import build_strategy

Arrays = dict[str, np.ndarray]
CHECKPOINT_VERSION = 1


@dataclass
class ClientUpdate:
    """What one client returned in a round: W_i, its example count n_i and its mean loss."""

    client_id: str
    arrays: Arrays
    num_examples: int
    loss: float


def client_seed(seed: int, round_num: int, client_id: str, purpose: str = "train") -> int:
    """A seed that depends only on (run seed, round, client, purpose).

    Clients derive their RNGs from this, so a resumed run replays exactly the same local steps
    as an uninterrupted one, whichever worker process executes them.
    """
    digest = hashlib.sha256(f"{seed}/{round_num}/{client_id}/{purpose}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def initial_theta(cfg: FedpktConfig, model_config: Any) -> tuple[Arrays, int]:
    """θ_0, the seeded random module of the run's PEFT method for this backbone (needs only its
    config), and the parameters one persona stores (``PeftMethod.stored_params``)."""
    method = get_method(cfg.prefix.method)
    module = method.build(model_config, cfg.prefix, seed=cfg.seed)
    return method.arrays(module), method.stored_params(model_config, cfg.prefix.num_virtual_tokens)


class SourceTrainer:
    """Server-side state of source-prefix training: θ, sampling, and the configured strategy's
    outer step (``fedpkt.strategies``), whose server state it checkpoints.

    ``counts`` maps every Part A client id to its number of training examples n_i; the server
    learns these from the clients' handshake, never from their data.
    """

    def __init__(self, theta: Arrays, cfg: Phase1Config, counts: dict[str, int], seed: int) -> None:
        if not counts:
            raise FedpktError("phase 1 needs at least one Part A client; got none")
        self.cfg = cfg
        self.seed = seed
        self.theta = {name: np.asarray(value, dtype=np.float32) for name, value in theta.items()}
        self.client_ids = sorted(counts)
        self.counts = {cid: int(counts[cid]) for cid in self.client_ids}
        self.round = 0
        self.rng = np.random.default_rng(seed)
        self.strategy = build_strategy(cfg)

    # -- sampling ---------------------------------------------------------------------------
    def sampling_weights(self) -> np.ndarray | None:
        """None for uniform sampling, else p_i ∝ n_i^(1/T) over ``client_ids``."""
        if self.cfg.sampling == "uniform":
            return None
        return temperature_weights([self.counts[c] for c in self.client_ids], self.cfg.temperature)

    def sample_train(self) -> list[str]:
        """The b_out clients of the next round (advances the sampling RNG)."""
        return sample_clients(
            self.rng, self.client_ids, self.cfg.clients_per_round, self.sampling_weights()
        )

    def sample_eval(self) -> list[str]:
        """The federated-validation cohort: the same clients every round.

        A fixed cohort makes the per-round validation curve measure θ rather than which
        clients happened to be drawn; it depends only on the seed, so resume keeps it.
        """
        if self.cfg.eval_clients == 0:
            return []
        rng = np.random.default_rng([self.seed, 1])
        return sample_clients(rng, self.client_ids, self.cfg.eval_clients, None)

    # -- aggregation ------------------------------------------------------------------------
    def validate(self, update: ClientUpdate) -> None:
        """Reject a reply whose arrays do not match θ (names, shapes, dtype, finiteness), or
        whose example count is not within 1 and what the client's handshake reported."""
        if update.client_id not in self.counts:
            raise FedpktError(f"reply from unknown client '{update.client_id}'")
        if update.num_examples <= 0:
            raise FedpktError(
                f"client '{update.client_id}' reported num-examples={update.num_examples}; "
                "expected a positive count"
            )
        if update.num_examples > self.counts[update.client_id]:  # the base strategy's weight
            raise FedpktError(
                f"client '{update.client_id}' reported num-examples={update.num_examples}; "
                f"expected at most the {self.counts[update.client_id]} training examples its "
                "handshake reported"
            )
        if not np.isfinite(update.loss):
            raise FedpktError(f"client '{update.client_id}' reported a non-finite loss")
        check_update(self.theta, update.arrays, who=f"reply of client '{update.client_id}'")

    def apply(self, updates: list[ClientUpdate]) -> Arrays:
        """One outer step from the round's valid updates; returns the new θ."""
        if not updates:
            raise FedpktError("no valid client update to aggregate this round")
        ordered = sorted(updates, key=lambda u: u.client_id)  # order-independent maths
        self.theta = self.strategy.outer_step(
            self.theta, [u.arrays for u in ordered], [float(u.num_examples) for u in ordered]
        )
        self.round += 1
        return self.theta

    def apply_mean(self, mean: Arrays, loss: float, source: str) -> Arrays:
        """The outer step on one already-aggregated W̄ (a DP release, a SecAgg+ sum): the
        strategy's step given the single update W̄ (weight 1); ``source`` names it in errors."""
        return self.apply([ClientUpdate(source, mean, num_examples=1, loss=loss)])

    def skip_round(self, server_round: int) -> None:
        """Count ``server_round`` as done with θ unchanged (a wrapper released nothing)."""
        self.round = server_round

    # -- checkpoints ------------------------------------------------------------------------
    def save(self, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write ``round-NNNN.safetensors`` (θ and optimizer arrays) and its JSON state."""
        directory = Path(directory)
        tensors = {f"theta/{k}": v for k, v in self.theta.items()}
        opt_state = self.strategy.state_dict()
        tensors.update({f"opt/{k}": v for k, v in opt_state.arrays.items()})
        stem = f"round-{self.round:04d}"
        atomic_write_bytes(directory / f"{stem}.safetensors", save_safetensors(tensors))
        state = {
            "version": CHECKPOINT_VERSION,
            "round": self.round,
            "seed": self.seed,
            "rng": self.rng.bit_generator.state,
            "optimizer": opt_state.meta,
            "client_ids": self.client_ids,
            "extra": extra or {},
        }
        # The JSON lands last: a checkpoint counts only once both files exist.
        return atomic_write_json(directory / f"{stem}.json", state)

    @staticmethod
    def latest_checkpoint(directory: str | Path) -> Path | None:
        """The newest complete checkpoint's JSON path, or None."""
        directory = Path(directory)
        if not directory.is_dir():
            return None
        states = sorted(directory.glob("round-*.json"))
        for path in reversed(states):
            if path.with_suffix(".safetensors").is_file():
                return path
        return None

    def load(self, state_path: str | Path) -> dict[str, Any]:
        """Restore θ, optimizer, RNG and round from a checkpoint; returns its ``extra``."""
        state_path = Path(state_path)
        try:
            state = json.loads(state_path.read_text())
            blob = load_safetensors(state_path.with_suffix(".safetensors").read_bytes())
        except (OSError, ValueError) as err:
            raise FedpktError(f"checkpoint '{state_path}' is unreadable: {err}") from None
        if state.get("version") != CHECKPOINT_VERSION:
            raise FedpktError(
                f"checkpoint '{state_path}' has version {state.get('version')}; "
                f"expected {CHECKPOINT_VERSION}"
            )
        if state["client_ids"] != self.client_ids or state["seed"] != self.seed:
            raise FedpktError(
                f"checkpoint '{state_path}' belongs to another run (clients or seed differ)"
            )
        theta = {k.removeprefix("theta/"): v for k, v in blob.items() if k.startswith("theta/")}
        check_update(self.theta, theta, who=f"checkpoint '{state_path}'")
        self.theta = theta
        opt = {k.removeprefix("opt/"): v for k, v in blob.items() if k.startswith("opt/")}
        self.strategy.load_state_dict(OptimizerState(meta=state["optimizer"], arrays=opt))
        self.rng.bit_generator.state = state["rng"]
        self.round = int(state["round"])
        return state.get("extra", {})
