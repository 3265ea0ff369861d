"""The paper's eight centralized Table 2 settings: their keys, names and how each trains.

Apart from ``fedpkt.baselines`` (which runs them, with torch) so that the CLI can name and
check ``--only`` without loading a model library.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from fedpkt.errors import FedpktError
from fedpkt.strategies import STRATEGIES

ContextKind = Literal["none", "description", "persona_id"]
Family = Literal["finetune", "reptile", "prefix"]


@dataclass(frozen=True)
class Setting:
    """One row of the paper's Table 2: how it trains and what a persona looks like to it.

    ``strategy`` is the phase-1 strategy of a PersonaPKT row (None: no source prefix, the
    personalized prefix starts random); ``context`` only matters for fine-tuning rows.
    """

    key: str
    method: str
    family: Family
    context: ContextKind = "none"
    strategy: str | None = None


SETTINGS: tuple[Setting, ...] = (
    Setting("persona-ft", "Persona + Fine-tuning", "finetune", context="description"),
    Setting("ft", "Fine-tuning", "finetune"),
    Setting("persona-id-ft", "Persona_id + Fine-tuning", "finetune", context="persona_id"),
    Setting("reptile-ft", "Reptile + Fine-tuning", "reptile"),
    Setting("rand-prefix", "Rand init + Prefix-tuning", "prefix"),
    *(
        Setting(f"pkt-{name}", STRATEGIES[name].label, "prefix", strategy=name)
        for name in ("base", "temperature", "ppreptile")  # the paper's three, in its order
    ),
)
EXTRA_SETTINGS: tuple[Setting, ...] = tuple(
    Setting(f"pkt-{name}", cls.label, "prefix", strategy=name)
    for name, cls in STRATEGIES.items()
    if name not in {s.strategy for s in SETTINGS}
)
"""PersonaPKT with each registered strategy beyond the paper's three (e.g. ``pkt-fedprox``):
run only when named in ``--only``."""
ALL_SETTINGS: tuple[Setting, ...] = (*SETTINGS, *EXTRA_SETTINGS)
SETTING_KEYS: tuple[str, ...] = tuple(s.key for s in SETTINGS)
"""The default run's settings (the paper's eight)."""
ALL_SETTING_KEYS: tuple[str, ...] = tuple(s.key for s in ALL_SETTINGS)


def select_settings(only: str | Iterable[str] | None = None) -> list[Setting]:
    """The settings named in ``only`` (keys, comma-separated or a list), in Table 2 order.

    None or empty: the paper's eight (``EXTRA_SETTINGS`` only when named). An unknown name is
    an error naming the known keys.
    """
    if only is None:
        return list(SETTINGS)
    names = only.split(",") if isinstance(only, str) else list(only)
    wanted = {name.strip() for name in names if name.strip()}
    if not wanted:
        return list(SETTINGS)
    unknown = sorted(wanted - set(ALL_SETTING_KEYS))
    if unknown:
        raise FedpktError(
            f"baseline setting(s) {', '.join(unknown)} unknown; expected some of "
            f"{', '.join(ALL_SETTING_KEYS)}"
        )
    return [s for s in ALL_SETTINGS if s.key in wanted]
