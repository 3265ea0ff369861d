"""Examples from dialogues: each persona turn with its history window (fedpkt.data.examples)."""

from __future__ import annotations

from fedpkt.data.examples import examples_from_dialogues
from fedpkt.data.schema import Dialogue, Utterance

P0, B1, P2, B3 = (
    Utterance("partner", "p0"),
    Utterance("persona", "b1"),
    Utterance("partner", "p2"),
    Utterance("persona", "b3"),
)


def test_one_example_per_persona_turn_with_up_to_n_previous_turns():
    examples = examples_from_dialogues([Dialogue("d", "x", [P0, B1, P2, B3])], history_turns=2)
    assert [(e.history, e.response) for e in examples] == [([P0], B1), ([B1, P2], B3)]


def test_a_long_window_takes_the_whole_history():
    (_, last) = examples_from_dialogues([Dialogue("d", "x", [P0, B1, P2, B3])], history_turns=10)
    assert last.history == [P0, B1, P2]


def test_a_persona_turn_opening_a_dialogue_has_an_empty_history():
    (first, _) = examples_from_dialogues([Dialogue("d", "x", [B1, P2, B3])], history_turns=3)
    assert first.history == [] and first.response == B1
