"""The paper's centralized settings: prompt contexts, selection, and an end-to-end run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fedpkt.baseline_settings import SETTING_KEYS, select_settings
from fedpkt.baselines import (
    context_prompt,
    encode_with_context,
    load_model_arrays,
    model_arrays,
    persona_context,
    persona_numbers,
    phase2_targets,
)
from fedpkt.data.encoding import encode_example
from fedpkt.data.schema import Example, Persona, Utterance
from fedpkt.errors import FedpktError
from fedpkt.model.backbone import load_backbone
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def tokenizer():
    return load_backbone("embedded", embedded_size="tiny").tokenizer


def _example(turns: int) -> Example:
    history = [
        Utterance("partner" if i % 2 == 0 else "persona", f"turn number {i} about my dog")
        for i in range(turns)
    ]
    return Example(history=history, response=Utterance("persona", "i love my dog"))


def test_all_eight_settings_in_table2_order() -> None:
    assert [s.method for s in select_settings(None)] == [
        "Persona + Fine-tuning",
        "Fine-tuning",
        "Persona_id + Fine-tuning",
        "Reptile + Fine-tuning",
        "Rand init + Prefix-tuning",
        "PersonaPKT (base)",
        "PersonaPKT (temperature)",
        "PersonaPKT (PPReptile)",
    ]


def test_only_keeps_table2_order_whatever_the_order_given() -> None:
    assert [s.key for s in select_settings("pkt-base, ft")] == ["ft", "pkt-base"]


def test_unknown_setting_is_a_one_line_error() -> None:
    with pytest.raises(FedpktError, match="nope unknown"):
        select_settings("ft,nope")


def test_persona_numbers_give_b_and_c_ids_unseen_in_part_a() -> None:
    """A: a1, a2 -> 0, 1; then B's b1 -> 2; then C's c1 -> 3."""
    numbers = persona_numbers({"C": ["c1"], "A": ["a2", "a1"], "B": ["b1"]})
    assert numbers == {"a1": 0, "a2": 1, "b1": 2, "c1": 3}


def test_persona_contexts_as_text() -> None:
    persona = Persona("p", ["i have a dog. ", "i like jazz."])
    assert persona_context("none", persona, 3) == ""
    assert persona_context("description", persona, 3) == "persona: i have a dog. i like jazz.\n"
    assert persona_context("persona_id", persona, 17) == "persona 17:\n"


def test_empty_context_encodes_exactly_like_the_prefix_settings(tokenizer) -> None:
    example = _example(3)
    assert encode_with_context(example, tokenizer, 64, "") == encode_example(example, tokenizer, 64)


def test_context_survives_when_history_is_too_long(tokenizer) -> None:
    """40 turns do not fit 48 tokens: old turns go, the context and the reply cue stay."""
    context = "persona 17:\n"
    example = _example(40)
    encoded = encode_with_context(example, tokenizer, 48, context)
    prompt = tokenizer.decode(list(encoded.input_ids[: encoded.prompt_len]))
    assert len(encoded.input_ids) <= 48
    assert prompt.startswith("persona 17:")
    assert prompt.rstrip().endswith("B:")
    assert "turn number 0 " not in prompt


def test_context_prompt_keeps_the_whole_history_when_it_fits(tokenizer) -> None:
    text = context_prompt(_example(2).history, "persona 1:\n", tokenizer, 128)
    assert text == "persona 1:\nA: turn number 0 about my dog\nB: turn number 1 about my dog\nB:"


def test_phase2_targets_are_b_then_c_sorted_without_a_cap() -> None:
    cfg = tiny_config()
    assert phase2_targets(cfg, ["B2", "B1"], ["C1"]) == ["B1", "B2", "C1"]


def test_phase2_targets_cap_is_a_seeded_subset_in_b_then_c_order() -> None:
    cfg = tiny_config(phase2__max_clients=2)
    ids = ["B1", "B2", "B3", "C1", "C2"]
    first = phase2_targets(cfg, ids[:3], ids[3:])
    assert len(first) == 2
    assert first == sorted(first, key=ids.index)
    assert phase2_targets(cfg, ids[:3], ids[3:]) == first


def test_model_arrays_round_trip() -> None:
    torch.manual_seed(0)
    source, target = nn.Linear(3, 2), nn.Linear(3, 2)
    load_model_arrays(target, model_arrays(source))
    for name, value in model_arrays(source).items():
        np.testing.assert_array_equal(model_arrays(target)[name], value)


def test_model_arrays_with_a_wrong_shape_are_refused() -> None:
    arrays = model_arrays(nn.Linear(3, 2))
    arrays["weight"] = np.zeros((2, 4), dtype=np.float32)
    with pytest.raises(FedpktError, match="shape"):
        load_model_arrays(nn.Linear(3, 2), arrays)


@pytest.mark.e2e
def test_every_setting_then_compare_with_a_federated_run(tmp_path: Path) -> None:
    """All eight settings centrally, a federated run on the same Parts, then `compare`.

    Tiny corpus: 6 Part B/C personas (3 + 3). Stored params: fine-tuning 100 %; Reptile + FT
    one model per persona, 6 x 100 % = 600 %; prefix rows the folded prefix's share.
    """
    from fedpkt.compare import read_comparison, write_comparison
    from fedpkt.model.backbone_info import backbone_num_params
    from fedpkt.model.prefix import prefix_shape_for, stored_params
    from fedpkt.report import read_results
    from sim.baselines import run_baselines
    from sim.simulate import simulate

    torch.set_num_threads(2)
    cfg = tiny_config(phase2__max_epochs=1, phase1__rounds=2)
    events: list[dict] = []
    run = run_baselines(cfg, tmp_path / "central", on_event=events.append)
    rows = read_results(run.root).rows
    assert [(r.method, r.part) for r in rows] == [
        (s.method, p) for s in select_settings(None) for p in ("B", "C")
    ]
    pct = {r.method: r.stored_params_pct for r in rows}
    backbone = load_backbone("embedded", embedded_size="tiny")
    shape = prefix_shape_for(backbone.model.config, cfg.prefix.num_virtual_tokens)
    prefix_pct = (
        100.0 * stored_params(shape) / backbone_num_params("embedded", embedded_size="tiny")
    )
    assert pct["Fine-tuning"] == pytest.approx(100.0)
    assert pct["Reptile + Fine-tuning"] == pytest.approx(600.0)
    assert pct["PersonaPKT (base)"] == pytest.approx(prefix_pct)
    assert all(r.n_personas == 3 for r in rows)
    for key in SETTING_KEYS:
        assert (run.root / key / "report.md").is_file()
    assert sum(e["event"] == "client" for e in events) == 8 * 6
    manifest = json.loads((run.root / "baselines.json").read_text())
    assert sorted(manifest["settings"]) == sorted(SETTING_KEYS)

    fed = simulate(cfg, tmp_path / "fed")
    fed_rows = {r.part: r for r in read_results(fed.root).rows}
    central = {r.part: r for r in rows if r.method == "PersonaPKT (PPReptile)"}
    # One code path: same Parts, seeds and maths, so the same scores federated or not.
    for part in ("B", "C"):
        assert fed_rows[part].f1 == pytest.approx(central[part].f1, abs=1e-6)

    write_comparison([fed.root, run.root], tmp_path / "cmp")
    data = read_comparison(tmp_path / "cmp")
    assert len(data["rows"]) == 9
    gap = [c for c in data["what_holds"] if "federated) ~" in c["claim"]]
    assert [c["holds"] for c in gap] == [True, True]
