"""One persona's scores, and the mean over personas that the paper's tables report.

The paper averages per persona first (over its test responses), then over the personas of a
Part, so a persona with many dialogues weighs as much as one with few. A client computes
``score_responses`` on its own test split and sends back only these scalars; the server (or a
centralized baseline) calls ``aggregate_personas`` on the rows it received.

The keys ``f1``, ``f1_2gram``, ``lcs_f1`` and ``c_score`` are the metric names used everywhere:
``results.json`` rows, Flower metric replies, reports. Values are fractions in [0, 1] (C score:
in [-m, m] for m persona sentences); reports print x100 for the first three, as the paper does.
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import fmean
from typing import TYPE_CHECKING

from fedpkt.data.schema import Persona
from fedpkt.errors import FedpktError
from fedpkt.eval.text_metrics import TEXT_METRICS, average_text_scores

if TYPE_CHECKING:  # the protocol only; the backends (and transformers) load where they are built
    from fedpkt.eval.consistency import ConsistencyScorer

METRICS: tuple[str, ...] = (*TEXT_METRICS, "c_score")


def score_responses(
    predictions: list[str],
    references: list[str],
    persona: Persona,
    scorer: ConsistencyScorer | None,
) -> dict[str, float]:
    """Means over one persona's responses: f1, f1_2gram, lcs_f1, c_score, plus n (responses, int).

    ``predictions[i]`` is the generated reply to the context whose human reply is
    ``references[i]``; both lists must be equally long and non-empty. Without a scorer
    (``eval.c_backend = "none"``) C is not measured and the row has no ``c_score`` at all.
    """
    row = average_text_scores(predictions, references)
    row["n"] = len(predictions)
    if scorer is None:
        return row
    c_values = scorer.score(predictions, persona)
    if len(c_values) != len(predictions):
        raise FedpktError(
            f"C scorer returned {len(c_values)} scores for {len(predictions)} responses "
            "(expected one per response)"
        )
    row["c_score"] = fmean(c_values)
    return row


def aggregate_personas(rows: Sequence[dict[str, float]]) -> dict[str, float | None]:
    """Unweighted mean of each metric over personas, plus n_personas and n (total responses).

    Each row is one persona's ``score_responses`` output (extra keys are ignored); a row that
    lacks a metric or ``n`` is an error rather than a silent zero. ``c_score`` is None when no
    row measured C (``eval.c_backend = "none"``); some rows with C and some without is an error.
    """
    if not rows:
        raise FedpktError("got 0 persona score rows to aggregate (expected at least one)")
    measured = any("c_score" in row for row in rows)
    required = (*(METRICS if measured else TEXT_METRICS), "n")
    for index, row in enumerate(rows):
        missing = [name for name in required if name not in row]
        if missing:
            raise FedpktError(
                f"persona score row {index} lacks {', '.join(missing)} "
                f"(expected keys {', '.join(required)})"
            )
    result: dict[str, float | None] = {
        name: fmean(float(row[name]) for row in rows) for name in required if name != "n"
    }
    result["c_score"] = result.get("c_score")
    result["n_personas"] = len(rows)
    result["n"] = int(sum(row["n"] for row in rows))
    return result
