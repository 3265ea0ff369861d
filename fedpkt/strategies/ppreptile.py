"""``ppreptile``: PersonaPKT's PPReptile, θ ← opt(θ, g = θ − (1/n) Σ_i W_i) (paper eq. 1).

β is ``outer_lr``; ``server_optimizer`` says how g is applied (``fedpkt.algorithms`` explains
why Adam is the default). The optimizer's state travels through checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from fedpkt.algorithms import OptimizerState, ServerOptimizer, ppreptile_step
from fedpkt.strategies.base import Arrays, Phase1Strategy, StrategyParams, register

if TYPE_CHECKING:
    from fedpkt.config import Phase1Config


class PPReptileParams(StrategyParams):
    name: Literal["ppreptile"] = "ppreptile"
    outer_lr: float = Field(
        3e-5, gt=0.0, le=10.0, description="beta: outer (server) learning rate."
    )
    server_optimizer: Literal["sgd", "adam"] = Field(
        "adam",
        description="How the pseudo-gradient theta - mean(W_i) is applied: plain Reptile step "
        "(sgd) or Adam as in FedOpt (the reading under which beta=3e-5 is sensible).",
    )


@register
class PPReptile(Phase1Strategy):
    name = "ppreptile"
    label = "PersonaPKT (PPReptile)"
    Params = PPReptileParams

    def __init__(self, params: PPReptileParams, phase1: Phase1Config) -> None:
        super().__init__(params, phase1)
        self.optimizer = ServerOptimizer(params.server_optimizer, lr=params.outer_lr)

    def aggregation_weights(self, counts: Sequence[float]) -> list[float]:
        """Uniform: eq. 1 averages the W_i with equal weight."""
        return [1.0] * len(counts)

    def outer_step(
        self, theta: Arrays, updates: Sequence[Arrays], counts: Sequence[float]
    ) -> Arrays:
        return ppreptile_step(theta, updates, self.optimizer)

    def state_dict(self) -> OptimizerState:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: OptimizerState) -> None:
        self.optimizer.load_state_dict(state)
