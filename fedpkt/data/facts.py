"""Fact extraction and the exact NLI oracle of the synthetic corpus (the C score's labels).

``extract_facts`` recognises the catalogue's fact phrasings inside ANY text (a generated
reply, a description sentence, a dialogue turn): the text is normalised (lower case,
contractions expanded, punctuation dropped) and every template of every slot is matched as a
regular expression with the slot's values as alternatives. A value alone ("a nurse? cool")
states nothing; the template around it does ("i work as a nurse"). Because the corpus is
generated from the same templates, the extractor agrees exactly with the annotations of every
generated persona reply (``tests/test_facts.py`` checks this over many seeds).

``nli_relation`` turns extracted facts into PERSONA-CHAT's NLI labels. Every slot is
single-valued (see :mod:`fedpkt.data.catalogue`), so stating another value of a persona's slot
contradicts that persona fact.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

from fedpkt.data.catalogue import SLOTS, Slot
from fedpkt.data.schema import Fact

ENTAIL, NEUTRAL, CONTRADICT = 1, 0, -1

_CONTRACTIONS = {
    "i'm": "i am",
    "i've": "i have",
    "i'd": "i would",
    "i'll": "i will",
    "don't": "do not",
    "doesn't": "does not",
    "can't": "cannot",
    "won't": "will not",
    "it's": "it is",
    "that's": "that is",
    "favourite": "favorite",
    "colour": "color",
    "mum": "mom",
}
_CONTRACTION_RE = re.compile(
    r"\b(" + "|".join(re.escape(k) for k in sorted(_CONTRACTIONS, key=len, reverse=True)) + r")\b"
)


def normalize(text: str) -> str:
    """Lower case, straight apostrophes, contractions expanded, non-letters/digits to spaces.

    >>> normalize("I'm a Nurse!  My favourite…")
    'i am a nurse my favorite'
    """
    text = text.lower().replace("\u2019", "'").replace("`", "'")
    text = _CONTRACTION_RE.sub(lambda m: _CONTRACTIONS[m.group(1)], text)
    text = re.sub(r"[^a-z0-9]+", " ", text)
    return text.strip()


def _template_regex(template: str, values: Iterable[str]) -> re.Pattern[str]:
    """``"i have {a} {v}"`` -> ``\\bi have (?:a|an) (?P<v>parrot|dog|...)\\b``.

    Values are tried longest first, so "iced tea" wins over "tea" at the same position.
    """
    alternatives = "|".join(re.escape(v) for v in sorted(values, key=len, reverse=True))
    parts = []
    for token in template.split():
        if token == "{v}":
            parts.append(f"(?P<v>{alternatives})")
        elif token == "{a}":
            parts.append("(?:a|an)")
        else:
            parts.append(re.escape(token))
    return re.compile(r"\b" + " ".join(parts) + r"\b")


@lru_cache(maxsize=1)
def _patterns() -> tuple[tuple[str, re.Pattern[str]], ...]:
    """(slot name, compiled template) for every description and paraphrase template."""
    out: list[tuple[str, re.Pattern[str]]] = []
    for slot in SLOTS:
        for template in _templates_of(slot):
            out.append((slot.name, _template_regex(template, slot.values)))
    return tuple(out)


def _templates_of(slot: Slot) -> tuple[str, ...]:
    return tuple(dict.fromkeys((slot.description, *slot.templates)))


def extract_facts(text: str) -> tuple[Fact, ...]:
    """The catalogue facts that ``text`` states, in order of first appearance, without repeats.

    >>> extract_facts("Hi! I'm a nurse, and my dog sleeps in my room.")
    (Fact(slot='job', value='nurse'), Fact(slot='pet', value='dog'))
    """
    norm = normalize(text)
    if not norm:
        return ()
    found: dict[Fact, int] = {}
    for slot_name, pattern in _patterns():
        for match in pattern.finditer(norm):
            fact = Fact(slot_name, match.group("v"))
            position = match.start("v")
            if fact not in found or position < found[fact]:
                found[fact] = position
    return tuple(sorted(found, key=lambda f: (found[f], f)))


def nli_relation(stated: tuple[Fact, ...], persona_fact: Fact) -> int:
    """NLI label of a text (given as the facts it states) against one persona fact.

    1 (entail): the text states ``persona_fact``; -1 (contradict): it states the same slot with
    another value (slots are single-valued). Contradiction wins when a text states both the
    right and a wrong value of the slot, so a reply cannot score by listing every value.
    0 (neutral): the text says nothing about that slot.

    >>> dog, cat = Fact("pet", "dog"), Fact("pet", "cat")
    >>> nli_relation((dog,), dog), nli_relation((cat,), dog), nli_relation((), dog)
    (1, -1, 0)
    """
    same_slot = {fact.value for fact in stated if fact.slot == persona_fact.slot}
    if same_slot - {persona_fact.value}:
        return CONTRADICT
    if persona_fact.value in same_slot:
        return ENTAIL
    return NEUTRAL
