"""``base``: the paper's PersonaPKT (base), FedAvg on prefixes: θ ← Σ_i n_i W_i / Σ_i n_i."""

from __future__ import annotations

from typing import Literal

from fedpkt.strategies.base import Phase1Strategy, StrategyParams, register


class BaseParams(StrategyParams):
    name: Literal["base"] = "base"


@register
class FedAvg(Phase1Strategy):
    """Everything from ``Phase1Strategy``: weights n_i, plain client SGD, no server state."""

    name = "base"
    label = "PersonaPKT (base)"
    Params = BaseParams
