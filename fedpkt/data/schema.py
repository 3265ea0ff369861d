"""The data model shared by every layer: personas, dialogues, utterances and their facts.

Kept free of any loader so that the synthetic generator, the PERSONA-CHAT readers, the split,
the encoders and the C-score oracle all speak the same types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Speaker = Literal["partner", "persona"]
Part = Literal["A", "B", "C"]
Split = Literal["train", "valid", "test"]
SPLITS: tuple[Split, ...] = ("train", "valid", "test")
PARTS: tuple[Part, ...] = ("A", "B", "C")


@dataclass(frozen=True, order=True)
class Fact:
    """One persona fact as a (slot, value) pair, e.g. ("pet", "dog").

    Only the synthetic corpus knows facts; they make the C-score oracle exact.
    """

    slot: str
    value: str


@dataclass(frozen=True)
class Utterance:
    """One turn. ``facts`` are the persona facts this turn states (synthetic corpus only)."""

    speaker: Speaker
    text: str
    facts: tuple[Fact, ...] = ()


@dataclass
class Dialogue:
    """A conversation between the persona and a partner; persona turns are the targets."""

    dialogue_id: str
    persona_id: str
    turns: list[Utterance]


@dataclass
class Persona:
    """A persona: its description sentences and, for the synthetic corpus, its facts.

    The description never leaves the client that owns it; only the "with description"
    baselines read it, locally.
    """

    persona_id: str
    sentences: list[str]
    facts: tuple[Fact, ...] = ()


@dataclass
class Example:
    """One training/eval example: the history window before a persona turn, and that turn."""

    history: list[Utterance]
    response: Utterance


@dataclass
class ClientData:
    """Everything one client (persona) holds: its description and its own splits."""

    persona: Persona
    part: Part
    splits: dict[Split, list[Dialogue]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def num_dialogues(self, split: Split) -> int:
        return len(self.splits.get(split, []))
