"""F1, 2-gram F1 and LCS F1: ParlAI's normalisation and bag F1, ROUGE-L F with beta = 1."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedpkt.errors import FedpktError
from fedpkt.eval.text_metrics import (
    average_text_scores,
    bigram_f1,
    lcs_f1,
    lcs_length,
    normalize_answer,
    prec_recall_f1,
    text_scores,
    unigram_f1,
)


def test_normalize_lowers_strips_punctuation_and_articles() -> None:
    """Punctuation becomes a space (dog's -> dog s), articles go, whitespace collapses."""
    assert normalize_answer("The dog's  ball, an apple!") == "dog s ball apple"


def test_normalize_removes_articles_only_as_whole_words() -> None:
    """'a', 'an', 'the' inside a word (theatre, banana, can) stay."""
    assert normalize_answer("A theatre an banana can") == "theatre banana can"


def test_prec_recall_f1_counts_multiplicity() -> None:
    """pred [dog, dog, dog], gold [dog, cat]: matched min(3, 1) = 1;
    P = 1/3, R = 1/2, F1 = 2·(1/6)/(5/6) = 2/5."""
    precision, recall, f1 = prec_recall_f1(["dog", "dog", "dog"], ["dog", "cat"])
    assert (precision, recall) == pytest.approx((1 / 3, 1 / 2))
    assert f1 == pytest.approx(2 / 5)


def test_unigram_f1_hand_worked() -> None:
    """pred [i, love, my, dog], ref [i, love, my, cat, too]: 3 shared;
    P = 3/4, R = 3/5, F1 = 2·0.45/1.35 = 2/3."""
    assert unigram_f1("I love my dog.", "i love my cat, too") == pytest.approx(2 / 3)


def test_unigram_f1_ignores_articles_and_punctuation() -> None:
    """'The dog!' and 'a dog' both normalise to [dog]: F1 = 1."""
    assert unigram_f1("The dog!", "a dog") == 1.0


def test_bigram_f1_hand_worked() -> None:
    """pred bigrams (i love)(love my)(my dog), ref (i love)(love my)(my cat)(cat too): 2 shared;
    P = 2/3, R = 2/4, F1 = 2·(1/3)/(7/6) = 4/7."""
    assert bigram_f1("I love my dog.", "i love my cat, too") == pytest.approx(4 / 7)


def test_bigram_f1_single_token_texts_score_zero() -> None:
    """A one-token text has no bigram, so nothing can match: 0 even against itself."""
    assert bigram_f1("hello", "hello") == 0.0


def test_lcs_length_classic_example() -> None:
    """LCS of ABCBDAB and BDCABA has length 4 (e.g. BCBA)."""
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4


def test_lcs_f1_hand_worked() -> None:
    """pred [i, really, love, my, big, dog] (6), ref [i, love, my, dog, lot] (5, 'a' dropped);
    LCS = i love my dog = 4; P = 4/6, R = 4/5, F = 2·(8/15)/(22/15) = 8/11."""
    assert lcs_f1("I really love my big dog", "I love my dog a lot") == pytest.approx(8 / 11)


def test_word_order_matters_for_bigram_and_lcs_but_not_unigram() -> None:
    """'dog my love i' vs 'i love my dog': same bag -> F1 1; no shared bigram -> 0;
    LCS is one token -> P = R = 1/4, F = 1/4."""
    scores = text_scores("dog my love i", "i love my dog")
    assert scores == pytest.approx({"f1": 1.0, "f1_2gram": 0.0, "lcs_f1": 0.25})


def test_identical_texts_score_one_on_every_metric() -> None:
    assert text_scores("I have a dog.", "I have a dog.") == {
        "f1": 1.0,
        "f1_2gram": 1.0,
        "lcs_f1": 1.0,
    }


@pytest.mark.parametrize(
    ("prediction", "reference"),
    [("", "i have a dog"), ("i have a dog", ""), ("", ""), ("The!", "a ...")],
)
def test_empty_after_normalisation_scores_zero(prediction: str, reference: str) -> None:
    """Empty prediction or reference (also both, also 'The!' which normalises to '') -> 0,
    ParlAI's rule: no shared item means F1 = 0."""
    assert text_scores(prediction, reference) == {"f1": 0.0, "f1_2gram": 0.0, "lcs_f1": 0.0}


def test_average_is_the_mean_over_responses() -> None:
    """Pair 1 ('i love my dog' / 'i love my cat too'): f1 2/3, f1_2gram 4/7, lcs_f1 2/3
    (LCS 'i love my' = 3: P 3/4, R 3/5). Pair 2 identical: all 1.
    Means: f1 5/6, f1_2gram 11/14, lcs_f1 5/6."""
    means = average_text_scores(
        ["i love my dog", "hello there"], ["i love my cat too", "hello there"]
    )
    assert means == pytest.approx({"f1": 5 / 6, "f1_2gram": 11 / 14, "lcs_f1": 5 / 6})


def test_average_rejects_misaligned_lists() -> None:
    with pytest.raises(FedpktError, match="2 predictions and 1 references"):
        average_text_scores(["a b", "c d"], ["a b"])


def test_average_rejects_no_responses() -> None:
    with pytest.raises(FedpktError, match="0 predictions"):
        average_text_scores([], [])


_words = st.lists(st.sampled_from(["i", "love", "my", "dog", "the", "cat", "!"]), max_size=8)


@given(_words, _words)
def test_scores_lie_in_unit_interval_and_are_symmetric(pred: list[str], ref: list[str]) -> None:
    """Each F1 is the harmonic mean of P and R, so swapping prediction and reference (which
    swaps P and R) leaves it unchanged; all values are in [0, 1]."""
    forward = text_scores(" ".join(pred), " ".join(ref))
    backward = text_scores(" ".join(ref), " ".join(pred))
    assert forward == pytest.approx(backward)
    assert all(0.0 <= value <= 1.0 for value in forward.values())
