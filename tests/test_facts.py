"""Fact extraction and the exact NLI oracle (fedpkt.data.facts, fedpkt.data.catalogue)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fedpkt.data import synthetic
from fedpkt.data.catalogue import SLOTS, describe, render
from fedpkt.data.facts import CONTRADICT, ENTAIL, NEUTRAL, extract_facts, nli_relation, normalize
from fedpkt.data.schema import Fact

DOG, CAT, NURSE = Fact("pet", "dog"), Fact("pet", "cat"), Fact("job", "nurse")


def test_catalogue_has_at_least_30_slots_with_values_and_paraphrases():
    assert len(SLOTS) >= 30
    assert all(len(s.values) >= 2 and len(s.templates) >= 3 and s.questions for s in SLOTS)


def test_every_rendering_of_every_template_states_exactly_its_own_fact():
    """34 slots x (description + 3 paraphrases) x every value: nothing more, nothing less."""
    wrong = []
    for slot in SLOTS:
        for template in (slot.description, *slot.templates):
            for value in slot.values:
                text = render(template, value) + "."
                if extract_facts(text) != (Fact(slot.name, value),):
                    wrong.append((text, extract_facts(text)))
    assert wrong == []


def test_description_sentence_is_persona_chat_style():
    assert describe(DOG) == "i have a dog."
    assert describe(Fact("job", "engineer")) == "i work as an engineer."


def test_chitchat_reactions_and_questions_state_no_fact():
    banks = (
        synthetic.GREETINGS
        + synthetic.GREETING_REPLIES
        + synthetic.REACTIONS
        + synthetic.CHITCHAT
        + synthetic.NOT_SURE
        + synthetic.BACK_QUESTIONS
        + synthetic.PARTNER_CLOSINGS
        + synthetic.PERSONA_CLOSINGS
        + tuple(q for s in SLOTS for q in s.questions)
    )
    assert [t for t in banks if extract_facts(t)] == []


def test_extracts_several_facts_in_order_of_appearance_from_free_text():
    text = "Hi!! I'm a nurse... and my dog sleeps in my room :)"
    assert extract_facts(text) == (NURSE, DOG)


def test_a_bare_value_states_nothing():
    """Echoing the partner ("a nurse? cool") or asking ("do you have a dog?") is not a claim."""
    assert extract_facts("a nurse? cool. do you have a dog?") == ()


def test_normalisation_handles_case_contractions_and_british_spelling():
    assert normalize("My FAVOURITE colour is Blue!") == "my favorite color is blue"
    assert extract_facts("My FAVOURITE colour is Blue!") == (Fact("color", "blue"),)
    assert extract_facts("I'm from Texas") == (Fact("hometown", "texas"),)


def test_longest_value_wins_at_the_same_position():
    assert extract_facts("i drink iced tea every morning") == (Fact("drink", "iced tea"),)


def test_a_fact_repeated_is_reported_once():
    assert extract_facts("i have a dog. i love my pet dog.") == (DOG,)


def test_nli_entail_when_the_exact_fact_is_stated():
    assert nli_relation((NURSE, DOG), DOG) == ENTAIL == 1


def test_nli_contradict_when_the_slot_has_another_value():
    assert nli_relation((CAT,), DOG) == CONTRADICT == -1


def test_nli_neutral_when_the_slot_is_not_mentioned():
    assert nli_relation((NURSE,), DOG) == NEUTRAL == 0
    assert nli_relation((), DOG) == NEUTRAL


def test_nli_contradiction_wins_over_entailment():
    """Single-valued slot: 'i have a dog. i have a cat.' contradicts the persona's dog."""
    assert nli_relation(extract_facts("i have a dog. i have a cat."), DOG) == CONTRADICT


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**31 - 1))
def test_extraction_agrees_with_annotations_of_every_generated_reply(seed):
    for dialogue in synthetic.generate_general_dialogues(12, seed):
        for turn in dialogue.turns:
            if turn.speaker == "persona":
                assert extract_facts(turn.text) == turn.facts, turn.text


def test_extraction_agrees_with_annotations_over_a_whole_corpus():
    corpus = synthetic.generate_corpus("tiny", seed=11)
    replies = [u for d in corpus.dialogues for u in d.turns if u.speaker == "persona"]
    assert len(replies) > 300
    assert [u.text for u in replies if extract_facts(u.text) != u.facts] == []
