"""The paper's split: grouping, Parts A/B/C, 8:1:1 per persona (fedpkt.data.split)."""

from __future__ import annotations

import pytest

from fedpkt.data.schema import Dialogue, Persona, Utterance
from fedpkt.data.split import (
    Corpus,
    num_valid,
    persona_key,
    resolve_part_b,
    split_corpus,
)
from fedpkt.data.stats import PartRow, part_table
from fedpkt.data.synthetic import generate_corpus
from fedpkt.errors import FedpktError


def _corpus(counts: list[int]) -> Corpus:
    """Persona i ("i like thing i.") has counts[i] two-turn dialogues."""
    personas, dialogues = {}, []
    for i, n in enumerate(counts):
        personas[f"x{i}"] = Persona(f"x{i}", [f"i like thing {i}."])
        for k in range(n):
            turns = [Utterance("partner", f"hi {k}"), Utterance("persona", f"reply {i} {k}")]
            dialogues.append(Dialogue(f"x{i}-{k:02d}", f"x{i}", turns))
    return Corpus(personas, dialogues)


# counts: 2 (dropped), 3 and 5 (few-shot), 6, 10, 15, 7, 8 (regular)
COUNTS = [2, 3, 5, 6, 10, 15, 7, 8]


def _members(split, part):
    return {c.persona.sentences[0] for c in split.part(part)}


def test_persona_key_ignores_case_spacing_punctuation_and_order():
    assert persona_key(["I like dogs .", "i am tall."]) == persona_key(
        ["i am tall", "i like dogs."]
    )
    assert persona_key(["i like dogs."]) != persona_key(["i like cats."])


def test_num_valid_is_ten_percent_rounded_half_up_at_least_one():
    assert [num_valid(n) for n in (3, 4, 9, 14, 15, 24, 25)] == [1, 1, 1, 1, 2, 2, 3]


def test_part_b_share_rounds_half_up_and_counts_pass_through():
    assert resolve_part_b(0.2846, 1054) == 300  # 299.97 -> 300, the paper's Part B
    assert resolve_part_b(0.25, 10) == 3  # 2.5 -> 3
    assert resolve_part_b(12, 52) == 12


def test_part_b_count_larger_than_the_regular_personas_is_refused():
    with pytest.raises(FedpktError, match="only 5 regular personas"):
        resolve_part_b(6, 5)


def test_personas_with_fewer_than_three_dialogues_are_dropped():
    split = split_corpus(_corpus(COUNTS), seed=0, part_b=2)
    assert (split.dropped_personas, split.dropped_dialogues) == (1, 2)
    assert len(split.clients) == 7


def test_part_c_is_exactly_the_personas_under_the_threshold():
    split = split_corpus(_corpus(COUNTS), seed=0, part_b=2)
    assert _members(split, "C") == {"i like thing 1.", "i like thing 2."}


def test_part_b_takes_the_requested_count_and_parts_do_not_overlap():
    split = split_corpus(_corpus(COUNTS), seed=0, part_b=2)
    a, b, c = (_members(split, p) for p in "ABC")
    assert (len(a), len(b), len(c)) == (3, 2, 2)
    assert not (a & b or a & c or b & c)


def test_each_persona_is_cut_8_1_1_with_at_least_one_valid_and_test():
    """n=3 -> 1/1/1, 5 -> 3/1/1, 6 -> 4/1/1, 10 -> 8/1/1, 15 -> 11/2/2, 7 -> 5/1/1, 8 -> 6/1/1."""
    split = split_corpus(_corpus(COUNTS), seed=0, part_b=2)
    got = sorted(
        (
            sum(c.meta["counts"].values()),
            c.meta["counts"]["train"],
            c.meta["counts"]["valid"],
            c.meta["counts"]["test"],
        )
        for c in split.clients
    )
    assert got == [
        (3, 1, 1, 1),
        (5, 3, 1, 1),
        (6, 4, 1, 1),
        (7, 5, 1, 1),
        (8, 6, 1, 1),
        (10, 8, 1, 1),
        (15, 11, 2, 2),
    ]


def test_splits_of_a_persona_are_disjoint_and_complete():
    split = split_corpus(_corpus(COUNTS), seed=0, part_b=2)
    for client in split.clients:
        ids = [d.dialogue_id for name in ("train", "valid", "test") for d in client.splits[name]]
        assert len(ids) == len(set(ids)) == sum(client.meta["counts"].values())


def test_split_is_deterministic_and_independent_of_input_order():
    def layout(corpus):
        split = split_corpus(corpus, seed=4, part_b=2)
        return [
            (
                c.meta["client_id"],
                c.persona.sentences[0],
                {k: [d.dialogue_id for d in v] for k, v in c.splits.items()},
            )
            for c in split.clients
        ]

    forward = _corpus(COUNTS)
    backward = Corpus(forward.personas, list(reversed(forward.dialogues)))
    assert layout(forward) == layout(backward) == layout(_corpus(COUNTS))


def test_another_seed_changes_the_cut():
    def cut(seed):
        return [
            [d.dialogue_id for d in c.splits["test"]]
            for c in split_corpus(_corpus(COUNTS), seed=seed, part_b=2).clients
        ]

    assert cut(0) != cut(1)


def test_client_ids_are_part_and_index_and_rename_the_persona():
    split = split_corpus(_corpus(COUNTS), seed=0, part_b=2)
    assert [c.meta["client_id"] for c in split.clients] == [
        "A-0000",
        "A-0001",
        "A-0002",
        "B-0000",
        "B-0001",
        "C-0000",
        "C-0001",
    ]
    for client in split.clients:
        assert client.persona.persona_id == client.meta["client_id"]
        dialogues = [d for v in client.splits.values() for d in v]
        assert {d.persona_id for d in dialogues} == {client.meta["client_id"]}


def test_personas_with_the_same_description_are_merged():
    corpus = _corpus([3, 3])
    corpus.personas["x1"] = Persona("x1", ["I like thing 0"])  # same key as x0
    split = split_corpus(corpus, seed=0, part_b=0)
    assert len(split.clients) == 1 and sum(split.clients[0].meta["counts"].values()) == 6


def test_dialogue_naming_an_unknown_persona_is_an_error():
    corpus = _corpus([3])
    corpus.dialogues.append(Dialogue("z", "nobody", []))
    with pytest.raises(FedpktError, match="persona 'nobody'"):
        split_corpus(corpus, seed=0)


def test_paper_scale_reproduces_table_1_exactly():
    split = split_corpus(generate_corpus("paper", seed=0), seed=0, few_shot_threshold=6, part_b=300)
    assert part_table(split) == [
        PartRow("A", 754, 5471, 774, 774),
        PartRow("B", 300, 2166, 304, 304),
        PartRow("C", 239, 538, 239, 239),
    ]
    assert split.dropped_personas == 0
