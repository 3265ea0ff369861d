"""The persona prefix: geometry, the reparameterised module, wire arrays, cache layout, and
mixed-prefix batches on tiny random GPT-2 and Llama (grouped-query) backbones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from fedpkt.errors import FedpktError
from fedpkt.model.prefix import (
    PersonaPrefix,
    PrefixShape,
    forward_with_prefix,
    load_prefix_arrays,
    param_report,
    prefix_arrays,
    prefix_cache,
    prefix_position_ids,
    prefix_shape_for,
    stored_params,
    trainable_params,
)

torch.set_num_threads(1)

VOCAB = 64


def tiny_gpt2(attn: str = "sdpa") -> GPT2LMHeadModel:
    """2 layers, 32 hidden, 4 heads of 8: a prefix row is 2·2·4·8 = 128 wide."""
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=4,
        n_positions=64,
        vocab_size=VOCAB,
        bos_token_id=VOCAB - 1,
        eos_token_id=VOCAB - 1,
        attn_implementation=attn,
    )
    return GPT2LMHeadModel(config).eval().requires_grad_(False)


def tiny_llama(attn: str = "sdpa") -> LlamaForCausalLM:
    """2 layers, 32 hidden, 4 query heads / 2 kv heads of 8: a prefix row is 2·2·2·8 = 64 wide."""
    torch.manual_seed(0)
    config = LlamaConfig(
        num_hidden_layers=2,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        vocab_size=VOCAB,
        bos_token_id=VOCAB - 1,
        eos_token_id=VOCAB - 1,
        attn_implementation=attn,
    )
    return LlamaForCausalLM(config).eval().requires_grad_(False)


BACKBONES = {"gpt2": tiny_gpt2, "gpt2-eager": lambda: tiny_gpt2("eager"), "llama": tiny_llama}


# --- geometry ---------------------------------------------------------------------------------


def test_shape_of_gpt2_reads_n_layer_and_n_head() -> None:
    shape = prefix_shape_for(tiny_gpt2().config, 3)
    assert shape == PrefixShape(num_virtual_tokens=3, num_layers=2, num_kv_heads=4, head_dim=8)
    assert shape.width == 2 * 2 * 4 * 8 == 128


def test_shape_of_llama_uses_key_value_heads() -> None:
    shape = prefix_shape_for(tiny_llama().config, 5)
    assert shape == PrefixShape(num_virtual_tokens=5, num_layers=2, num_kv_heads=2, head_dim=8)
    assert shape.width == 2 * 2 * 2 * 8 == 64


def test_shape_uses_explicit_head_dim_when_config_decouples_it() -> None:
    config = LlamaConfig(
        num_hidden_layers=3,
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
    )
    shape = prefix_shape_for(config, 2)
    assert (shape.num_layers, shape.num_kv_heads, shape.head_dim) == (3, 1, 16)
    assert shape.width == 2 * 3 * 1 * 16 == 96


def test_shape_rejects_zero_virtual_tokens() -> None:
    with pytest.raises(FedpktError, match="num_virtual_tokens is 0"):
        prefix_shape_for(tiny_gpt2().config, 0)


# --- the reparameterised module ---------------------------------------------------------------


def test_forward_repeats_one_prefix_per_row_batch_first() -> None:
    shape = PrefixShape(3, 2, 4, 8)
    states = PersonaPrefix(shape, 16, seed=0)(4)
    assert states.shape == (4, 3, 128)
    assert torch.equal(states[0], states[3])


def test_fold_is_the_detached_float32_single_row() -> None:
    prefix = PersonaPrefix(PrefixShape(3, 2, 4, 8), 16, seed=0)
    folded = prefix.fold()
    assert folded.shape == (3, 128) and folded.dtype == torch.float32
    assert not folded.requires_grad
    assert torch.allclose(folded, prefix(1)[0].detach())


def test_init_is_a_function_of_the_seed_and_leaves_global_rng_alone() -> None:
    shape = PrefixShape(3, 2, 4, 8)
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a, b, c = (PersonaPrefix(shape, 16, seed=s) for s in (7, 7, 8))
    assert torch.rand(1) == expected_next
    assert torch.equal(a.fold(), b.fold())
    assert not torch.equal(a.fold(), c.fold())


def test_embedding_init_std_is_honoured() -> None:
    """P' has m·d = 64·32 = 2048 draws of N(0, 0.5²): their std is 0.5 within a few percent."""
    prefix = PersonaPrefix(PrefixShape(64, 2, 4, 8), 16, seed=0, init_std=0.5)
    assert abs(prefix.encoder.embedding.weight.std().item() - 0.5) < 0.05


def test_trainable_parameter_count_matches_the_formula() -> None:
    """m=3, d=32, k=16, width=128: P' 3·32=96; Linear(32,16) 528; Linear(16,128) 2176 → 2800."""
    shape = PrefixShape(3, 2, 4, 8)
    prefix = PersonaPrefix(shape, 16, seed=0)
    assert sum(p.numel() for p in prefix.parameters()) == trainable_params(shape, 16) == 2800
    assert stored_params(shape) == 3 * 128 == 384


def test_param_report_on_gpt2_medium_geometry() -> None:
    """gpt2-medium: 24 layers, 16 heads of 64, 354.8M params. width = 2·24·1024 = 49152.
    m=8: stored 393,216 = 0.1108 %; m=7: 344,064 = 0.0970 % (< 0.1 %).
    k=512, m=8: 8·1024 + (1024·512+512) + (512·49152+49152) = 25,747,968 = 7.257 %."""
    m8 = param_report(PrefixShape(8, 24, 16, 64), 512, 354_800_000)
    assert m8["stored_params"] == 393_216
    assert m8["trainable_params"] == 25_747_968
    assert m8["stored_pct"] == pytest.approx(0.11083, abs=1e-5)
    assert m8["trainable_pct"] == pytest.approx(7.2570, abs=1e-4)
    m7 = param_report(PrefixShape(7, 24, 16, 64), 512, 354_800_000)
    assert m7["stored_pct"] < 0.1


# --- wire arrays ------------------------------------------------------------------------------


def test_prefix_arrays_are_named_float32_copies_in_stable_order() -> None:
    prefix = PersonaPrefix(PrefixShape(3, 2, 4, 8), 16, seed=0)
    arrays = prefix_arrays(prefix)
    assert list(arrays) == [
        "encoder.embedding.weight",
        "encoder.transform.0.weight",
        "encoder.transform.0.bias",
        "encoder.transform.2.weight",
        "encoder.transform.2.bias",
    ]
    assert all(a.dtype == np.float32 for a in arrays.values())
    arrays["encoder.embedding.weight"][:] = 0.0
    assert prefix.encoder.embedding.weight.abs().sum() > 0


def test_loading_arrays_reproduces_the_sender_prefix() -> None:
    shape = PrefixShape(3, 2, 4, 8)
    sender, receiver = PersonaPrefix(shape, 16, seed=1), PersonaPrefix(shape, 16, seed=2)
    load_prefix_arrays(receiver, prefix_arrays(sender))
    assert torch.equal(receiver.fold(), sender.fold())


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda a: a.pop("encoder.transform.0.bias"), "lack key 'encoder.transform.0.bias'"),
        (lambda a: a.__setitem__("extra", np.zeros(1, np.float32)), "unexpected key 'extra'"),
        (
            lambda a: a.__setitem__("encoder.transform.0.bias", np.zeros(15, np.float32)),
            r"'encoder.transform.0.bias' has shape \(15,\); expected \(16,\)",
        ),
        (
            lambda a: a.__setitem__("encoder.transform.0.bias", np.zeros(16, np.float64)),
            "'encoder.transform.0.bias' has dtype float64; expected float32",
        ),
        (
            lambda a: a["encoder.embedding.weight"].__setitem__((0, 0), np.nan),
            "'encoder.embedding.weight' has non-finite values",
        ),
    ],
    ids=["missing", "unexpected", "shape", "dtype", "nan"],
)
def test_loading_bad_arrays_fails_in_one_line_and_changes_nothing(mutate, message) -> None:
    shape = PrefixShape(3, 2, 4, 8)
    receiver = PersonaPrefix(shape, 16, seed=2)
    before = receiver.fold()
    arrays = prefix_arrays(PersonaPrefix(shape, 16, seed=1))
    mutate(arrays)
    with pytest.raises(FedpktError, match=message) as info:
        load_prefix_arrays(receiver, arrays)
    assert "\n" not in str(info.value)
    assert torch.equal(receiver.fold(), before)


# --- cache layout and position ids ------------------------------------------------------------


def test_cache_layout_is_pefts_layer_kv_head_dim_order() -> None:
    """Shape (m=2, L=2, kv=2, hd=3), width 24; states = arange. Flat index of
    (token t, layer l, kv, head h, d) = t·24 + ((l·2 + kv)·2 + h)·3 + d.
    Layer 1 values (kv=1), head 0, token 1, d=2: 24 + ((2+1)·2 + 0)·3 + 2 = 44."""
    shape = PrefixShape(2, 2, 2, 3)
    states = torch.arange(2 * 24, dtype=torch.float32).view(1, 2, 24)
    cache = prefix_cache(states, shape)
    assert cache.get_seq_length() == 2
    assert cache.layers[1].values.shape == (1, 2, 2, 3)  # (batch, kv_heads, m, head_dim)
    assert cache.layers[1].values[0, 0, 1, 2].item() == 44
    assert cache.layers[0].keys[0, 1, 0].tolist() == [3.0, 4.0, 5.0]  # layer 0 keys, head 1, t 0


def test_cache_rejects_states_of_the_wrong_width() -> None:
    with pytest.raises(FedpktError, match=r"shape \(1, 2, 23\); expected \(batch, 2, 24\)"):
        prefix_cache(torch.zeros(1, 2, 23), PrefixShape(2, 2, 2, 3))


def test_position_ids_count_real_tokens_from_m() -> None:
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 0]])
    assert prefix_position_ids(mask, 2).tolist() == [[2, 2, 2, 3], [2, 3, 4, 4]]


# --- forward passes ---------------------------------------------------------------------------


def _three_personas(model) -> torch.Tensor:
    shape = prefix_shape_for(model.config, 3)
    return torch.cat([PersonaPrefix(shape, 16, seed=s, init_std=1.0)(1) for s in (1, 2, 3)])


@pytest.mark.parametrize("name", list(BACKBONES))
def test_mixed_batch_right_padded_matches_each_row_alone(name: str) -> None:
    model = BACKBONES[name]()
    states = _three_personas(model)
    ids = torch.randint(0, VOCAB - 1, (3, 6), generator=torch.Generator().manual_seed(0))
    lengths = [6, 4, 2]
    mask = torch.tensor([[1] * n + [0] * (6 - n) for n in lengths])
    batch = forward_with_prefix(model, ids, mask, states).logits
    for row, n in enumerate(lengths):
        alone = forward_with_prefix(
            model, ids[row : row + 1, :n], mask[row : row + 1, :n], states[row : row + 1]
        ).logits
        assert torch.allclose(batch[row, :n], alone[0], atol=1e-5), (name, row)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_mixed_batch_left_padded_matches_each_row_alone(name: str) -> None:
    model = BACKBONES[name]()
    states = _three_personas(model)
    ids = torch.randint(0, VOCAB - 1, (3, 6), generator=torch.Generator().manual_seed(1))
    lengths = [6, 4, 2]
    mask = torch.tensor([[0] * (6 - n) + [1] * n for n in lengths])
    batch = forward_with_prefix(model, ids, mask, states).logits
    for row, n in enumerate(lengths):
        alone = forward_with_prefix(
            model,
            ids[row : row + 1, 6 - n :],
            torch.ones(1, n, dtype=torch.long),
            states[row : row + 1],
        ).logits
        assert torch.allclose(batch[row, 6 - n :], alone[0], atol=1e-5), (name, row)


def test_prefix_changes_the_logits_and_none_runs_the_bare_backbone() -> None:
    model = tiny_gpt2()
    ids = torch.randint(0, VOCAB - 1, (1, 5), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    bare = model(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(forward_with_prefix(model, ids, mask, None).logits, bare, atol=1e-6)
    prefixed = forward_with_prefix(model, ids, mask, _three_personas(model)[:1]).logits
    assert not torch.allclose(prefixed, bare, atol=1e-3)


def test_loss_gradient_reaches_the_prefix_only() -> None:
    model = tiny_llama()
    prefix = PersonaPrefix(prefix_shape_for(model.config, 3), 16, seed=0)
    ids = torch.randint(0, VOCAB - 1, (2, 5), generator=torch.Generator().manual_seed(3))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    labels = ids.masked_fill(mask == 0, -100)
    forward_with_prefix(model, ids, mask, prefix(2), labels=labels).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in prefix.parameters())
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.filterwarnings("ignore:Full backward hook:UserWarning")
def test_opacus_per_sample_gradients_equal_each_rows_own_gradient() -> None:
    """Batch-first prefix: opacus (loss_reduction="sum") gives row i exactly the gradient
    of row i's loss computed alone."""
    from opacus import GradSampleModule

    model = tiny_gpt2()
    shape = prefix_shape_for(model.config, 3)
    ids = torch.randint(0, VOCAB - 1, (3, 5), generator=torch.Generator().manual_seed(4))
    mask = torch.tensor([[1] * 5, [1] * 3 + [0] * 2, [1] * 4 + [0]])
    labels = ids.masked_fill(mask == 0, -100)

    def row_losses(states, rows):
        logits = forward_with_prefix(model, ids[rows], mask[rows], states).logits
        per_token = torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2), labels[rows, 1:], reduction="none"
        )
        return per_token.sum(dim=1)

    batched = PersonaPrefix(shape, 16, seed=5)
    wrapped = GradSampleModule(batched, loss_reduction="sum")
    row_losses(wrapped(3), slice(0, 3)).sum().backward()
    alone = PersonaPrefix(shape, 16, seed=5)
    row_losses(alone(1), slice(1, 2)).sum().backward()
    for (name, p_batch), p_alone in zip(
        batched.named_parameters(), alone.parameters(), strict=True
    ):
        assert torch.allclose(p_batch.grad_sample[1], p_alone.grad, atol=1e-6), name


def test_forward_rejects_batch_mismatch_between_states_and_ids() -> None:
    model = tiny_gpt2()
    ids = torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(
        FedpktError, match="prefix states have batch 3; expected input_ids' batch 2"
    ):
        forward_with_prefix(model, ids, torch.ones_like(ids), _three_personas(model))


def test_forward_refuses_gradient_checkpointing_which_would_drop_the_prefix() -> None:
    model = tiny_gpt2()
    enable = getattr(model, "activation_checkpointing_enable", None)
    (enable or model.gradient_checkpointing_enable)()
    model.train()
    ids = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(FedpktError, match="gradient checkpointing"):
        forward_with_prefix(model, ids, torch.ones_like(ids), _three_personas(model)[:1])
