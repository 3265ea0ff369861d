"""The embedded synthetic persona corpus (fedpkt.data.synthetic)."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from fedpkt.data.catalogue import describe
from fedpkt.data.facts import CONTRADICT, extract_facts, nli_relation
from fedpkt.data.partition import dialogues_to_jsonl
from fedpkt.data.schema import Fact, Persona
from fedpkt.data.split import num_valid
from fedpkt.data.synthetic import (
    _counts_for_totals,
    generate_corpus,
    generate_dialogue,
    generate_general_corpus,
    generate_general_dialogues,
    get_scale,
    persona_family,
)
from fedpkt.errors import FedpktError


def _corpus_bytes(scale: str, seed: int) -> bytes:
    """Personas (ids, sentences, facts) then every dialogue as JSON lines."""
    corpus = generate_corpus(scale, seed)
    personas = [
        [p.persona_id, p.sentences, [[f.slot, f.value] for f in p.facts]]
        for p in corpus.personas.values()
    ]
    return json.dumps(personas).encode() + dialogues_to_jsonl(corpus.dialogues)


@pytest.fixture(scope="module")
def default_corpus():
    return generate_corpus("default", seed=0)


def test_same_seed_gives_the_same_bytes():
    assert _corpus_bytes("tiny", 5) == _corpus_bytes("tiny", 5)


def test_different_seed_gives_different_bytes():
    assert _corpus_bytes("tiny", 5) != _corpus_bytes("tiny", 6)


def test_personas_have_3_to_5_facts_of_distinct_slots_and_one_sentence_each(default_corpus):
    for persona in default_corpus.personas.values():
        assert 3 <= len(persona.facts) <= 5
        assert len({f.slot for f in persona.facts}) == len(persona.facts)
        assert persona.sentences == [describe(f) for f in persona.facts]


def test_personas_are_distinct(default_corpus):
    fact_sets = [frozenset(p.facts) for p in default_corpus.personas.values()]
    assert len(set(fact_sets)) == len(fact_sets) == 90  # 40 + 30 + 20


def test_dialogues_have_5_to_8_exchanges_partner_first(default_corpus):
    for dialogue in default_corpus.dialogues:
        speakers = [u.speaker for u in dialogue.turns]
        assert 10 <= len(speakers) <= 16
        assert speakers == ["partner", "persona"] * (len(speakers) // 2)
        assert all(u.text for u in dialogue.turns)


def test_partner_turns_carry_no_annotations(default_corpus):
    assert all(
        not u.facts for d in default_corpus.dialogues for u in d.turns if u.speaker == "partner"
    )


def test_persona_replies_never_contradict_their_persona(default_corpus):
    for dialogue in default_corpus.dialogues:
        persona = default_corpus.personas[dialogue.persona_id]
        for turn in dialogue.turns:
            if turn.speaker == "persona":
                stated = extract_facts(turn.text)
                assert set(stated) <= set(persona.facts)
                assert all(nli_relation(stated, f) != CONTRADICT for f in persona.facts)


def test_facts_are_revealed_at_a_realistic_rate(default_corpus):
    """Between 40 % and 80 % of persona replies state at least one fact."""
    replies = [u for d in default_corpus.dialogues for u in d.turns if u.speaker == "persona"]
    rate = sum(bool(u.facts) for u in replies) / len(replies)
    assert 0.4 <= rate <= 0.8


def test_every_persona_fact_is_revealed_somewhere(default_corpus):
    said = Counter(f for d in default_corpus.dialogues for u in d.turns for f in u.facts)
    missing = [f for p in default_corpus.personas.values() for f in p.facts if f not in said]
    assert len(missing) <= 0.05 * sum(len(p.facts) for p in default_corpus.personas.values())


def test_default_scale_counts_are_heavy_tailed_with_few_shot_personas(default_corpus):
    counts = Counter(d.persona_id for d in default_corpus.dialogues)
    few = [n for n in counts.values() if n < 6]
    regular = [n for n in counts.values() if n >= 6]
    assert len(few) == 20 and all(3 <= n <= 5 for n in few)
    assert len(regular) == 70 and all(6 <= n <= 20 for n in regular)
    # heavy-tailed: the median sits low in [6, 20] while the tail reaches far above it
    assert sorted(regular)[len(regular) // 2] <= 10 < max(regular)


def test_unknown_scale_is_a_one_line_error():
    with pytest.raises(FedpktError, match="unknown scale 'huge'"):
        get_scale("huge")


def test_counts_solved_for_totals_give_those_totals():
    """3 personas, 20/4/4: one persona needs 2 valid (n in 15..24), two need 1; 28 in all."""
    counts = _counts_for_totals(random.Random(0), 3, (20, 4, 4), 6, 24)
    assert sum(counts) == 28
    assert sorted(num_valid(n) for n in counts) == [1, 1, 2]


def test_unreachable_totals_are_refused():
    with pytest.raises(FedpktError, match="not reachable"):
        _counts_for_totals(random.Random(0), 3, (100, 3, 3), 3, 5)


def test_general_dialogues_have_the_requested_count_and_are_deterministic():
    first = generate_general_dialogues(25, seed=1)
    assert len(first) == 25
    assert dialogues_to_jsonl(first) == dialogues_to_jsonl(generate_general_dialogues(25, 1))
    assert dialogues_to_jsonl(first) != dialogues_to_jsonl(generate_general_dialogues(25, 2))


def test_general_personas_are_disjoint_from_corpus_personas_whatever_the_seeds():
    """The hash family splits fact sets in two: corpus personas are never general ones."""
    corpus = {
        frozenset(p.facts) for s in (0, 1) for p in generate_corpus("tiny", s).personas.values()
    }
    general = {
        frozenset(p.facts) for s in (0, 1) for p in generate_general_corpus(80, s).personas.values()
    }
    assert all(persona_family(tuple(f)) == "corpus" for f in corpus)
    assert all(persona_family(tuple(f)) == "general" for f in general)
    assert corpus.isdisjoint(general)


def test_a_persona_asked_about_its_slot_answers_with_its_fact():
    persona = Persona("p", [describe(Fact("pet", "dog"))], (Fact("pet", "dog"),))
    rng = random.Random(3)
    dialogues = [generate_dialogue(rng, persona, f"d{i}") for i in range(30)]
    for d in dialogues:
        for ask, reply in zip(d.turns[::2], d.turns[1::2], strict=True):
            if "do you have any pets?" in ask.text or "are you an animal person?" in ask.text:
                assert Fact("pet", "dog") in reply.facts
