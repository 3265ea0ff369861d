"""``fedprox``: FedProx (Li et al. 2020), FedAvg whose clients minimise L_i(w) + μ/2·‖w − θ‖².

Client half: the proximal term's gradient μ(w − θ) is added to each parameter's gradient just
before the inner loop's base SGD step. Adding it there, rather than to the loss, is what makes
it survive DP-SGD: opacus's ``DPOptimizer`` replaces ``p.grad`` with the clipped, noised mean of
*per-example* gradients and only then calls the base optimizer's ``step``, so a term added to the
batch loss would be dropped (it has no per-example gradient), while this one is added to the
noised gradient. It depends on w and θ only, never on data, so it costs no privacy. Without DP
it is exactly the gradient of μ/2·‖w − θ‖² added to the loss. μ = 0 is FedAvg (``base``).

Server half: FedAvg, θ ← Σ n_i W_i / Σ n_i (inherited from ``Phase1Strategy``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from fedpkt.strategies.base import Phase1Strategy, StrategyParams, register

if TYPE_CHECKING:
    from fedpkt.train.loop import OptimizerFactory


class FedProxParams(StrategyParams):
    name: Literal["fedprox"] = "fedprox"
    mu: float = Field(
        0.01,
        ge=0.0,
        le=1e6,
        description="mu: weight of the proximal term mu/2 * ||w - theta||^2 in the client loss.",
    )


def proximal(base: OptimizerFactory, mu: float) -> OptimizerFactory:
    """``base``'s optimizer with μ(w − θ) added to every gradient before each step.

    θ is each parameter's value when the optimizer is built (the received source prefix). A
    step-pre-hook on the base optimizer: under DP it fires inside ``DPOptimizer.step``, after
    clipping and noise. Example: w = θ + 1, zero data gradient, lr 0.1, μ = 2 -> w ← θ + 0.8.
    """

    def build(params: list[Any], *, lr: float, weight_decay: float) -> Any:
        optimizer = base(params, lr=lr, weight_decay=weight_decay)
        anchors = [p.detach().clone() for p in params]

        def add_proximal_gradient(*_: object) -> None:
            for param, anchor in zip(params, anchors, strict=True):
                if param.grad is not None:
                    param.grad.add_(param.detach() - anchor, alpha=mu)

        optimizer.register_step_pre_hook(add_proximal_gradient)
        return optimizer

    return build


@register
class FedProx(Phase1Strategy):
    name = "fedprox"
    label = "PersonaPKT (FedProx)"
    Params = FedProxParams
    params: FedProxParams

    def client_optimizer(self, base: OptimizerFactory) -> OptimizerFactory:
        return proximal(base, self.params.mu)
