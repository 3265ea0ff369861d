"""The paper's split (PersonaPKT §4.2.1): group by persona, Parts A/B/C, 8:1:1 per persona.

Rules, in order (all deterministic from ``seed``, whatever the order of the input):

1. Group dialogues by persona: the key is the normalised SET of description sentences
   (case, punctuation and spacing ignored, order ignored), as Madotto et al. (2019) did;
   letters, marks, digits and emoji of every script count, after NFKC
   (:func:`normalize_sentence`).
2. A persona with fewer than ``MIN_DIALOGUES`` (3) dialogues is dropped: it cannot give a
   train, a valid and a test dialogue. The count of dropped personas/dialogues is reported.
3. Part C = personas with fewer than ``few_shot_threshold`` (6) dialogues (few-shot).
4. Part B = ``part_b`` of the regular personas: an int is a count, a float in (0, 1) a share
   of the regular personas rounded half up (0.2846 x 1054 -> 300). The chosen ones are the
   first in the order of sha256(f"{seed}|{key}") (:func:`part_b_keys`), so the choice of one
   persona does not depend on which others exist.
5. Part A = the remaining regular personas. No persona is in two parts.
6. Within each persona, dialogues are shuffled (seeded by seed and persona key) and cut 8:1:1:
   ``n_valid = n_test = max(1, floor(n / 10 + 1/2))`` (10 % rounded half up, at least one),
   ``n_train = n - 2 * n_valid``. E.g. n=4 -> 2/1/1, n=9 -> 7/1/1, n=15 -> 11/2/2, n=25 -> 19/3/3.

Client ids are ``<part>-<index:04d>`` in that hash order within each part ("A-0007"): stable
for the same data and seed, and they say nothing about the persona.
"""

from __future__ import annotations

import hashlib
import random
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from fedpkt.data.schema import PARTS, ClientData, Dialogue, Part, Persona, Split
from fedpkt.errors import FedpktError

MIN_DIALOGUES = 3
PersonaKey = tuple[str, ...]


@dataclass
class Corpus:
    """Dialogues and the personas that produced them, before any split.

    ``source`` names where it came from ("synthetic:paper", "personachat:/data/pc").
    """

    personas: dict[str, Persona]
    dialogues: list[Dialogue]
    source: str = ""


@dataclass
class CorpusSplit:
    """The outcome of :func:`split_corpus`: one ClientData per kept persona, A then B then C.

    Each client's persona and dialogues carry the client id as ``persona_id``.
    """

    clients: list[ClientData]
    dropped_personas: int = 0
    dropped_dialogues: int = 0
    meta: dict[str, object] = field(default_factory=dict)

    def part(self, part: Part) -> list[ClientData]:
        """The clients of one part, in client-id order."""
        return [c for c in self.clients if c.part == part]


_ASCII_KEPT = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")


def _key_char(char: str) -> str:
    """What one (normalised, case-folded) character contributes to a key: itself, a digit,
    nothing (invisible formatting) or a separator (" ")."""
    if char.isascii():  # as before Unicode was handled: a-z and 0-9 count, the rest separates
        return char if char in _ASCII_KEPT else " "
    category = unicodedata.category(char)
    if category == "Cf" or "\ufe00" <= char <= "\ufe0f" or "\U000e0100" <= char <= "\U000e01ef":
        return ""  # zero-width joiners, soft hyphens, emoji variation selectors: no difference
    if category == "Nd":
        return str(unicodedata.decimal(char))  # a digit of any script is its value
    if category[0] in "LMNS":
        return char  # letters and marks of every script, other numbers, emoji and symbols
    return " "  # punctuation, spaces and line breaks of every kind, controls


def normalize_sentence(sentence: str) -> str:
    """A description sentence as it counts for grouping: NFKC, case-folded, letters, marks,
    digits and symbols (emoji included) of every script kept, punctuation and spacing reduced to
    single spaces. "I like dogs ." -> "i like dogs"; "Café" (NFC or NFD) -> "café".

    On ASCII text this is exactly the original rule (lower case, [a-z0-9] runs joined by single
    spaces), so the keys of ASCII personas, which seed Part B and client ids, never moved.
    """
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", sentence).casefold())
    return " ".join("".join(map(_key_char, folded)).split())


def persona_key(sentences: Iterable[str]) -> PersonaKey:
    """The grouping key of a persona description: its sorted set of normalised sentences."""
    return tuple(sorted({s for s in map(normalize_sentence, sentences) if s}))


def _key_hash(seed: int, key: PersonaKey) -> str:
    return hashlib.sha256(f"{seed}|{chr(10).join(key)}".encode()).hexdigest()


def resolve_part_b(part_b: float, num_regular: int) -> int:
    """How many regular personas go to Part B: an int count, or a share rounded half up.

    >>> resolve_part_b(0.2846, 1054), resolve_part_b(12, 52)
    (300, 12)
    """
    if isinstance(part_b, bool) or part_b < 0:
        raise FedpktError(
            f"part_b={part_b!r} is invalid (expected a count >= 0 or a share in (0, 1))"
        )
    if isinstance(part_b, float) and part_b < 1.0:
        count = int(part_b * num_regular + 0.5)
    elif float(part_b).is_integer():
        count = int(part_b)
    else:
        raise FedpktError(
            f"part_b={part_b!r} is invalid (expected a count >= 0 or a share in (0, 1))"
        )
    if count > num_regular:
        raise FedpktError(
            f"part_b={part_b!r} asks for {count} Part B personas but only {num_regular} "
            "regular personas exist"
        )
    return count


def part_b_keys(keys: Iterable[PersonaKey], count: int, seed: int) -> list[PersonaKey]:
    """The ``count`` regular personas set aside as Part B: first in sha256(seed|key) order."""
    return sorted(keys, key=lambda k: _key_hash(seed, k))[:count]


def num_valid(n: int) -> int:
    """Valid (= test) dialogues of a persona with n dialogues: 10 % rounded half up, >= 1."""
    return max(1, (n + 5) // 10)


def split_dialogues(
    dialogues: Sequence[Dialogue], seed: int, key: PersonaKey
) -> dict[Split, list[Dialogue]]:
    """8:1:1 cut of one persona's dialogues after a seeded shuffle (see the module rules)."""
    order = list(dialogues)
    random.Random(f"split|{seed}|{chr(10).join(key)}").shuffle(order)
    k = num_valid(len(order))
    return {"train": order[2 * k :], "valid": order[:k], "test": order[k : 2 * k]}


def group_by_persona(corpus: Corpus) -> dict[PersonaKey, tuple[Persona, list[Dialogue]]]:
    """Dialogues grouped by persona key; personas with equal keys are merged (first one kept)."""
    groups: dict[PersonaKey, tuple[Persona, list[Dialogue]]] = {}
    for dialogue in corpus.dialogues:
        persona = corpus.personas.get(dialogue.persona_id)
        if persona is None:
            raise FedpktError(
                f"dialogue '{dialogue.dialogue_id}' names persona '{dialogue.persona_id}' "
                "which the corpus does not define"
            )
        key = persona_key(persona.sentences)
        if key not in groups:
            groups[key] = (persona, [])
        groups[key][1].append(dialogue)
    return groups


def _as_client(
    persona: Persona, dialogues: list[Dialogue], part: Part, index: int, seed: int, key: PersonaKey
) -> ClientData:
    client_id = f"{part}-{index:04d}"
    renamed = [replace(d, persona_id=client_id) for d in dialogues]
    splits = split_dialogues(sorted(renamed, key=lambda d: d.dialogue_id), seed, key)
    counts = {name: len(items) for name, items in splits.items()}
    return ClientData(
        persona=replace(persona, persona_id=client_id),
        part=part,
        splits=splits,
        meta={"client_id": client_id, "part": part, "counts": counts},
    )


def split_corpus(
    corpus: Corpus, seed: int, few_shot_threshold: int = 6, part_b: float = 0.2846
) -> CorpusSplit:
    """Apply the module's rules to a corpus; returns Parts A, B, C as client data."""
    if few_shot_threshold < 2:
        raise FedpktError(f"few_shot_threshold={few_shot_threshold} is invalid (expected >= 2)")
    groups = group_by_persona(corpus)
    kept = {k: g for k, g in groups.items() if len(g[1]) >= MIN_DIALOGUES}
    dropped = [g for k, g in groups.items() if k not in kept]
    regular = [k for k, g in kept.items() if len(g[1]) >= few_shot_threshold]
    few_shot = [k for k, g in kept.items() if len(g[1]) < few_shot_threshold]
    in_b = set(part_b_keys(regular, resolve_part_b(part_b, len(regular)), seed))
    members: dict[Part, list[PersonaKey]] = {
        "A": [k for k in regular if k not in in_b],
        "B": [k for k in regular if k in in_b],
        "C": few_shot,
    }
    clients: list[ClientData] = []
    for part in PARTS:
        ordered = sorted(members[part], key=lambda k: _key_hash(seed, k))
        for index, key in enumerate(ordered):
            persona, dialogues = kept[key]
            clients.append(_as_client(persona, dialogues, part, index, seed, key))
    return CorpusSplit(
        clients=clients,
        dropped_personas=len(dropped),
        dropped_dialogues=sum(len(g[1]) for g in dropped),
        meta={"seed": seed, "few_shot_threshold": few_shot_threshold, "part_b": part_b},
    )
