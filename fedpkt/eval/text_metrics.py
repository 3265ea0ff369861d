"""Response-quality metrics of the paper's Table 2: 1-gram F1, 2-gram F1 and LCS F1.

PERSONA-CHAT results are compared through ParlAI's F1, so the maths copies ParlAI's
``normalize_answer`` and ``_prec_recall_f1_score`` exactly (``parlai/core/metrics.py``); the
2-gram F1 is the same bag-of-items F1 over bigrams, and the LCS F1 is ROUGE-L's F-measure with
beta = 1 over the same normalised tokens. Every value is in [0, 1]; reports multiply by 100 to
match the paper's tables.

Edge cases (all follow ParlAI's rule "no overlap -> 0"):

- empty prediction or empty reference (after normalisation) -> 0, including both empty;
- identical non-empty strings -> 1 for all three metrics, except that
- a text of one token has no bigram, so its 2-gram F1 is 0 even against an identical text.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Hashable, Sequence
from statistics import fmean

from fedpkt.errors import FedpktError

# ParlAI's patterns: the punctuation class is string.punctuation written out, articles are whole
# words. Punctuation becomes a space (so "dog's" -> "dog s"), as ParlAI does.
_RE_ARTICLES = re.compile(r"\b(a|an|the)\b")
_RE_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")

TEXT_METRICS: tuple[str, ...] = ("f1", "f1_2gram", "lcs_f1")


def normalize_answer(text: str) -> str:
    """Lower-case, punctuation -> space, drop articles a/an/the, collapse whitespace (ParlAI).

    >>> normalize_answer("The dog's  ball, an apple!")
    'dog s ball apple'
    """
    text = text.lower()
    text = _RE_PUNCTUATION.sub(" ", text)
    text = _RE_ARTICLES.sub(" ", text)
    return " ".join(text.split())


def tokens(text: str) -> list[str]:
    """The normalised whitespace tokens every metric here compares."""
    return normalize_answer(text).split()


def ngrams(items: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """Consecutive n-grams of ``items`` (length len(items) - n + 1, or empty if shorter than n)."""
    return [tuple(items[i : i + n]) for i in range(len(items) - n + 1)]


def prec_recall_f1(
    pred_items: Sequence[Hashable], gold_items: Sequence[Hashable]
) -> tuple[float, float, float]:
    """Bag-of-items precision, recall and F1 with multiplicity (ParlAI's _prec_recall_f1_score).

    An item counts as matched at most min(count in pred, count in gold) times; no match -> zeros.
    """
    num_same = sum((Counter(gold_items) & Counter(pred_items)).values())
    if num_same == 0:
        return 0.0, 0.0, 0.0
    precision = num_same / len(pred_items)
    recall = num_same / len(gold_items)
    return precision, recall, 2 * precision * recall / (precision + recall)


def lcs_length(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """Length of the longest common subsequence of two token lists (O(len(a)·len(b)) time)."""
    previous = [0] * (len(b) + 1)
    for item_a in a:
        current = [0]
        for j, item_b in enumerate(b):
            if item_a == item_b:
                current.append(previous[j] + 1)
            else:
                current.append(max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def unigram_f1(prediction: str, reference: str) -> float:
    """ParlAI's F1: bag-of-tokens F1 of the normalised prediction against the reference."""
    return prec_recall_f1(tokens(prediction), tokens(reference))[2]


def bigram_f1(prediction: str, reference: str) -> float:
    """The same bag F1 over bigrams; a text of fewer than two tokens has none, so scores 0."""
    return prec_recall_f1(ngrams(tokens(prediction), 2), ngrams(tokens(reference), 2))[2]


def lcs_f1(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure with beta = 1: P = LCS/|pred|, R = LCS/|ref|, F = 2PR/(P+R)."""
    pred, ref = tokens(prediction), tokens(reference)
    common = lcs_length(pred, ref)
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def text_scores(prediction: str, reference: str) -> dict[str, float]:
    """All three quality metrics of one response, keyed by their metric names."""
    return {
        "f1": unigram_f1(prediction, reference),
        "f1_2gram": bigram_f1(prediction, reference),
        "lcs_f1": lcs_f1(prediction, reference),
    }


def average_text_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean of each quality metric over aligned (prediction, reference) pairs.

    Raises FedpktError when the lists differ in length or are empty: a mean over nothing would
    silently read as a score of 0.
    """
    if len(predictions) != len(references):
        raise FedpktError(
            f"got {len(predictions)} predictions and {len(references)} references "
            "(expected one reference per prediction)"
        )
    if not predictions:
        raise FedpktError("got 0 predictions to score (expected at least one response)")
    rows = [text_scores(p, r) for p, r in zip(predictions, references, strict=True)]
    return {name: fmean(row[name] for row in rows) for name in TEXT_METRICS}
