"""Loading frozen backbones (fedpkt.model.backbone): embedded, local GPT-2/Llama dirs, errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoTokenizer,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    T5Config,
)

from fedpkt.cache import CACHE_ENV
from fedpkt.config import BackboneConfig
from fedpkt.errors import FedpktError
from fedpkt.model.backbone import (
    EMBEDDED,
    clear_loaded_backbones,
    directory_fingerprint,
    load_backbone,
    load_backbone_from_config,
    resolve_device,
    resolve_dtype,
)
from fedpkt.model.embedded import ensure_embedded


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A private cache with the tiny embedded backbone built; FEDPKT_CACHE points at it."""
    root = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(root))
        ensure_embedded("tiny", progress=False)
        yield root
    clear_loaded_backbones()


@pytest.fixture()
def tiny(cache, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(cache))
    return load_backbone(EMBEDDED, embedded_size="tiny", device="cpu", progress=False)


@pytest.fixture(scope="module")
def llama_dir(cache, tmp_path_factory) -> Path:
    """A tiny random Llama (grouped-query attention) saved with the embedded tokenizer."""
    tokenizer_dir = next(
        p for p in (cache / "backbones").glob("embedded-dialogue-tiny-*") if p.is_dir()
    )
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    out = tmp_path_factory.mktemp("llama")
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_embedded_backbone_is_frozen_and_in_eval_mode(tiny):
    assert isinstance(tiny.model, GPT2LMHeadModel)
    assert not tiny.model.training
    assert all(not p.requires_grad for p in tiny.model.parameters())


def test_loading_twice_returns_the_same_object(tiny, cache, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(cache))
    again = load_backbone(EMBEDDED, embedded_size="tiny", device="cpu", progress=False)
    assert again is tiny


def test_the_directory_path_and_the_embedded_name_share_one_load(tiny):
    assert load_backbone(str(tiny.path), device="cpu") is tiny


def test_config_section_loads_the_same_backbone(tiny):
    section = BackboneConfig(name=str(tiny.path), embedded_size="tiny", device="cpu")
    assert load_backbone_from_config(section) is tiny


def test_fingerprint_is_stable_across_fresh_loads(tiny, cache, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(cache))
    clear_loaded_backbones()
    fresh = load_backbone(EMBEDDED, embedded_size="tiny", device="cpu", progress=False)
    assert fresh is not tiny
    assert fresh.fingerprint == tiny.fingerprint == directory_fingerprint(tiny.path)
    assert len(tiny.fingerprint) == 16 and int(tiny.fingerprint, 16) >= 0


def test_fingerprint_changes_when_one_weight_changes(tiny, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny.path, copy)
    model = GPT2LMHeadModel.from_pretrained(copy)
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.bias[0] += 1.0
    model.save_pretrained(copy)
    assert directory_fingerprint(copy) != tiny.fingerprint


def test_tokenizer_pads_on_the_right_with_a_pad_token(tiny):
    assert tiny.tokenizer.pad_token is not None
    assert tiny.tokenizer.padding_side == "right"
    batch = tiny.tokenizer(["B: hi", "A: hello there, how are you?"], padding=True)
    assert batch["attention_mask"][0][-1] == 0  # the short row is padded at its end


def test_backbone_reports_its_shape_and_parameter_count(tiny):
    """tiny recipe: 2 layers, width 32, 2 heads of 16; params = what torch counts (tied once)."""
    assert (tiny.num_layers, tiny.hidden_size, tiny.num_heads) == (2, 32, 2)
    assert (tiny.num_kv_heads, tiny.head_dim) == (2, 16)
    assert tiny.num_params == sum(p.numel() for p in tiny.model.parameters())
    assert tiny.device == torch.device("cpu")


def test_llama_directory_loads_through_the_same_path(llama_dir):
    llama = load_backbone(str(llama_dir), device="cpu")
    assert isinstance(llama.model, LlamaForCausalLM)
    assert all(not p.requires_grad for p in llama.model.parameters())
    assert (llama.num_layers, llama.num_heads, llama.num_kv_heads, llama.head_dim) == (2, 4, 2, 8)
    ids = llama.tokenizer("A: hi\nB:", return_tensors="pt")["input_ids"]
    assert llama.model(input_ids=ids).logits.shape == (1, ids.shape[1], len(llama.tokenizer))


def test_missing_pad_token_falls_back_to_eos(llama_dir, tmp_path):
    target = tmp_path / "nopad"
    shutil.copytree(llama_dir, target)
    tokenizer = AutoTokenizer.from_pretrained(target)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(target)
    assert AutoTokenizer.from_pretrained(target).pad_token is None
    loaded = load_backbone(str(target), device="cpu")
    assert loaded.tokenizer.pad_token == loaded.tokenizer.eos_token


def test_bfloat16_dtype_is_applied(llama_dir):
    assert load_backbone(str(llama_dir), device="cpu", dtype="bfloat16").model.dtype == (
        torch.bfloat16
    )


# ------------------------------------------------------------------------------ errors


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_missing_directory_is_a_one_line_error(tmp_path):
    with pytest.raises(FedpktError, match="does not exist") as err:
        load_backbone(str(tmp_path / "nowhere"), device="cpu")
    assert str(tmp_path / "nowhere") in _one_line(err)


def test_directory_without_config_json_is_refused(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(FedpktError, match=r"has no config\.json") as err:
        load_backbone(str(tmp_path), device="cpu")
    _one_line(err)


def test_unreadable_config_json_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(FedpktError, match=r"unreadable config\.json") as err:
        load_backbone(str(tmp_path), device="cpu")
    _one_line(err)


def test_a_model_that_is_not_a_causal_lm_is_refused(tmp_path):
    T5Config(d_model=16, num_layers=1, num_heads=2, d_kv=8, d_ff=32).save_pretrained(tmp_path)
    with pytest.raises(FedpktError, match="'t5' model, not a causal LM") as err:
        load_backbone(str(tmp_path), device="cpu")
    _one_line(err)


def test_a_config_without_weights_is_refused(tiny, tmp_path):
    shutil.copy(tiny.path / "config.json", tmp_path / "config.json")
    with pytest.raises(FedpktError, match="has no weights") as err:
        load_backbone(str(tmp_path), device="cpu")
    _one_line(err)


def test_auto_device_is_cuda_exactly_when_available():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


def test_unknown_device_and_dtype_are_one_line_errors():
    with pytest.raises(FedpktError, match="device 'tpu' is not"):
        resolve_device("tpu")
    with pytest.raises(FedpktError, match="dtype 'int8' is unknown"):
        resolve_dtype("int8")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_a_one_line_error():
    with pytest.raises(FedpktError, match="no CUDA GPU is available"):
        resolve_device("cuda:0")
