"""``temperature``: θ ← Σ_i p_i W_i with p_i ∝ n_i^(1/T), temperature-scaled mixing.

T is ``phase1.temperature``, shared with temperature *sampling* (``phase1.sampling``), which is
a separate setting any strategy can use. Example: n = [4, 16], T = 2 -> p ∝ [2, 4] = [1/3, 2/3].
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from fedpkt.algorithms import temperature_weights
from fedpkt.strategies.base import Phase1Strategy, StrategyParams, register


class TemperatureParams(StrategyParams):
    name: Literal["temperature"] = "temperature"


@register
class TemperatureMixing(Phase1Strategy):
    name = "temperature"
    label = "PersonaPKT (temperature)"
    Params = TemperatureParams

    def aggregation_weights(self, counts: Sequence[float]) -> list[float]:
        return [float(w) for w in temperature_weights(list(counts), self.phase1.temperature)]
