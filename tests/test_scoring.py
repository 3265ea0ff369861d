"""Per-persona means of the four metrics, then the unweighted mean over personas."""

from __future__ import annotations

import pytest

from fedpkt.data.schema import Fact, Persona
from fedpkt.errors import FedpktError
from fedpkt.eval.consistency import OracleScorer
from fedpkt.eval.scoring import METRICS, aggregate_personas, score_responses

PERSONA = Persona(persona_id="p1", sentences=["i have a dog."])


class TableScorer:
    """A C-score backend that looks each response's C(u) up in a table the test writes, so
    the aggregation is checked apart from any NLI decision."""

    def __init__(self, table: dict[str, float]) -> None:
        self.table = table

    def score(self, responses: list[str], persona: Persona) -> list[float]:
        return [self.table[response] for response in responses]


def test_metric_names_are_the_shared_keys() -> None:
    assert METRICS == ("f1", "f1_2gram", "lcs_f1", "c_score")


def test_score_responses_gives_means_over_the_personas_responses() -> None:
    """Pair 1 ('i love my dog' / 'i love my cat too'): f1 2/3, f1_2gram 4/7, lcs_f1 2/3;
    pair 2 identical: 1, 1, 1. C: 2 and -1. Means: 5/6, 11/14, 5/6, C 1/2; n = 2."""
    scorer = TableScorer({"i love my dog": 2.0, "hello there": -1.0})
    row = score_responses(
        ["i love my dog", "hello there"], ["i love my cat too", "hello there"], PERSONA, scorer
    )
    assert row == pytest.approx(
        {"f1": 5 / 6, "f1_2gram": 11 / 14, "lcs_f1": 5 / 6, "c_score": 0.5, "n": 2}
    )


def test_score_responses_with_the_oracle_backend() -> None:
    """Persona facts job=nurse, pet=dog.
    Pair 1: prediction and reference both normalise to [i work as nurse and i have dog]:
    f1 = f1_2gram = lcs_f1 = 1; C = job +1, pet +1 = 2.
    Pair 2: [i am teacher by trade] (5) vs [i work as nurse] (4): one shared token 'i',
    P 1/5, R 1/4, F1 = 2·(1/20)/(9/20) = 2/9; no shared bigram: 0; LCS 1: 2/9;
    C = job -1 (teacher), pet 0 = -1.
    Means: f1 (1 + 2/9)/2 = 11/18, f1_2gram 1/2, lcs_f1 11/18, c_score 1/2."""
    persona = Persona(
        "p1", ["i work as a nurse.", "i have a dog."], (Fact("job", "nurse"), Fact("pet", "dog"))
    )
    row = score_responses(
        ["I work as a nurse and I have a dog!", "i am a teacher by trade"],
        ["i work as a nurse and i have a dog", "i work as a nurse"],
        persona,
        OracleScorer(),
    )
    assert row == pytest.approx(
        {"f1": 11 / 18, "f1_2gram": 0.5, "lcs_f1": 11 / 18, "c_score": 0.5, "n": 2}
    )


def test_score_responses_rejects_a_scorer_that_skips_responses() -> None:
    class Short(TableScorer):
        def score(self, responses: list[str], persona: Persona) -> list[float]:
            return [0.0]

    with pytest.raises(FedpktError, match="returned 1 scores for 2 responses"):
        score_responses(["a b", "c d"], ["a b", "c d"], PERSONA, Short({}))


def test_aggregate_is_unweighted_over_personas() -> None:
    """Persona 1 (3 responses): f1 .5, f1_2gram .2, lcs_f1 .4, C 1; persona 2 (1 response):
    f1 1, f1_2gram .4, lcs_f1 .6, C -1. Means over personas: .75, .3, .5, 0 (a mean weighted
    by responses would give f1 (3·.5 + 1)/4 = .625 instead); n_personas 2, n 3 + 1 = 4."""
    rows = [
        {"f1": 0.5, "f1_2gram": 0.2, "lcs_f1": 0.4, "c_score": 1.0, "n": 3},
        {"f1": 1.0, "f1_2gram": 0.4, "lcs_f1": 0.6, "c_score": -1.0, "n": 1},
    ]
    assert aggregate_personas(rows) == pytest.approx(
        {"f1": 0.75, "f1_2gram": 0.3, "lcs_f1": 0.5, "c_score": 0.0, "n_personas": 2, "n": 4}
    )


def test_aggregate_rejects_a_row_without_a_metric() -> None:
    """A missing text metric is an error (a missing C means "not measured", below)."""
    with pytest.raises(FedpktError, match="row 0 lacks f1"):
        aggregate_personas([{"f1_2gram": 0.2, "lcs_f1": 0.4, "c_score": 1.0, "n": 3}])


def test_aggregate_rejects_no_personas() -> None:
    with pytest.raises(FedpktError, match="0 persona score rows"):
        aggregate_personas([])


def test_without_a_scorer_c_is_left_out_not_zero() -> None:
    """eval.c_backend = "none": the row has the text metrics and n, and no c_score key."""
    row = score_responses(["hello there"], ["hello there"], PERSONA, None)
    assert row == {"f1": 1.0, "f1_2gram": 1.0, "lcs_f1": 1.0, "n": 1}


def test_aggregate_of_rows_without_c_has_c_none() -> None:
    rows = [{"f1": 0.2, "f1_2gram": 0.1, "lcs_f1": 0.2, "n": 3}] * 2
    assert aggregate_personas(rows)["c_score"] is None


def test_aggregate_rejects_c_measured_for_some_personas_only() -> None:
    rows = [{"f1": 0.2, "f1_2gram": 0.1, "lcs_f1": 0.2, "n": 3}]
    with pytest.raises(FedpktError, match="lacks c_score"):
        aggregate_personas([*rows, {**rows[0], "c_score": 1.0}])
