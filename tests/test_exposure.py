"""Canary exposure: the randomness space, the rank -> exposure maths, and memorisation on a tiny
model (a canary trained in hard is exposed, a never-seen one is not)."""

from __future__ import annotations

import math

import pytest
import torch

from fedpkt.data.encoding import encode_example, render_history, render_target
from fedpkt.data.schema import ClientData, Dialogue, Example, Persona, Utterance
from fedpkt.errors import FedpktError
from fedpkt.model.prefix import prefix_arrays
from fedpkt.privacy.exposure import (
    Canary,
    canary_exposure,
    client_canaries,
    exposure_from_rank,
    exposure_markdown,
    exposure_table,
    extrapolated_exposure,
    nth_candidate,
    space_size,
    split_secret,
)
from fedpkt.train.loop import LoopSettings
from fedpkt.train.prefix_training import train_prefix
from tests.training_fixtures import LINES, tiny_model, tiny_prefix, tiny_tokenizer

PLANTED = "my secret code is 417."
UNSEEN = "my secret code is 902."
CONTEXT = render_history([Utterance("partner", LINES[0][0])]) + render_target(LINES[0][1])


@pytest.fixture(scope="module")
def memorised():
    """(model, tokenizer), and a prefix trained 150 epochs on two replies ending in PLANTED."""
    tokenizer, model = tiny_tokenizer(), tiny_model()
    train = [
        encode_example(
            Example(
                history=[Utterance("partner", q)], response=Utterance("persona", f"{a} {PLANTED}")
            ),
            tokenizer,
            64,
        )
        for q, a in LINES[:2]
    ]
    prefix = tiny_prefix(model, seed=1)
    settings = LoopSettings(lr=3e-2, batch_size=2, max_epochs=150, patience=1)
    train_prefix(model, prefix, train, [], settings)
    return (model, tokenizer), prefix


def test_secret_is_the_last_digit_run_and_its_space_is_ten_to_the_digits() -> None:
    assert split_secret("my secret code is 4821 9930.") == ("my secret code is ", "4821 9930", ".")
    assert space_size("4821 9930") == 10**8
    assert space_size("417") == 1000


def test_candidates_keep_the_secrets_shape() -> None:
    """Shape "12 3" (3 digits), index 45 -> "04 5"."""
    assert nth_candidate("12 3", 45) == "04 5"
    assert nth_candidate("417", 0) == "000"


def test_exposure_is_log_space_minus_log_rank() -> None:
    """|R| = 1000: rank 1 -> log2 1000 = 9.966 bits; rank 500 -> 1 bit; rank |R| -> 0."""
    assert exposure_from_rank(1000, 1) == pytest.approx(9.9658, abs=1e-4)
    assert exposure_from_rank(1000, 500) == pytest.approx(1.0)
    assert exposure_from_rank(1000, 1000) == 0.0


def test_rank_outside_the_space_is_a_one_line_error() -> None:
    with pytest.raises(FedpktError, match="rank 0 in a space of 10"):
        exposure_from_rank(10, 0)


def test_extrapolation_of_the_sample_median_is_one_bit() -> None:
    """Symmetric sample: F(median) = 1/2, so exposure = −log2(1/2) = 1 bit."""
    sample = [float(x) for x in torch.linspace(-3, 3, 201)]
    assert extrapolated_exposure(sample, 0.0, 10**8) == pytest.approx(1.0, abs=0.05)


def test_a_canary_without_digits_is_a_one_line_error() -> None:
    with pytest.raises(FedpktError, match="has no digits"):
        split_secret("my secret code is banana.")


def test_a_canary_trained_in_hard_is_exposed(memorised) -> None:
    """All 1000 candidates scored: the planted secret ranks near the top (exposure > 5 bits of
    the 9.97 possible), while the same prefix before training ranks it like any other."""
    backbone, prefix = memorised
    row = canary_exposure(backbone, prefix.fold(), Canary(PLANTED, CONTEXT))
    assert (row.method, row.scored, row.space_size) == ("exact", 1000, 1000)
    assert row.exposure > 5.0
    fresh = canary_exposure(
        backbone, tiny_prefix(backbone[0], seed=1).fold(), Canary(PLANTED, CONTEXT)
    )
    assert fresh.exposure < 3.0


def test_a_never_seen_canary_has_low_exposure(memorised) -> None:
    backbone, prefix = memorised
    assert canary_exposure(backbone, prefix.fold(), Canary(UNSEEN, CONTEXT)).exposure < 3.0


def test_extrapolation_from_a_sample_agrees_with_the_exact_rank(memorised) -> None:
    """Forcing the sampled path (|R| = 1000 > max_enumerate = 10, 300 draws) gives an exposure
    within 1.5 bits of the exact one, for the planted and the unseen canary."""
    backbone, prefix = memorised
    states = prefix.fold()
    for text in (PLANTED, UNSEEN):
        exact = canary_exposure(backbone, states, Canary(text, CONTEXT))
        sampled = canary_exposure(
            backbone, states, Canary(text, CONTEXT), max_enumerate=10, num_samples=300
        )
        assert sampled.method == "extrapolated" and sampled.scored < 1000
        assert abs(sampled.exposure - exact.exposure) < 1.5, text


def test_prefix_arrays_and_folded_states_give_the_same_exposure(memorised) -> None:
    backbone, prefix = memorised
    canaries = [Canary(PLANTED, CONTEXT, "A-0001")]
    from_arrays = exposure_table(backbone, prefix_arrays(prefix), canaries)
    from_folded = exposure_table(backbone, prefix.fold(), canaries)
    assert from_arrays[0].rank == from_folded[0].rank
    assert from_arrays[0].log_perplexity == pytest.approx(from_folded[0].log_perplexity, rel=1e-5)


def test_client_canaries_rebuild_the_planted_context() -> None:
    """The canary appended to turn 1 (a persona reply) has context "A: q\\nB: reply-head"."""
    turns = [
        Utterance("partner", "any hobbies?"),
        Utterance("persona", f"i play the guitar. {PLANTED}"),
    ]
    client = ClientData(
        persona=Persona("p1", ["i play the guitar."]),
        part="A",
        splits={"train": [Dialogue("d1", "p1", turns)], "valid": [], "test": []},
        meta={
            "client_id": "A-0001",
            "canaries": [{"text": PLANTED, "dialogue_id": "d1", "turn": 1}],
        },
    )
    (canary,) = client_canaries(client)
    assert canary == Canary(PLANTED, "A: any hobbies?\nB: i play the guitar.", "A-0001")


def test_markdown_has_one_row_per_canary_and_the_mean() -> None:
    from fedpkt.privacy.exposure import ExposureRow

    rows = [
        ExposureRow("A-0001", PLANTED, "417", 12.0, 1.0, 1000, 1000, math.log2(1000), "exact"),
        ExposureRow("A-0002", UNSEEN, "902", 30.0, 500.0, 1000, 1000, 1.0, "exact"),
    ]
    text = exposure_markdown(rows)
    assert text.count("| A-000") == 2
    assert "Mean exposure 5.48 bits, max 9.97 bits over 2 canaries" in text
