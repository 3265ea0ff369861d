"""The persona prefix: Li & Liang's reparameterised prefix, and running a frozen causal LM under it.

A persona prefix is m virtual tokens of key/value states for every attention layer of a frozen
backbone. It is trained through Li & Liang's reparameterisation (a small matrix P' of m rows,
passed through an MLP of hidden size k); what is stored, sent and exported is the *folded* result,
an (m, width) matrix with width = 2 · layers · kv_heads · head_dim.

What comes from PEFT and what is ours (and why):

- The trainable module is PEFT's own ``PrefixEncoder`` built from a ``PrefixTuningConfig`` with
  ``prefix_projection=True`` (Embedding(m, kv_hidden) -> Linear(kv_hidden, k) -> Tanh ->
  Linear(k, 2·L·kv_hidden)), configured for grouped-query attention exactly as PEFT's
  ``_prepare_prompt_learning_config`` does (token_dim = kv_heads · head_dim, "heads" = kv_heads).
  So the folded prefix is byte-for-byte PEFT's inference-mode prompt embedding, and a personalised
  prefix exports as a PEFT adapter (``fedpkt.model.export``).
- Ours: **per-row prefixes in one batch.** ``PeftModel`` holds one prefix per adapter and repeats
  it over the batch; fedpkt trains and evaluates many personas at once (phase-1 rounds, the
  centralised baselines), so ``forward_with_prefix`` takes a (batch, m, width) tensor whose rows
  may belong to different personas.
- Ours: **states -> transformers Cache** (``prefix_cache``). PEFT does this inside
  ``PeftModel.get_prompt``; we repeat its layout (view as (b, m, 2L, kv_heads, head_dim), permute
  to (2L, b, kv_heads, m, head_dim), layer i = (keys 2i, values 2i+1)) as a free function so that
  training, generation and export share one definition of the layout.

Width layout of one prefix row (PEFT's): index ((layer · 2 + kv) · kv_heads + head) · head_dim + d,
with kv = 0 for keys and 1 for values.

Position ids (PEFT's convention, pinned by the export round-trip test): the prefix occupies
positions 0..m-1, so the first *real* token of every row sits at position m, and position ids
count real tokens only: ``position_ids = m + cumsum(attention_mask) - 1``. That is what
``PeftModelForCausalLM`` produces when given position ids (it adds m) and what its forward
produces by default for unpadded or right-padded input; counting real tokens makes left-padded
rows (generation) identical to the same row unpadded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from peft import PrefixTuningConfig
from peft.tuners.prefix_tuning import PrefixEncoder
from torch import Tensor, nn
from transformers import Cache, DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from fedpkt.errors import FedpktError
from fedpkt.model.positions import position_limit


@dataclass(frozen=True)
class PrefixShape:
    """The geometry of a prefix for one backbone.

    Attributes:
        num_virtual_tokens: m, prefix length in tokens.
        num_layers: L, attention layers of the backbone (each receives its own keys and values).
        num_kv_heads: key/value heads per layer (fewer than query heads under grouped-query
            attention).
        head_dim: size of one attention head.
    """

    num_virtual_tokens: int
    num_layers: int
    num_kv_heads: int
    head_dim: int

    @property
    def kv_hidden(self) -> int:
        """Size of one layer's keys (or values) for one token: kv_heads · head_dim."""
        return self.num_kv_heads * self.head_dim

    @property
    def width(self) -> int:
        """Size of one prefix token's states over all layers: 2 · L · kv_heads · head_dim."""
        return 2 * self.num_layers * self.kv_hidden


def _config_int(config: Any, names: tuple[str, ...], what: str) -> int:
    """The first of ``names`` that ``config`` sets to an integer (HF names differ by family)."""
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    raise FedpktError(
        f"model config {type(config).__name__} has no {what} (looked for {', '.join(names)})"
    )


def prefix_shape_for(model_config: Any, num_virtual_tokens: int) -> PrefixShape:
    """The prefix geometry of a HF causal LM config (GPT-2's n_layer/n_head or Llama's names).

    Grouped-query attention: keys/values have ``num_key_value_heads`` heads; ``head_dim`` is the
    config's own when it sets one (Llama-style configs may decouple it from hidden/heads).
    """
    if not isinstance(num_virtual_tokens, int) or num_virtual_tokens < 1:
        raise FedpktError(
            f"num_virtual_tokens is {num_virtual_tokens!r}; expected an integer of at least 1"
        )
    if hasattr(model_config, "get_text_config"):
        model_config = model_config.get_text_config(decoder=True)
    layers = _config_int(model_config, ("num_hidden_layers", "n_layer", "num_layers"), "layers")
    heads = _config_int(model_config, ("num_attention_heads", "n_head", "num_heads"), "heads")
    hidden = _config_int(model_config, ("hidden_size", "n_embd", "d_model"), "hidden size")
    kv_heads = getattr(model_config, "num_key_value_heads", None) or heads
    head_dim = getattr(model_config, "head_dim", None) or hidden // heads
    return PrefixShape(num_virtual_tokens, layers, int(kv_heads), int(head_dim))


def peft_prefix_config(
    shape: PrefixShape, projection_hidden: int | None, base_model_name_or_path: str | None = None
) -> PrefixTuningConfig:
    """PEFT's config for this shape: reparameterised (k given) or inference form (k None)."""
    return PrefixTuningConfig(
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_model_name_or_path,
        num_virtual_tokens=shape.num_virtual_tokens,
        token_dim=shape.kv_hidden,
        num_layers=shape.num_layers,
        num_attention_heads=shape.num_kv_heads,
        num_transformer_submodules=1,
        encoder_hidden_size=projection_hidden if projection_hidden is not None else shape.kv_hidden,
        prefix_projection=projection_hidden is not None,
        inference_mode=projection_hidden is None,
    )


class PersonaPrefix(nn.Module):
    """A trainable persona prefix: PEFT's ``PrefixEncoder`` with Li & Liang's MLP.

    Parameters (names as in ``prefix_arrays``), with d = kv_hidden, k = projection_hidden:
    ``encoder.embedding.weight`` (m, d) is P'; ``encoder.transform.0`` Linear(d, k);
    ``encoder.transform.2`` Linear(k, width).

    Initialisation is a pure function of ``seed`` (the global RNG is left untouched): P' is
    N(0, init_std²), the MLP keeps PyTorch's default Linear init (as Li & Liang and PEFT do).
    """

    def __init__(
        self, shape: PrefixShape, projection_hidden: int, *, seed: int, init_std: float = 0.02
    ) -> None:
        super().__init__()
        if projection_hidden < 1:
            raise FedpktError(
                f"projection_hidden is {projection_hidden}; expected an integer of at least 1"
            )
        self.shape = shape
        self.projection_hidden = projection_hidden
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.encoder = PrefixEncoder(peft_prefix_config(shape, projection_hidden))
            nn.init.normal_(self.encoder.embedding.weight, mean=0.0, std=init_std)
        # Not persistent: the indices 0..m-1 are implied by the shape, not learned state.
        self.register_buffer("positions", torch.arange(shape.num_virtual_tokens), persistent=False)

    def forward(self, batch_size: int) -> Tensor:
        """Prefix states for ``batch_size`` rows: (batch, m, width), float32.

        The encoder runs on a (batch, m) index tensor, one copy per row, so that per-sample
        gradient hooks (opacus DP-SGD) see a batch dimension on every activation.
        """
        if batch_size < 1:
            raise FedpktError(f"batch_size is {batch_size}; expected at least 1")
        indices = self.positions.unsqueeze(0).expand(batch_size, -1)
        return self.encoder(indices)

    def fold(self) -> Tensor:
        """The stored prefix: the MLP evaluated once, (m, width), detached float32."""
        with torch.no_grad():
            return self.encoder(self.positions.unsqueeze(0))[0].detach().float().clone()


def prefix_arrays(module: nn.Module) -> dict[str, np.ndarray]:
    """A module's parameters as named float32 numpy arrays, in registration order.

    This is what phase 1 sends and receives: names are ``named_parameters`` names (stable for a
    given module class), arrays are copies so the caller may mutate them freely.
    """
    return {
        name: param.detach().to(torch.float32).cpu().numpy().copy()
        for name, param in module.named_parameters()
    }


def load_prefix_arrays(module: nn.Module, arrays: Mapping[str, np.ndarray]) -> None:
    """Copy ``arrays`` into ``module``'s parameters after validating every entry.

    All checks run before any parameter changes, so a rejected payload leaves the module intact.
    """
    params = dict(module.named_parameters())
    missing = [name for name in params if name not in arrays]
    if missing:
        raise FedpktError(f"prefix arrays lack key {missing[0]!r}; expected keys {list(params)}")
    unexpected = [name for name in arrays if name not in params]
    if unexpected:
        raise FedpktError(
            f"prefix arrays have unexpected key {unexpected[0]!r}; expected keys {list(params)}"
        )
    for name, param in params.items():
        array = arrays[name]
        if not isinstance(array, np.ndarray):
            raise FedpktError(
                f"prefix array {name!r} is a {type(array).__name__}; expected a numpy ndarray"
            )
        if array.dtype != np.float32:
            raise FedpktError(f"prefix array {name!r} has dtype {array.dtype}; expected float32")
        if tuple(array.shape) != tuple(param.shape):
            raise FedpktError(
                f"prefix array {name!r} has shape {tuple(array.shape)}; "
                f"expected {tuple(param.shape)}"
            )
        if not np.isfinite(array).all():
            raise FedpktError(f"prefix array {name!r} has non-finite values; expected finite")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(torch.from_numpy(np.ascontiguousarray(arrays[name])).to(param.device))


def _check_states(states: Tensor, shape: PrefixShape) -> None:
    expected = (shape.num_virtual_tokens, shape.width)
    if states.dim() != 3 or tuple(states.shape[1:]) != expected:
        raise FedpktError(
            f"prefix states have shape {tuple(states.shape)}; expected (batch, {expected[0]}, "
            f"{expected[1]})"
        )


def prefix_cache(states: Tensor, shape: PrefixShape) -> Cache:
    """Prefix states (batch, m, width) -> a DynamicCache holding m tokens for every layer.

    Each layer gets keys and values of shape (batch, kv_heads, m, head_dim), views into
    ``states`` so gradients flow back to the prefix. The cache is consumed (extended in place)
    by one forward pass: build a fresh one per call.
    """
    _check_states(states, shape)
    batch = states.shape[0]
    per_layer = states.view(
        batch, shape.num_virtual_tokens, 2 * shape.num_layers, shape.num_kv_heads, shape.head_dim
    ).permute(2, 0, 3, 1, 4)  # (2L, batch, kv_heads, m, head_dim)
    return DynamicCache([(per_layer[2 * i], per_layer[2 * i + 1]) for i in range(shape.num_layers)])


def prefix_attention_mask(attention_mask: Tensor, num_virtual_tokens: int) -> Tensor:
    """(batch, T) -> (batch, m + T): m ones in front, so every real token sees the prefix."""
    ones = attention_mask.new_ones(attention_mask.shape[0], num_virtual_tokens)
    return torch.cat([ones, attention_mask], dim=1)


def prefix_position_ids(attention_mask: Tensor, num_virtual_tokens: int) -> Tensor:
    """(batch, T) position ids counting real tokens from m (PEFT's convention, see module doc).

    Worked example, m = 2: mask [0, 0, 1, 1] -> [2, 2, 2, 3]; mask [1, 1, 1, 0] -> [2, 3, 4, 4].
    Padding positions get a valid, irrelevant id (they are masked as keys and carry no labels).
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0) + num_virtual_tokens


def _check_fits(model: nn.Module, length: int, m: int) -> None:
    """One line instead of an IndexError deep in the model when prefix + input overrun it."""
    limit = position_limit(model.config)
    if limit is not None and m + length > limit:
        raise FedpktError(
            f"input of {length} tokens behind a prefix of {m} needs {m + length} positions; the "
            f"backbone has {limit} (encode with max_length <= {limit - m}: input_budget)"
        )


def forward_with_prefix(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    states: Tensor | None,
    labels: Tensor | None = None,
) -> CausalLMOutputWithPast:
    """Run a HF causal LM on (batch, T) tokens, each row under its own prefix.

    ``states``: (batch, m, width), rows may carry different personas' prefixes; None runs the
    bare backbone (same position-id rule with m = 0). ``attention_mask`` (batch, T), right or left
    padding; it is extended by m ones. ``labels`` (batch, T) with -100 where no loss is taken;
    the model shifts them as usual. Returns the model's output (logits (batch, T, vocab)).
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise FedpktError(
            f"attention_mask has shape {tuple(attention_mask.shape)}; "
            f"expected input_ids' shape {tuple(input_ids.shape)}"
        )
    _check_fits(model, input_ids.shape[1], 0 if states is None else states.shape[-2])
    if states is None:
        return model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=prefix_position_ids(attention_mask, 0),
            labels=labels,
        )
    if model.training and any(getattr(m, "gradient_checkpointing", False) for m in model.modules()):
        # HF blocks drop the cache under gradient checkpointing: the prefix would be ignored.
        raise FedpktError(
            "gradient checkpointing is enabled on the backbone; expected it disabled "
            "(HF drops past key values under checkpointing, so the prefix would have no effect)"
        )
    shape = prefix_shape_for(model.config, states.shape[1] if states.dim() == 3 else 1)
    _check_states(states, shape)
    if states.shape[0] != input_ids.shape[0]:
        raise FedpktError(
            f"prefix states have batch {states.shape[0]}; expected input_ids' batch "
            f"{input_ids.shape[0]}"
        )
    dtype = getattr(model, "dtype", states.dtype)
    cache = prefix_cache(states.to(device=input_ids.device, dtype=dtype), shape)
    m = shape.num_virtual_tokens
    return model(
        input_ids=input_ids,
        attention_mask=prefix_attention_mask(attention_mask, m),
        position_ids=prefix_position_ids(attention_mask, m),
        cache=cache,
        labels=labels,
    )


def stored_params(shape: PrefixShape) -> int:
    """Parameters of the folded (stored) prefix: m · width."""
    return shape.num_virtual_tokens * shape.width


def trainable_params(shape: PrefixShape, projection_hidden: int) -> int:
    """Size of ``PersonaPrefix``: P' (m·d) + Linear(d, k) + Linear(k, width); d = kv_hidden."""
    d, k = shape.kv_hidden, projection_hidden
    return shape.num_virtual_tokens * d + (d * k + k) + (k * shape.width + shape.width)


def param_report(shape: PrefixShape, projection_hidden: int, backbone_params: int) -> dict:
    """Trainable and stored prefix sizes, absolute and as % of the frozen backbone.

    Keys: num_virtual_tokens, projection_hidden, backbone_params, trainable_params,
    stored_params, trainable_pct, stored_pct (percent, not fractions).
    """
    if backbone_params < 1:
        raise FedpktError(f"backbone_params is {backbone_params}; expected a positive count")
    trainable = trainable_params(shape, projection_hidden)
    stored = stored_params(shape)
    return {
        "num_virtual_tokens": shape.num_virtual_tokens,
        "projection_hidden": projection_hidden,
        "backbone_params": backbone_params,
        "trainable_params": trainable,
        "stored_params": stored,
        "trainable_pct": 100.0 * trainable / backbone_params,
        "stored_pct": 100.0 * stored / backbone_params,
    }
