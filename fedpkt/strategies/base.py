"""What a phase-1 strategy is: its parameters, its server half, its client half, its label.

A strategy is one class in one module of this package, registered with ``@register``:

- ``Params``: its own pydantic section, ``[phase1.strategy]`` in a config, told apart from the
  others by ``name`` (a discriminated union in ``Phase1Config``), so a key that does nothing for
  the chosen strategy is a config error, never silently ignored.
- server half, ``aggregation_weights`` and ``outer_step``: how the round's client prefixes
  W_i become the next θ, with the pure maths of ``fedpkt.algorithms``; ``state_dict`` /
  ``load_state_dict`` carry any server state (an optimizer) through checkpoints.
- client half, ``client_optimizer``: wraps the inner loop's optimizer factory, the one place a
  client's update may differ (an extra gradient term: FedProx). It wraps the *base* optimizer,
  so under DP-SGD the term is added after opacus has clipped and noised the data gradient.
- ``label``: the row name in reports and ``fedpkt compare``.

The Flower strategy (``server/``), the SecAgg+/client-level DP wrappers and the centralized
baselines all reach a strategy through ``fedpkt.source.SourceTrainer`` and ``LocalClient``;
none of them names one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from fedpkt.algorithms import OptimizerState, weighted_average
from fedpkt.section import Section

if TYPE_CHECKING:
    from fedpkt.config import Phase1Config
    from fedpkt.train.loop import OptimizerFactory

Arrays = dict[str, np.ndarray]


class StrategyParams(Section):
    """A strategy's own parameters; ``name`` selects the strategy (the union's tag)."""

    name: str


class Phase1Strategy:
    """Source-prefix training of one kind. The base is FedAvg: θ ← Σ n_i W_i / Σ n_i, plain
    client SGD; a subclass overrides only the hooks that differ."""

    name: ClassVar[str]
    label: ClassVar[str]  # "PersonaPKT (...)": the report and compare row
    Params: ClassVar[type[StrategyParams]]

    def __init__(self, params: StrategyParams, phase1: Phase1Config) -> None:
        self.params = params
        self.phase1 = phase1

    def describe(self) -> str:
        """One line for the server log: the name and the parameters."""
        extra = ", ".join(f"{k}={v}" for k, v in self.params.model_dump().items() if k != "name")
        return f"{self.name}" + (f" ({extra})" if extra else "")

    # -- server half ------------------------------------------------------------------------
    def aggregation_weights(self, counts: Sequence[float]) -> list[float]:
        """Each update's weight, given the clients' example counts n_i (need not sum to 1).

        SecAgg+ sends these to the clients, which is why they are separate from the step.
        """
        return [float(n) for n in counts]

    def outer_step(
        self, theta: Arrays, updates: Sequence[Arrays], counts: Sequence[float]
    ) -> Arrays:
        """The next θ from the round's W_i (sorted by client id) and their n_i."""
        return weighted_average(updates, self.aggregation_weights(counts))

    def state_dict(self) -> OptimizerState:
        """Server state for a checkpoint (none here)."""
        return OptimizerState(meta={"kind": "none"})

    def load_state_dict(self, state: OptimizerState) -> None:
        """Restore what ``state_dict`` saved (nothing to restore here)."""

    # -- client half ------------------------------------------------------------------------
    def client_optimizer(self, base: OptimizerFactory) -> OptimizerFactory:
        """The inner loop's optimizer factory; ``base`` (plain SGD) unchanged here."""
        return base


STRATEGIES: dict[str, type[Phase1Strategy]] = {}
"""name -> strategy class, in registration order (the order of reports and ``config keys``)."""


def register(cls: type[Phase1Strategy]) -> type[Phase1Strategy]:
    """Class decorator: add a strategy to ``STRATEGIES`` under its ``name``."""
    tag = cls.Params.model_fields["name"].default
    if tag != cls.name:
        raise TypeError(f"{cls.__name__}.Params.name defaults to {tag!r}; expected {cls.name!r}")
    if cls.name in STRATEGIES:
        raise TypeError(f"phase-1 strategy '{cls.name}' is registered twice")
    STRATEGIES[cls.name] = cls
    return cls
