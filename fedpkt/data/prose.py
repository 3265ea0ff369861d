"""The synthetic world's language without its dialogue task: prose for pretraining the backbone.

PersonaPKT starts from GPT-2, which knows English from web text but has never seen
PERSONA-CHAT's turn layout or its reply policy; a prefix has to teach it both. To put the
embedded backbone in that position, the "prose" recipe pretrains it on documents about the same
world in registers that are not dialogue (issue 18):

* **biographies**: third-person paragraphs stating a person's facts, with the things that
  person likes to say quoted at the end ("nora works as a nurse. she has a dog. ... nora often
  says: "that is cool."");
* **first-person prose**: a diary-like paragraph in the voice of a person, in which one or two
  facts come back in other words ("i have a dog. it has been a long day. my dog sleeps in my
  room.");
* **profiles** (half of the people): a biography, then a new line and the person's own
  first-person paragraph;
* **encyclopedic sentences** about the slot values ("many people play the guitar. people who
  have a dog often live in a house.").

No document uses the ``A:``/``B:`` turn layout, none pairs a question with its answer (quoted
questions are never followed by an answer of their slot), and every person is drawn from the
"general" persona family, disjoint from the personas of Parts A/B/C whatever the seeds
(:func:`fedpkt.data.synthetic.persona_family`). Deterministic from ``(num_people, seed)``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from fedpkt.data.catalogue import SLOT_BY_NAME, SLOTS, render
from fedpkt.data.schema import Fact, Persona
from fedpkt.data.synthetic import (
    BACK_QUESTIONS,
    CHITCHAT,
    GREETING_REPLIES,
    GREETINGS,
    NOT_SURE,
    PARTNER_CLOSINGS,
    PERSONA_CLOSINGS,
    REACTIONS,
    general_personas,
)

PROSE_VERSION = 2
"""Bump when the generated prose changes, so a backbone cached from it is rebuilt."""

NAMES = {
    "she": ("nora", "maria", "ella", "sofia", "lucy", "grace", "hannah", "julia", "clara", "rose"),
    "he": ("tom", "sam", "leo", "max", "ben", "jack", "owen", "eli", "noah", "adam"),
}
PRONOUNS = {"she": ("she", "her", "her"), "he": ("he", "his", "him")}  # subject, possessive, object
SAYINGS = GREETINGS + GREETING_REPLIES + REACTIONS + NOT_SURE + BACK_QUESTIONS
SAYINGS += PARTNER_CLOSINGS + PERSONA_CLOSINGS
STATEMENTS = tuple(s for s in SAYINGS if not s.endswith("?"))
SAYINGS += tuple(q for slot in SLOTS for q in slot.questions)
ADVERBS = frozenset({"always", "only", "really", "often"})
UNCHANGED_VERBS = frozenset(
    {"cannot", "could", "can", "will", "was", "grew", "had", "studied", "majored", "learned"}
)
IRREGULAR = {"am": "is", "have": "has", "do": "does", "go": "goes"}


def third_person_verb(verb: str) -> str:
    """``verb`` after he/she: "have" -> "has", "watch" -> "watches", "study" -> "studies".

    Past tenses and modals ("grew", "could") are unchanged. English's regular rule is enough
    for the catalogue's verbs (``tests/test_prose.py`` renders every template).
    """
    if verb in IRREGULAR:
        return IRREGULAR[verb]
    if verb in UNCHANGED_VERBS or verb.endswith("ed"):
        return verb
    if verb.endswith(("s", "sh", "ch", "x", "o")):
        return verb + "es"
    if verb.endswith("y") and verb[-2:-1] not in "aeiou":
        return verb[:-1] + "ies"
    return verb + "s"


def to_third_person(template: str, subject: str, pronoun: str) -> str:
    """A first-person template in the third person; ``{v}``/``{a}`` placeholders are kept.

    The first "i" becomes ``subject``, later ones the pronoun; "my" and "me" follow; the verb
    after the subject (past an adverb) agrees. E.g. ("i have been {a} {v} for years", "nora",
    "she") -> "nora has been {a} {v} for years"; ("{v} scare me", ...) -> "{v} scare her".
    """
    subj, poss, obj = PRONOUNS[pronoun]
    words = template.split()
    out: list[str] = []
    named = False
    agree = False
    for word in words:
        if word == "i":
            out.append(subj if named else subject)
            named, agree = True, True
            continue
        if agree and word in ADVERBS:
            out.append(word)
            continue
        if agree:
            out.append(third_person_verb(word))
            agree = False
            continue
        out.append({"my": poss, "me": obj}.get(word, word))
    return " ".join(out)


def to_plural(template: str) -> str | None:
    """A first-person template about people in general, or None where English needs "a/an".

    "i listen to {v} music" -> "people listen to {v} music"; "i am {a} {v}" -> None (it would
    read "people are a nurse").
    """
    if "{a}" in template:
        return None
    mapped = {"my": "their", "me": "them", "am": "are", "was": "were"}
    words: list[str] = []
    for word in template.split():
        if word == "i":
            words.append("they" if "people" in words else "people")
        else:
            words.append(mapped.get(word, word))
    return " ".join(words) if "people" in words else None


def _sentence(text: str) -> str:
    return text + "."


def biography(rng: random.Random, persona: Persona, sayings: Sequence[str] = SAYINGS) -> str:
    """A third-person paragraph stating each fact once, then one or two quoted sayings.

    A saying may be a question about a slot; it ends the paragraph, so no answer follows it.
    """
    pronoun = rng.choice(tuple(PRONOUNS))
    name = rng.choice(NAMES[pronoun])
    sentences: list[str] = []
    for k, fact in enumerate(persona.facts):
        slot = SLOT_BY_NAME[fact.slot]
        template = rng.choice((slot.description, *slot.templates))
        subject = name if k == 0 else rng.choice((name, pronoun))
        sentences.append(_sentence(render(to_third_person(template, subject, pronoun), fact.value)))
    for _ in range(rng.randint(1, 2)):
        opener = rng.choice((f"{name} often says", f"{pronoun} likes to say", f"{name} says"))
        sentences.append(f'{opener}: "{rng.choice(sayings)}"')
    return " ".join(sentences)


def first_person(rng: random.Random, persona: Persona) -> str:
    """A diary-like paragraph in the persona's voice: its facts mixed with everyday remarks.

    One or two facts come back later in other words ("i have a dog. ... my dog sleeps in my
    room."): a text about one person stays consistent, as web text does.
    """
    facts = list(persona.facts)
    rng.shuffle(facts)
    facts += rng.sample(facts, rng.randint(1, min(2, len(facts))))
    sentences = [
        _sentence(render(rng.choice(SLOT_BY_NAME[f.slot].templates), f.value)) for f in facts
    ]
    for _ in range(rng.randint(1, 3)):
        sentences.insert(rng.randint(0, len(sentences)), rng.choice(CHITCHAT))
    return " ".join(sentences)


def profile(rng: random.Random, persona: Persona) -> str:
    """A biography, then a new line and the person's own first-person paragraph.

    Its sayings are never questions, so nothing in the first person follows a question.
    """
    return biography(rng, persona, STATEMENTS) + "\n" + first_person(rng, persona)


def encyclopedic(rng: random.Random, facts: Sequence[Fact]) -> str:
    """General sentences about slot values, one per line (the backbone's only newlines).

    E.g. "many people play the guitar.\npeople who have a dog often live in a house."
    """
    sentences: list[str] = []
    plural = [
        (render(t, f.value))
        for f in facts
        for t in [to_plural(rng.choice(SLOT_BY_NAME[f.slot].templates))]
        if t is not None
    ]
    for text in plural:
        sentences.append(_sentence(rng.choice(("many", "some", "lots of")) + " " + text))
    if len(plural) >= 2:
        first, second = rng.sample(plural, 2)
        tail = second.removeprefix("people ")
        sentences.append(_sentence(f"{first.replace('people', 'people who', 1)} often {tail}"))
    return "\n".join(sentences)


def prose_documents(num_people: int, seed: int) -> list[str]:
    """Pretraining documents about ``num_people`` general personas, in a seeded order.

    Each person gets two documents, either a biography and a first-person paragraph or a
    :func:`profile` and another first-person paragraph; three random facts also make one
    encyclopedic paragraph. Returns ``3 * num_people`` strings, lowercase like the corpus,
    without EOS (the tokenizer step adds it).
    """
    rng = random.Random(f"fedpkt-prose|{seed}")
    documents: list[str] = []
    for persona in general_personas(num_people, seed):
        if rng.random() < 0.5:
            documents.append(biography(rng, persona))
        else:
            documents.append(profile(rng, persona))
        documents.append(first_person(rng, persona))
        random_facts = [Fact(s.name, rng.choice(s.values)) for s in rng.sample(SLOTS, 3)]
        documents.append(encyclopedic(rng, random_facts) or first_person(rng, persona))
    rng.shuffle(documents)
    return documents
