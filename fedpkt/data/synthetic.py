"""The embedded synthetic persona corpus: PERSONA-CHAT-like dialogues, deterministic from a seed.

A persona is 3-5 facts from :mod:`fedpkt.data.catalogue` (distinct slots) with one description
sentence per fact ("i have a dog."). A dialogue is 5-8 exchanges, partner first. The partner
has its own 3-5 facts, mentions them and asks questions, often about one of the persona's
slots; the persona's replies state its facts in paraphrase (about half to two thirds of the
replies state at least one), mixed with reactions and chit-chat that state nothing. Replies
never contradict the persona, and each persona reply is annotated with the facts it states
(``Utterance.facts``), which :func:`fedpkt.data.facts.extract_facts` recovers exactly.

Personas are split into two disjoint families by a hash of their fact set: the corpus
(:func:`generate_corpus`, Parts A/B/C) only uses "corpus" personas and
:func:`generate_general_dialogues` (backbone pretraining) only "general" ones, so the backbone
never sees an evaluation persona, whatever the seeds.

Dialogues per persona are heavy-tailed (a truncated discrete power law), so few-shot personas
(< 6 dialogues) arise; the scale presets fix how many of each kind there are (see SCALES).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

from fedpkt.data.catalogue import SLOT_BY_NAME, SLOTS, Slot, describe, render
from fedpkt.data.schema import Dialogue, Fact, Persona, Utterance
from fedpkt.data.split import Corpus, num_valid, part_b_keys, persona_key
from fedpkt.errors import FedpktError

GREETINGS = (
    "hi! how are you today?",
    "hello, how is your day going?",
    "hey there, how are you doing?",
    "hi, nice to meet you. how are you?",
    "good evening! how is it going?",
    "hello! what are you up to today?",
)
GREETING_REPLIES = (
    "i am doing well, thanks.",
    "pretty good, thank you.",
    "not bad at all.",
    "hi! i am great, thanks for asking.",
    "hello! just relaxing right now.",
)
REACTIONS = (
    "oh nice.",
    "that is cool.",
    "wow, that sounds fun.",
    "i see.",
    "haha, nice.",
    "that is great.",
    "good for you.",
    "that is interesting.",
    "oh really?",
    "sounds lovely.",
)
CHITCHAT = (
    "it has been a long day.",
    "i love meeting new people.",
    "the weather is great today.",
    "i just finished dinner.",
    "i am so tired today.",
    "i try to stay busy.",
    "life is good right now.",
    "i like to keep things simple.",
    "i had a slow morning.",
    "my week has been pretty busy.",
    "i try to enjoy the little things.",
    "i am thinking about taking a nap.",
)
NOT_SURE = (
    "hmm, i am not sure.",
    "good question, i never thought about it.",
    "i do not really know.",
    "hard to say.",
)
BACK_QUESTIONS = ("what about you?", "and you?", "how about you?")
PARTNER_CLOSINGS = (
    "well, it was nice chatting with you.",
    "i have to go now, talk later!",
    "it was fun talking to you.",
)
PERSONA_CLOSINGS = (
    "you too, have a good night!",
    "bye, take care!",
    "nice talking to you too.",
)

# Bump when the generated text changes, so caches built from it (the embedded backbone) rebuild.
GENERATOR_VERSION = 2
EXCHANGES = (5, 8)
FACTS_PER_PERSONA = (3, 5)


@dataclass(frozen=True)
class ScalePreset:
    """How big a synthetic corpus is.

    ``regular`` / ``few_shot`` are the (min, max) dialogues per regular / few-shot persona,
    drawn heavy-tailed. ``table1`` (paper only) holds exact (train, valid, test) totals per part
    that the counts are solved for (see :func:`_counts_for_totals`).
    """

    name: str
    part_a: int
    part_b: int
    part_c: int
    regular: tuple[int, int]
    few_shot: tuple[int, int]
    table1: dict[str, tuple[int, int, int]] | None = None


SCALES: dict[str, ScalePreset] = {
    "tiny": ScalePreset("tiny", 8, 3, 3, (6, 8), (3, 5)),
    "default": ScalePreset("default", 40, 30, 20, (6, 20), (3, 5)),
    "paper": ScalePreset(
        "paper",
        754,
        300,
        239,
        (6, 24),
        (3, 5),
        table1={"A": (5471, 774, 774), "B": (2166, 304, 304), "C": (538, 239, 239)},
    ),
}


def get_scale(name: str) -> ScalePreset:
    """The preset called ``name``, or a one-line error listing the known ones."""
    if name not in SCALES:
        raise FedpktError(f"unknown scale '{name}' (expected one of: {', '.join(SCALES)})")
    return SCALES[name]


# ---------------------------------------------------------------- personas


def persona_family(facts: Sequence[Fact]) -> str:
    """'corpus' or 'general': a hash of the fact set, so the two never share a persona."""
    text = "|".join(f"{f.slot}={f.value}" for f in sorted(facts))
    return "general" if hashlib.sha256(text.encode()).digest()[0] & 1 else "corpus"


def _random_facts(rng: random.Random) -> tuple[Fact, ...]:
    slots = rng.sample(SLOTS, rng.randint(*FACTS_PER_PERSONA))
    return tuple(Fact(s.name, rng.choice(s.values)) for s in slots)


def _make_personas(rng: random.Random, count: int, family: str, prefix: str) -> list[Persona]:
    """``count`` distinct personas of one family; ids ``<prefix><index:05d>``."""
    seen: set[frozenset[Fact]] = set()
    personas: list[Persona] = []
    while len(personas) < count:
        facts = _random_facts(rng)
        if frozenset(facts) in seen or persona_family(facts) != family:
            continue
        seen.add(frozenset(facts))
        sentences = [describe(f) for f in facts]
        personas.append(Persona(f"{prefix}{len(personas):05d}", sentences, facts))
    return personas


# ---------------------------------------------------------------- dialogues


def _fact_sentence(rng: random.Random, fact: Fact) -> str:
    template = rng.choice(SLOT_BY_NAME[fact.slot].templates)
    return render(template, fact.value) + rng.choice((".", ".", "!"))


class _PersonaSide:
    """The persona's replies within one dialogue: which facts it has said so far."""

    def __init__(self, rng: random.Random, facts: tuple[Fact, ...]) -> None:
        self.rng = rng
        self.by_slot = {f.slot: f for f in facts}
        self.facts = facts
        self.said: set[Fact] = set()

    def _pick_fact(self, exclude: Sequence[Fact]) -> Fact | None:
        fresh = [f for f in self.facts if f not in self.said and f not in exclude]
        pool = fresh or [f for f in self.facts if f not in exclude]
        return self.rng.choice(pool) if pool else None

    def reply(self, asked: Slot | None, greeted: bool, closing: bool) -> Utterance:
        rng = self.rng
        parts: list[str] = []
        stated: list[Fact] = []

        def state(fact: Fact | None) -> None:
            if fact is not None and fact not in stated:
                parts.append(_fact_sentence(rng, fact))
                stated.append(fact)

        if closing:
            parts.append(rng.choice(PERSONA_CLOSINGS))
        else:
            if greeted:
                parts.append(rng.choice(GREETING_REPLIES))
            elif rng.random() < 0.5:
                parts.append(rng.choice(REACTIONS))
            if asked is not None and asked.name in self.by_slot:
                state(self.by_slot[asked.name])
            elif asked is not None:
                parts.append(rng.choice(NOT_SURE))
                if rng.random() < 0.4:
                    state(self._pick_fact(stated))
            elif rng.random() < 0.5:
                state(self._pick_fact(stated))
            else:
                parts.append(rng.choice(CHITCHAT))
            if stated and rng.random() < 0.2:
                state(self._pick_fact(stated))
            if rng.random() < 0.3:
                parts.append(rng.choice(BACK_QUESTIONS))
        self.said.update(stated)
        return Utterance("persona", " ".join(parts), tuple(stated))


def generate_dialogue(rng: random.Random, persona: Persona, dialogue_id: str) -> Dialogue:
    """One dialogue of 5-8 exchanges (partner first) for ``persona``, drawn from ``rng``."""
    partner_facts = list(_random_facts(rng))
    rng.shuffle(partner_facts)
    unasked = [SLOT_BY_NAME[f.slot] for f in persona.facts]
    rng.shuffle(unasked)
    side = _PersonaSide(rng, persona.facts)
    exchanges = rng.randint(*EXCHANGES)
    turns: list[Utterance] = []
    for i in range(exchanges):
        parts: list[str] = []
        asked: Slot | None = None
        closing = i == exchanges - 1 and rng.random() < 0.5
        greeted = i == 0 and rng.random() < 0.7
        if closing:
            parts.append(rng.choice(PARTNER_CLOSINGS))
        else:
            if greeted:
                parts.append(rng.choice(GREETINGS))
            elif i > 0 and rng.random() < 0.6:
                parts.append(rng.choice(REACTIONS))
            if partner_facts and rng.random() < 0.5:
                parts.append(_fact_sentence(rng, partner_facts.pop()))
            if rng.random() < (0.4 if greeted else 0.85):
                # Mostly about the persona's own slots, as PERSONA-CHAT partners probe what the
                # persona volunteers; a question it cannot answer gets a "not sure" reply.
                asked = unasked.pop() if unasked and rng.random() < 0.85 else rng.choice(SLOTS)
                parts.append(rng.choice(asked.questions))
            if not parts:
                parts.append(rng.choice(CHITCHAT))
        turns.append(Utterance("partner", " ".join(parts)))
        turns.append(side.reply(asked, greeted and asked is None, closing))
    return Dialogue(dialogue_id, persona.persona_id, turns)


# ---------------------------------------------------------------- dialogue counts


def _power_law(rng: random.Random, lo: int, hi: int, size: int, alpha: float = 1.2) -> list[int]:
    """``size`` draws from P(n) proportional to (n - lo + 1)^-alpha on [lo, hi]: heavy-tailed."""
    if size == 0:
        return []
    support = list(range(lo, hi + 1))
    weights = [(n - lo + 1) ** -alpha for n in support]
    return rng.choices(support, weights=weights, k=size)


def _band(n: int, lo: int, hi: int) -> tuple[int, int]:
    """The range of counts around ``n`` that give the same number of valid dialogues."""
    k = num_valid(n)
    low = max(lo, 10 * k - 5) if k > 1 else lo
    return low, min(hi, 10 * k + 4)


def _counts_for_totals(
    rng: random.Random, personas: int, totals: tuple[int, int, int], lo: int, hi: int
) -> list[int]:
    """Per-persona dialogue counts whose 8:1:1 split sums to ``totals`` = (train, valid, test).

    With ``num_valid(n) = max(1, floor(n/10 + 1/2))`` and valid totals within one of the
    persona count, ``valid - personas`` personas need two valid dialogues (n in [15, 24]) and
    the rest one (n in [lo, 14]); the dialogue total must be ``train + valid + test``. Counts are
    drawn heavy-tailed inside those bands, then moved one at a time (a random persona still
    inside its band) until the total matches: e.g. Part A of the paper, 754 personas and
    5471/774/774, gets 20 personas of 15-24 dialogues, 734 of 6-14, 7019 dialogues in all.
    """
    train, valid, test = totals
    doubles = valid - personas
    if valid != test or not 0 <= doubles <= personas or (doubles and hi < 15):
        raise FedpktError(f"table totals {totals} for {personas} personas are not reachable")
    counts = _power_law(rng, 15, min(hi, 24), doubles) + _power_law(
        rng, lo, min(hi, 14), personas - doubles
    )
    bands = [_band(n, lo, hi) for n in counts]
    target = train + valid + test
    if not sum(b[0] for b in bands) <= target <= sum(b[1] for b in bands):
        raise FedpktError(f"table totals {totals} for {personas} personas are not reachable")
    total = sum(counts)
    while total != target:
        i = rng.randrange(personas)
        step = 1 if total < target else -1
        if bands[i][0] <= counts[i] + step <= bands[i][1]:
            counts[i] += step
            total += step
    rng.shuffle(counts)
    return counts


# ---------------------------------------------------------------- corpora


def _dialogues_for(rng: random.Random, persona: Persona, count: int) -> list[Dialogue]:
    return [generate_dialogue(rng, persona, f"{persona.persona_id}-{k:03d}") for k in range(count)]


def generate_corpus(scale: str = "default", seed: int = 0) -> Corpus:
    """The synthetic corpus of a scale preset: personas and their dialogues, from ``seed``.

    For the ``paper`` preset the split's Part B choice is known in advance (it is a hash of
    seed and persona, :func:`fedpkt.data.split.part_b_keys`), so Part A and Part B personas get
    counts solved for their Table 1 totals; ``split_corpus(corpus, seed, 6, preset.part_b)``
    then reproduces Table 1 exactly. Other presets draw counts freely in their ranges.
    """
    preset = get_scale(scale)
    rng = random.Random(f"fedpkt-synthetic|{preset.name}|{seed}")
    num_regular = preset.part_a + preset.part_b
    everyone = _make_personas(rng, num_regular + preset.part_c, "corpus", "p")
    regular, few_shot = everyone[:num_regular], everyone[num_regular:]
    counts: dict[str, int] = {}
    if preset.table1 is not None:
        keys = {persona_key(p.sentences): p for p in regular}
        chosen = {keys[k].persona_id for k in part_b_keys(keys, preset.part_b, seed)}
        groups = {
            "A": [p for p in regular if p.persona_id not in chosen],
            "B": [p for p in regular if p.persona_id in chosen],
            "C": few_shot,
        }
        for part, members in groups.items():
            lo, hi = preset.few_shot if part == "C" else preset.regular
            solved = _counts_for_totals(rng, len(members), preset.table1[part], lo, hi)
            counts.update({p.persona_id: n for p, n in zip(members, solved, strict=True)})
    else:
        drawn = _power_law(rng, *preset.regular, len(regular))
        drawn += _power_law(rng, *preset.few_shot, len(few_shot))
        counts = {p.persona_id: n for p, n in zip(regular + few_shot, drawn, strict=True)}
    personas = regular + few_shot
    dialogues = [d for p in personas for d in _dialogues_for(rng, p, counts[p.persona_id])]
    rng.shuffle(dialogues)
    return Corpus(
        personas={p.persona_id: p for p in personas},
        dialogues=dialogues,
        source=f"synthetic:{preset.name}",
    )


def generate_general_corpus(num_dialogues: int, seed: int) -> Corpus:
    """``num_dialogues`` dialogues of "general" personas, disjoint from every corpus persona.

    For pretraining the embedded backbone on the corpus's language without its evaluation
    personas, whatever the seeds of either. Each general persona (id ``g<index:05d>``) speaks
    in 1-4 consecutive dialogues.
    """
    if num_dialogues < 0:
        raise FedpktError(f"num_dialogues={num_dialogues} is invalid (expected >= 0)")
    rng = random.Random(f"fedpkt-general|{seed}")
    personas: dict[str, Persona] = {}
    dialogues: list[Dialogue] = []
    while len(dialogues) < num_dialogues:
        (drawn,) = _make_personas(rng, 1, "general", "g")
        persona = Persona(f"g{len(dialogues):05d}", drawn.sentences, drawn.facts)
        personas[persona.persona_id] = persona
        count = min(rng.randint(1, 4), num_dialogues - len(dialogues))
        dialogues.extend(_dialogues_for(rng, persona, count))
    return Corpus(personas, dialogues, source="synthetic:general")


def general_personas(count: int, seed: int) -> list[Persona]:
    """``count`` distinct "general" personas (ids ``g<index:05d>``), disjoint from the corpus's.

    What the embedded backbone's prose recipe writes about (:mod:`fedpkt.data.prose`).
    """
    if count < 0:
        raise FedpktError(f"count={count} is invalid (expected >= 0)")
    return _make_personas(random.Random(f"fedpkt-general-personas|{seed}"), count, "general", "g")


def generate_general_dialogues(num_dialogues: int, seed: int) -> list[Dialogue]:
    """The dialogues of :func:`generate_general_corpus` (what the backbone is pretrained on)."""
    return generate_general_corpus(num_dialogues, seed).dialogues
