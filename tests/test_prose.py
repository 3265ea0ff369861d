"""The prose pretraining corpus (fedpkt.data.prose): deterministic, no dialogue, no Part persona;
and a run on the prose backbone (issue 18)."""

from __future__ import annotations

import re

import pytest

from fedpkt.data.catalogue import SLOTS
from fedpkt.data.prose import (
    SAYINGS,
    prose_documents,
    third_person_verb,
    to_plural,
    to_third_person,
)
from fedpkt.data.synthetic import general_personas, generate_corpus, persona_family
from fedpkt.errors import FedpktError
from fedpkt.model.backbone import load_backbone
from fedpkt.model.embedded import get_recipe, pretraining_texts
from fedpkt.personal import PERSONALIZED_ENTRY
from fedpkt.privacy.vault import Vault
from sim.simulate import simulate
from tests.conftest import tiny_config

QUESTIONS = {q for slot in SLOTS for q in slot.questions}


@pytest.fixture(scope="module")
def documents() -> list[str]:
    return prose_documents(400, seed=1001)


def test_same_seed_gives_the_same_documents_and_another_seed_others():
    assert prose_documents(50, 7) == prose_documents(50, 7)
    assert prose_documents(50, 7) != prose_documents(50, 8)
    assert len(prose_documents(50, 7)) == 150


def test_no_document_uses_the_dialogue_layout(documents):
    """No speaker tag at a line start, no upper-case letter at all (tags are "A:"/"B:")."""
    tag = re.compile(r"(^|\n)\s*[A-Za-z]\s*:", re.MULTILINE)
    for text in documents:
        assert not tag.search(text), text
        assert text == text.lower(), text


def test_questions_are_only_quoted_at_the_end_of_a_paragraph_never_answered(documents):
    """A question appears only as a quoted saying, and only sayings follow it: no Q->A pair."""
    seen_questions = 0
    for text in documents:
        for question in QUESTIONS & set(SAYINGS):
            at = text.find(f'"{question}"')
            if at < 0:
                assert question not in text, text
                continue
            seen_questions += 1
            rest = text[at + len(question) + 2 :]
            # Whatever follows is another '<speaker> says: "<saying>"', never a fact.
            for tail in filter(None, (part.strip() for part in rest.split('"'))):
                assert tail.endswith(":") or tail in SAYINGS, (question, rest)
    assert seen_questions > 0


def test_people_written_about_are_general_personas_never_part_personas():
    """The prose people are the "general" family; no Part A/B/C persona is among them."""
    people = general_personas(300, 1001)
    assert all(persona_family(p.facts) == "general" for p in people)
    parts = {
        frozenset(p.facts)
        for s in range(3)
        for p in generate_corpus("default", s).personas.values()
    }
    assert parts.isdisjoint(frozenset(p.facts) for p in people)


def test_every_catalogue_template_converts_to_the_third_person():
    """Every slot's description and templates read as "she ..." with an agreeing verb."""
    for slot in SLOTS:
        for template in (slot.description, *slot.templates):
            text = to_third_person(template, "nora", "she")
            words = text.split()
            assert "i" not in words and "my" not in words and "me" not in words, text
            assert "am" not in words, text


def test_verb_agreement_examples():
    assert [third_person_verb(v) for v in ("have", "watch", "study", "play", "grew", "am")] == [
        "has",
        "watches",
        "studies",
        "plays",
        "grew",
        "is",
    ]
    assert to_third_person("i have been {a} {v} for years", "nora", "she") == (
        "nora has been {a} {v} for years"
    )
    assert to_third_person("{v} scare me", "tom", "he") == "{v} scare him"
    assert to_plural("i listen to {v} music") == "people listen to {v} music"
    assert to_plural("i am {a} {v}") is None


def test_prose_recipe_trains_on_prose_and_the_dialogue_recipe_on_dialogues():
    """The tiny recipes' corpora: the prose one has no speaker tag; the dialogue one has them."""
    prose = pretraining_texts(get_recipe("tiny", "prose"))
    dialogue = pretraining_texts(get_recipe("tiny", "dialogue"))
    assert prose.extra == [] and not any("B:" in t for t in prose.train + prose.valid)
    assert all(t.startswith("A:") for t in dialogue.train)
    assert prose.train != prose.valid


@pytest.mark.e2e
def test_a_run_with_the_prose_recipe_trains_every_prefix_on_the_prose_backbone(tmp_path):
    """``backbone.embedded_recipe = "prose"`` reaches every Flower client: each personalized
    prefix is sealed for the prose backbone's fingerprint, and the dialogue backbone's is
    refused (a prefix is meaningless on another backbone)."""
    run = simulate(tiny_config(backbone__embedded_recipe="prose"), tmp_path / "run")
    assert run.config().backbone.embedded_recipe == "prose"
    prose = load_backbone("embedded", embedded_size="tiny", embedded_recipe="prose")
    dialogue = load_backbone("embedded", embedded_size="tiny", embedded_recipe="dialogue")
    assert prose.fingerprint != dialogue.fingerprint
    clients = {r["client_id"] for r in run.events("client")}
    assert clients
    for client_id in clients:
        vault = Vault(run.vaults / client_id, client_id)
        assert vault.load(PERSONALIZED_ENTRY, backbone_fingerprint=prose.fingerprint)["prefix"].size
        with pytest.raises(FedpktError):
            vault.load(PERSONALIZED_ENTRY, backbone_fingerprint=dialogue.fingerprint)
