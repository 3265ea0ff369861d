"""Training/eval examples from dialogues: every persona turn with the turns just before it."""

from __future__ import annotations

from collections.abc import Iterable

from fedpkt.data.schema import Dialogue, Example
from fedpkt.errors import FedpktError


def examples_from_dialogues(dialogues: Iterable[Dialogue], history_turns: int) -> list[Example]:
    """One Example per persona turn: the (up to) ``history_turns`` utterances before it.

    A persona turn that opens a dialogue (real PERSONA-CHAT after ``__SILENCE__``) gets an
    empty history. E.g. turns [p0, B1, p2, B3] with history_turns=2 give
    ([p0] -> B1) and ([B1, p2] -> B3).
    """
    if history_turns < 0:
        raise FedpktError(f"history_turns={history_turns} is invalid (expected >= 0)")
    out: list[Example] = []
    for dialogue in dialogues:
        for i, turn in enumerate(dialogue.turns):
            if turn.speaker == "persona":
                start = max(0, i - history_turns)
                out.append(Example(history=list(dialogue.turns[start:i]), response=turn))
    return out
