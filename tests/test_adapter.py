"""An exported adapter generates fedpkt's replies through PEFT (``fedpkt.model.adapter``).

A prefix is trained for a few epochs on one synthetic persona on the embedded DEFAULT backbone,
exported as ``fedpkt export`` writes it, loaded back with PEFT and asked for replies to the
persona's held-out prompts: greedy and beam 5, each prompt alone and all in one left-padded
batch. Each must equal ``generate_replies`` (fedpkt's own path, under the same folded prefix),
with every warning an error during generation. The prefix must matter on these prompts: the
bare backbone answers some of them differently, or the comparison would prove nothing.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from peft import PeftModel

from fedpkt.config import DataConfig, FedpktConfig
from fedpkt.config import GenerationConfig as GenerationSettings
from fedpkt.data.encoding import encode_examples, render_history
from fedpkt.data.examples import examples_from_dialogues
from fedpkt.data.partition import load_client, prepare_partitions
from fedpkt.errors import FedpktError
from fedpkt.model.adapter import generate_with_prefix, load_adapter, prefix_generation
from fedpkt.model.backbone import Backbone, load_backbone
from fedpkt.model.export import export_peft_adapter
from fedpkt.model.generate import first_line, generate_replies, reply_generation_config
from fedpkt.model.prefix import PersonaPrefix, prefix_shape_for
from fedpkt.train.loop import LoopSettings
from fedpkt.train.prefix_training import train_prefix

pytestmark = pytest.mark.e2e

CFG = FedpktConfig()
MAX_NEW = 16
PROMPTS = 12


@pytest.fixture(scope="module")
def backbone() -> Backbone:
    torch.set_num_threads(1)
    return load_backbone("embedded", embedded_size="default", device="cpu", progress=False)


@pytest.fixture(scope="module")
def trained(backbone, tmp_path_factory):
    """(folded prefix, adapter directory, prompts): one Part A persona of the tiny corpus,
    4 epochs at lr 1e-2 on its training split; prompts from all its dialogues' histories."""
    root = tmp_path_factory.mktemp("prepared") / "data"
    split = prepare_partitions(root, DataConfig(scale="tiny"), 0)
    client = load_client(root, split.part("A")[0].meta["client_id"])
    data = {
        name: examples_from_dialogues(client.splits[name], CFG.data.history_turns)
        for name in ("train", "valid", "test")
    }
    encoded = {
        name: encode_examples(ex, backbone.tokenizer, CFG.data.max_length)
        for name, ex in data.items()
    }
    shape = prefix_shape_for(backbone.model.config, CFG.prefix.num_virtual_tokens)
    prefix = PersonaPrefix(shape, CFG.prefix.projection_hidden, seed=0)
    train_prefix(
        backbone,
        prefix,
        encoded["train"],
        encoded["valid"],
        LoopSettings(lr=1e-2, batch_size=4, max_epochs=4, patience=4, seed=0),
    )
    folded = prefix.fold()
    adapter = export_peft_adapter(
        folded, shape, str(backbone.path), tmp_path_factory.mktemp("adapter")
    )
    examples = data["test"] + data["valid"] + data["train"]
    prompts = list(dict.fromkeys(render_history(e.history) for e in examples))[:PROMPTS]
    assert len(prompts) == PROMPTS
    return folded, adapter, prompts


def peft_replies(model, tokenizer, prompts, *, num_beams: int, batched: bool) -> list[str]:
    """Replies through ``model.generate``: all prompts in one left-padded batch, or one by one."""
    config = reply_generation_config(
        tokenizer, GenerationSettings(num_beams=num_beams, max_new_tokens=MAX_NEW)
    )
    groups = [prompts] if batched else [[p] for p in prompts]
    replies: list[str] = []
    for group in groups:
        inputs = tokenizer(group, return_tensors="pt", padding=True, padding_side="left")
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("error")
            out = model.generate(**inputs, generation_config=config)
        texts = tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], True)
        replies += [first_line(t) for t in texts]
    return replies


@pytest.mark.parametrize("batched", [False, True], ids=["one-by-one", "left-padded-batch"])
@pytest.mark.parametrize("num_beams", [1, 5], ids=["greedy", "beam5"])
def test_exported_adapter_generates_fedpkts_replies(backbone, trained, num_beams, batched):
    folded, adapter, prompts = trained
    tokenizer = backbone.tokenizer
    ours = generate_replies(
        backbone.model,
        tokenizer,
        folded,
        prompts,
        GenerationSettings(num_beams=num_beams, max_new_tokens=MAX_NEW),
    )
    bare = generate_replies(
        backbone.model,
        tokenizer,
        None,
        prompts,
        GenerationSettings(num_beams=num_beams, max_new_tokens=MAX_NEW),
    )
    assert sum(a != b for a, b in zip(ours, bare, strict=True)) >= 3  # the prefix matters here
    model = load_adapter(backbone.model, adapter)
    theirs = peft_replies(model, tokenizer, prompts, num_beams=num_beams, batched=batched)
    assert theirs == ours


def test_a_plain_peft_model_generates_with_the_prefix_through_the_helper(backbone, trained):
    """``PeftModel.from_pretrained`` itself, then ``generate_with_prefix``: the same replies;
    afterwards the PEFT model and the backbone have their own methods back."""
    folded, adapter, prompts = trained
    tokenizer = backbone.tokenizer
    model = PeftModel.from_pretrained(backbone.model, adapter)
    ours = generate_replies(
        backbone.model, tokenizer, folded, prompts[:3], GenerationSettings(max_new_tokens=MAX_NEW)
    )
    config = reply_generation_config(tokenizer, GenerationSettings(max_new_tokens=MAX_NEW))
    inputs = tokenizer(prompts[:3], return_tensors="pt", padding=True, padding_side="left")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("error")
        out = generate_with_prefix(model, **inputs, generation_config=config)
    texts = tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], True)
    assert [first_line(t) for t in texts] == ours
    assert "prepare_inputs_for_generation" not in vars(model)
    assert model.base_model_prepare_inputs_for_generation.__func__ is (
        type(backbone.model).prepare_inputs_for_generation
    )


def test_prefix_generation_refuses_a_model_without_a_prefix_adapter(backbone):
    refusal = "expected a PeftModel holding a prefix-tuning adapter"
    with pytest.raises(FedpktError, match=refusal), prefix_generation(backbone.model):
        pass
