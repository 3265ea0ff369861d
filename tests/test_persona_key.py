"""The persona key (``fedpkt.data.split.persona_key``): what makes two descriptions one persona.

Only case, punctuation, spacing and sentence order are ignored; letters and marks of every
script, digits and emoji count, after Unicode normalisation (NFKC, case folding). On ASCII text
the key is exactly the original rule, pinned below with the keys, Part B choice and client ids
that rule gave: the splits of existing ASCII corpora never move.
"""

from __future__ import annotations

import re
import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from fedpkt.data.personachat import load_parlai
from fedpkt.data.split import _key_hash, normalize_sentence, persona_key, split_corpus

# --- ASCII: byte-identical to the original rule ---------------------------------------------

PERSONAS = [
    ["i like to ski.", "i have a dog ."],
    ["I am a chef!", "My favorite color is BLUE..."],
    ["i drive a 2004 honda civic .", "i've 3 kids"],
    ["\tWe   live in\tthe  city;", "i hate #mondays & $taxes"],
    ["i'm a nurse.", "i work nights (mostly)."],
    ["i listen to jazz", "my mom is a teacher"],
    ["i love cats", "i am vegan", "i run 5k every day"],
    ["i collect stamps.", "i was born in ohio."],
]
DIALOGUES = [8, 7, 6, 6, 5, 4, 3, 9]

# Computed with the rule before Unicode keys (commit 3cc0723), then written down.
PINNED_KEYS = [
    ("i have a dog", "i like to ski"),
    ("i am a chef", "my favorite color is blue"),
    ("i drive a 2004 honda civic", "i ve 3 kids"),
    ("i hate mondays taxes", "we live in the city"),
    ("i m a nurse", "i work nights mostly"),
    ("i listen to jazz", "my mom is a teacher"),
    ("i am vegan", "i love cats", "i run 5k every day"),
    ("i collect stamps", "i was born in ohio"),
]
PINNED_HASHES = [  # sha256(seed 0 | key), first 16 hex digits: orders Part B and client ids
    "669d0e31efde9757",
    "443033b69fb2410b",
    "31c4e960eae21411",
    "62486d382f820b24",
    "50e8bf205fba6769",
    "dc571e98c9c4c0b5",
    "963151d4d9cb18be",
    "fc920b7c14952b9b",
]
PINNED_CLIENTS = {  # client id -> first description sentence (seed 0, 6, part_b 2)
    "A-0000": "We   live in\tthe  city;",
    "A-0001": "i like to ski.",
    "A-0002": "i collect stamps.",
    "B-0000": "i drive a 2004 honda civic .",
    "B-0001": "I am a chef!",
    "C-0000": "i'm a nurse.",
    "C-0001": "i love cats",
    "C-0002": "i listen to jazz",
}


def original_rule(sentence: str) -> str:
    """The key of one sentence before Unicode keys: lower case, [a-z0-9] runs, single spaces."""
    return " ".join(re.sub(r"[^a-z0-9]+", " ", sentence.lower()).split())


def parlai_text(personas: list[list[str]], counts: list[int]) -> str:
    """Episodes of each persona (sentence order alternating), two exchanges each."""
    lines = []
    for p, (sentences, n) in enumerate(zip(personas, counts, strict=True)):
        for d in range(n):
            order = sentences if d % 2 == 0 else list(reversed(sentences))
            numbered = [f"your persona: {s}" for s in order]
            numbered += [f"hello {p} {d}\treply {p} {d}", f"how are you\tfine {p} {d}"]
            lines += [f"{k} {text}" for k, text in enumerate(numbered, start=1)]
    return "\n".join(lines) + "\n"


def test_ascii_persona_keys_are_pinned():
    assert [persona_key(p) for p in PERSONAS] == PINNED_KEYS
    assert [_key_hash(0, persona_key(p))[:16] for p in PERSONAS] == PINNED_HASHES


def test_ascii_personas_keep_their_part_and_client_id(tmp_path):
    path = tmp_path / "train_self_original.txt"
    path.write_text(parlai_text(PERSONAS, DIALOGUES), encoding="utf-8")
    split = split_corpus(load_parlai(path), 0, 6, 2)
    assert {c.meta["client_id"]: c.persona.sentences[0] for c in split.clients} == PINNED_CLIENTS


@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=60))
def test_any_ascii_sentence_keys_as_the_original_rule(sentence):
    assert normalize_sentence(sentence) == original_rule(sentence)


# --- every script, Unicode-normalised ------------------------------------------------------


def test_personas_in_other_scripts_get_their_own_keys():
    """Before, every one of these had the same empty key and merged into one client."""
    personas = [
        ["я люблю собак."],  # Russian: I love dogs
        ["я люблю кошек."],  # ... cats
        ["我喜欢狗。"],
        ["我喜欢猫。"],
        ["मुझे कुत्ते पसंद हैं।"],  # Hindi (combining vowel signs)
        ["أحب القطط."],  # Arabic
    ]
    keys = [persona_key(p) for p in personas]
    assert len(set(keys)) == len(personas)
    assert all(key and all(key) for key in keys)
    assert persona_key(["मुझे कुत्ते पसंद हैं।"]) == ("मुझे कुत्ते पसंद हैं",)


def test_nfc_and_nfd_spellings_are_one_persona():
    nfc = unicodedata.normalize("NFC", "i live in a café.")
    nfd = unicodedata.normalize("NFD", "i live in a café.")
    assert nfc != nfd
    assert persona_key([nfc]) == persona_key([nfd]) == ("i live in a café",)


def test_case_width_and_compatibility_forms_are_ignored():
    """Case folding (ß = ss, Σ = σ = ς) and NFKC (full-width letters, ligatures)."""
    assert persona_key(["Ich wohne in der STRASSE."]) == persona_key(["ich wohne in der straße"])
    assert persona_key(["ΟΔΟΣ"]) == persona_key(["οδος"]) == persona_key(["οδοσ"])
    assert persona_key(["ＩＬＯＶＥ ＣＡＦÉ"]) == persona_key(["ilove café"])
    assert persona_key(["ﬁsh"]) == persona_key(["fish"])


def test_punctuation_and_spacing_of_every_script_are_ignored():
    dogs = persona_key(["我喜欢狗。"])
    assert dogs == persona_key(["我喜欢狗！"]) == persona_key(["  我喜欢狗 "])
    assert persona_key(["«i like» – “dogs”…"]) == persona_key(["i like dogs"])
    assert persona_key(["i\u3000like\u00a0dogs\u2028"]) == persona_key(["i like dogs"])


def test_emoji_count_and_their_presentation_does_not():
    assert persona_key(["i love 🐶"]) != persona_key(["i love 🐱"])
    assert persona_key(["i love 🐶"]) != persona_key(["i love"])
    assert persona_key(["i ❤ dogs"]) == persona_key(["i ❤\ufe0f dogs"])  # variation selector
    assert persona_key(["👍🏽"]) != persona_key(["👍🏿"])  # skin tone modifiers


def test_digits_count_by_value_in_any_script():
    assert persona_key(["i have ٣ cats"]) == persona_key(["i have 3 cats"])
    assert persona_key(["i have 3 cats"]) != persona_key(["i have 4 cats"])


def test_invisible_formatting_is_ignored():
    assert persona_key(["co\u00adoperate"]) == persona_key(["cooperate"])  # soft hyphen
    assert persona_key(["a\u200bb"]) == persona_key(["ab"])  # zero-width space


def test_non_latin_personas_become_separate_clients(tmp_path):
    """The issue's case end to end: two Russian personas, three dialogues each -> two clients,
    each with its own description."""
    personas = [["я люблю собак."], ["я люблю кошек."]]
    path = tmp_path / "train_self_original.txt"
    path.write_text(parlai_text(personas, [3, 3]), encoding="utf-8")
    split = split_corpus(load_parlai(path), 0, 6, 0)
    assert sorted(c.persona.sentences[0] for c in split.clients) == sorted(p[0] for p in personas)
