"""Phase-1 strategies as plug-ins: one module each, registered by name (see ``base``).

Adding a strategy: write one module with a ``StrategyParams`` subclass (``name`` a Literal of
the new name) and a ``@register``-ed ``Phase1Strategy`` subclass, and import it below. The
config, the Flower server, the DP/SecAgg+ wrappers, the centralized baselines and ``compare``
pick it up from ``STRATEGIES``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import Field

from fedpkt.strategies import fedavg, fedprox, ppreptile, temperature  # noqa: F401 (register)
from fedpkt.strategies.base import STRATEGIES, Phase1Strategy, StrategyParams, register

if TYPE_CHECKING:
    from fedpkt.config import Phase1Config

DEFAULT_STRATEGY = "ppreptile"

AnyStrategyParams = Annotated[
    Union[tuple(cls.Params for cls in STRATEGIES.values())],  # noqa: UP007 (built at import)
    Field(discriminator="name"),
]
"""The ``[phase1.strategy]`` section: one of the registered strategies' parameters."""


def build_strategy(phase1: Phase1Config) -> Phase1Strategy:
    """The configured strategy, ready to use."""
    return STRATEGIES[phase1.strategy.name](phase1.strategy, phase1)


def strategy_name(raw: Any) -> str | None:
    """The strategy name in a config dump's ``phase1.strategy``: a table with ``name`` (now),
    a plain string (run directories written before strategies were plug-ins) or None."""
    if isinstance(raw, Mapping):
        raw = raw.get("name")
    return raw if isinstance(raw, str) else None


def strategy_label(raw: Any) -> str | None:
    """The report label of a dumped ``phase1.strategy`` (None when it names no strategy)."""
    name = strategy_name(raw)
    return STRATEGIES[name].label if name in STRATEGIES else None


__all__ = [
    "DEFAULT_STRATEGY",
    "STRATEGIES",
    "AnyStrategyParams",
    "Phase1Strategy",
    "StrategyParams",
    "build_strategy",
    "register",
    "strategy_label",
    "strategy_name",
]
