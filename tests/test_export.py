"""A folded prefix exported as a PEFT adapter reproduces fedpkt's own forward exactly."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from fedpkt.errors import FedpktError
from fedpkt.model.adapter import load_adapter
from fedpkt.model.export import export_peft_adapter
from fedpkt.model.prefix import PersonaPrefix, forward_with_prefix, prefix_shape_for
from tests.test_prefix import VOCAB, tiny_gpt2, tiny_llama

torch.set_num_threads(1)

# PEFT 0.21's forward still passes the cache as `past_key_values`, which transformers 5.24 accepts
# with a FutureWarning (renamed `cache`). Its generate needs fedpkt.model.adapter: see
# test_adapter.py, where generation runs with warnings as errors.
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def folded_for(model, m: int = 3):
    shape = prefix_shape_for(model.config, m)
    return PersonaPrefix(shape, 16, seed=11, init_std=1.0).fold(), shape


def test_export_writes_pefts_inference_form(tmp_path) -> None:
    folded, shape = folded_for(tiny_llama())
    out = export_peft_adapter(folded, shape, "my/backbone", tmp_path / "adapter")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "PREFIX_TUNING" and config["task_type"] == "CAUSAL_LM"
    assert config["prefix_projection"] is False and config["inference_mode"] is True
    # Llama tiny: 2 layers, 2 kv heads of 8 → token_dim 16, "heads" = kv heads (PEFT's GQA rule)
    assert (config["num_virtual_tokens"], config["num_layers"]) == (3, 2)
    assert (config["token_dim"], config["num_attention_heads"]) == (16, 2)
    assert config["base_model_name_or_path"] == "my/backbone"
    weights = load_file(out / "adapter_model.safetensors")
    assert list(weights) == ["prompt_embeddings"]
    assert torch.equal(weights["prompt_embeddings"], folded)
    assert sorted(p.name for p in out.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]


@pytest.mark.parametrize("build", [tiny_gpt2, tiny_llama], ids=["gpt2", "llama"])
def test_peft_reproduces_forward_with_prefix_right_padded(build, tmp_path) -> None:
    """PEFT's default positions (m, m+1, ...) agree with ours on right-padded rows."""
    model = build()
    folded, shape = folded_for(model)
    ids = torch.randint(0, VOCAB - 1, (2, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    ours = forward_with_prefix(model, ids, mask, folded.expand(2, -1, -1)).logits
    peft = PeftModel.from_pretrained(model, export_peft_adapter(folded, shape, "t", tmp_path))
    theirs = peft(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(theirs[0], ours[0], atol=1e-5)
    assert torch.allclose(theirs[1, :4], ours[1, :4], atol=1e-5)


@pytest.mark.parametrize("build", [tiny_gpt2, tiny_llama], ids=["gpt2", "llama"])
def test_peft_reproduces_forward_with_prefix_left_padded(build, tmp_path) -> None:
    """Given unshifted position ids (cumsum - 1), PEFT adds m: exactly our convention."""
    model = build()
    folded, shape = folded_for(model)
    ids = torch.randint(0, VOCAB - 1, (2, 6), generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[1] * 6, [0] * 3 + [1] * 3])
    ours = forward_with_prefix(model, ids, mask, folded.expand(2, -1, -1)).logits
    peft = PeftModel.from_pretrained(model, export_peft_adapter(folded, shape, "t", tmp_path))
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    theirs = peft(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    assert torch.allclose(theirs[0], ours[0], atol=1e-5)
    assert torch.allclose(theirs[1, 3:], ours[1, 3:], atol=1e-5)


def test_peft_greedy_generation_follows_our_prefix(tmp_path) -> None:
    """An adapter loaded with ``load_adapter`` generates (greedy, 4 tokens) what argmax over
    forward_with_prefix picks."""
    model = tiny_gpt2()
    folded, shape = folded_for(model)
    ids = torch.randint(0, VOCAB - 1, (1, 5), generator=torch.Generator().manual_seed(2))
    expected = ids
    for _ in range(4):
        logits = forward_with_prefix(model, expected, torch.ones_like(expected), folded[None])
        expected = torch.cat([expected, logits.logits[:, -1:].argmax(-1)], dim=1)
    peft = load_adapter(model, export_peft_adapter(folded, shape, "t", tmp_path))
    generated = peft.generate(
        input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False
    )
    assert generated.tolist() == expected.tolist()


def test_export_overwrites_a_previous_export_atomically(tmp_path) -> None:
    model = tiny_gpt2()
    first, shape = folded_for(model)
    export_peft_adapter(first, shape, "t", tmp_path)
    second = first + 1.0
    export_peft_adapter(second, shape, "t", tmp_path)
    assert torch.equal(
        load_file(tmp_path / "adapter_model.safetensors")["prompt_embeddings"], second
    )
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_export_rejects_a_prefix_of_the_wrong_shape(tmp_path) -> None:
    folded, shape = folded_for(tiny_gpt2())
    with pytest.raises(FedpktError, match=r"shape \(2, 128\); expected \(3, 128\)"):
        export_peft_adapter(folded[:2], shape, "t", tmp_path)


def test_export_rejects_non_finite_values(tmp_path) -> None:
    folded, shape = folded_for(tiny_gpt2())
    folded[0, 0] = float("inf")
    with pytest.raises(FedpktError, match="non-finite"):
        export_peft_adapter(folded, shape, "t", tmp_path)
    assert not list(tmp_path.iterdir())


def test_export_rejects_a_file_as_directory(tmp_path) -> None:
    folded, shape = folded_for(tiny_gpt2())
    target = tmp_path / "taken"
    target.write_text("x")
    with pytest.raises(FedpktError, match="is a file; expected a directory"):
        export_peft_adapter(folded, shape, "t", target)
