"""Prefix tuning (Li & Liang) behind the ``PeftMethod`` seam: ``fedpkt.model.prefix`` unchanged.

The trainable module is ``PersonaPrefix`` (PEFT's ``PrefixEncoder`` with the reparameterisation
MLP); states are m virtual tokens of keys and values for every layer, width 2 · L · kv_heads ·
head_dim; the stored form is the MLP folded once; export is PEFT's ``PrefixTuningConfig`` in
inference mode. Config: ``[prefix] num_virtual_tokens``, ``projection_hidden``, ``init_std``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from peft import PrefixTuningConfig
from torch import Tensor, nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from fedpkt.config import PrefixConfig
from fedpkt.errors import FedpktError
from fedpkt.model.prefix import (
    PersonaPrefix,
    forward_with_prefix,
    load_prefix_arrays,
    peft_prefix_config,
    prefix_attention_mask,
    prefix_cache,
    prefix_position_ids,
    prefix_shape_for,
    trainable_params,
)
from fedpkt.peft.method import PeftMethod, register


class PrefixTuning(PeftMethod):
    """Per-persona prefix tuning: states are key/value prefixes handed to the model as a cache."""

    name = "prefix"
    label = "Prefix-tuning"
    module_type = PersonaPrefix

    def build(self, model_config: Any, settings: PrefixConfig, *, seed: int) -> nn.Module:
        shape = prefix_shape_for(model_config, settings.num_virtual_tokens)
        return PersonaPrefix(
            shape, settings.projection_hidden, seed=seed, init_std=settings.init_std
        )

    def width(self, model_config: Any) -> int:
        return prefix_shape_for(model_config, 1).width

    def trainable_params(self, model_config: Any, settings: PrefixConfig) -> int:
        shape = prefix_shape_for(model_config, settings.num_virtual_tokens)
        return trainable_params(shape, settings.projection_hidden)

    def fold(self, module: nn.Module) -> Tensor:
        return module.fold()

    def fold_arrays(self, model_config: Any, arrays: Mapping[str, np.ndarray]) -> Tensor:
        """m and the MLP size k are read from ``encoder.embedding.weight`` (m, d) and
        ``encoder.transform.0.weight`` (k, d)."""
        try:
            m = int(arrays["encoder.embedding.weight"].shape[0])
            k = int(arrays["encoder.transform.0.weight"].shape[0])
        except KeyError as exc:
            raise FedpktError(
                f"prefix arrays lack {exc.args[0]!r}; expected PersonaPrefix arrays"
            ) from exc
        module = PersonaPrefix(prefix_shape_for(model_config, m), k, seed=0)
        load_prefix_arrays(module, arrays)
        return module.fold()

    def forward(
        self,
        model: nn.Module,
        input_ids: Tensor,
        attention_mask: Tensor,
        states: Tensor,
        labels: Tensor | None = None,
    ) -> CausalLMOutputWithPast:
        return forward_with_prefix(model, input_ids, attention_mask, states, labels)

    def generation_inputs(
        self,
        model: nn.Module,
        input_ids: Tensor,
        attention_mask: Tensor,
        states: Tensor,
        num_beams: int,
    ) -> dict[str, Any]:
        """A pre-filled cache of m tokens per row (``fedpkt.model.generate``'s module doc).

        ``generate`` expands every tensor argument to rows · num_beams but not a user cache,
        so the states are repeated the same way first (row i's beams at i·num_beams ..); the
        mask covers prefix + prompt, so ``generate`` feeds the whole prompt at the first step;
        positions count real tokens from m.
        """
        m = states.shape[1]
        shape = prefix_shape_for(model.config, m)
        beams = states.repeat_interleave(num_beams, 0)
        return {
            "input_ids": input_ids,
            "attention_mask": prefix_attention_mask(attention_mask, m),
            "position_ids": prefix_position_ids(attention_mask, m),
            "cache": prefix_cache(beams.contiguous(), shape),
        }

    def peft_config(
        self, model_config: Any, num_virtual_tokens: int, base_model_name_or_path: str | None
    ) -> PrefixTuningConfig:
        shape = prefix_shape_for(model_config, num_virtual_tokens)
        return peft_prefix_config(shape, None, base_model_name_or_path)


PREFIX = register(PrefixTuning())
