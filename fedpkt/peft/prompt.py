"""Prompt tuning (Lester et al., 2021): m trainable vectors in front of the input embeddings.

A persona's soft prompt is an (m, hidden) matrix, hidden = the backbone's embedding size. It is
trained directly (no reparameterisation), so the stored form is the matrix itself and phase 1
sends exactly what phase 2 stores. The trainable module is PEFT's own ``PromptEmbedding`` built
from a ``PromptTuningConfig``, so export is a change of container (``fedpkt.model.export``) and
``PeftModel.from_pretrained`` reproduces fedpkt's logits.

Running the backbone (training, evaluation, generation):

- Row i's input embeddings are ``cat(states[i], embed(input_ids[i]))``: (batch, m + T, hidden);
  the attention mask gets m ones in front, as PEFT does.
- Position ids follow fedpkt's rule for every method (``fedpkt.model.prefix``): the prompt takes
  0..m-1 and real tokens count from m, so left padding does not shift them. For unpadded rows
  this is PEFT's default (it drops position ids and the model counts 0..m+T-1).
- Logits are returned for the T real positions only, so losses and metrics see the same
  (batch, T, vocab) as under prefix tuning.
- Generation hands ``generate`` the embeddings plus ``input_ids`` with m placeholder ids (the
  pad id) in front, the same length as the embeddings: ``generate`` appends each new token
  behind them and the caller's slice after the prompt stays valid.

Config: ``[prefix] method = "prompt"``, ``num_virtual_tokens`` (m) and ``init_std`` (the prompt
is N(0, init_std²), seeded); ``projection_hidden`` belongs to prefix tuning and is not used.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from peft import PromptTuningConfig
from peft.tuners.prompt_tuning import PromptEmbedding
from torch import Tensor, nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from fedpkt.config import PrefixConfig
from fedpkt.data.encoding import IGNORE_INDEX
from fedpkt.errors import FedpktError
from fedpkt.model.positions import position_limit
from fedpkt.model.prefix import prefix_attention_mask, prefix_position_ids
from fedpkt.peft.method import PeftMethod, register


def embedding_size(model_config: Any) -> int:
    """The backbone's input embedding size (GPT-2's n_embd or Llama's hidden_size)."""
    if hasattr(model_config, "get_text_config"):
        model_config = model_config.get_text_config(decoder=True)
    for name in ("hidden_size", "n_embd", "d_model"):
        value = getattr(model_config, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    raise FedpktError(
        f"model config {type(model_config).__name__} has no hidden size "
        "(looked for hidden_size, n_embd, d_model)"
    )


def peft_prompt_config(
    model_config: Any, num_virtual_tokens: int, base_model_name_or_path: str | None = None
) -> PromptTuningConfig:
    """PEFT's config for an (m, hidden) soft prompt of this backbone (random init form)."""
    text = model_config
    if hasattr(text, "get_text_config"):
        text = text.get_text_config(decoder=True)
    return PromptTuningConfig(
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_model_name_or_path,
        num_virtual_tokens=num_virtual_tokens,
        token_dim=embedding_size(model_config),
        num_transformer_submodules=1,
        num_attention_heads=getattr(text, "num_attention_heads", None),
        num_layers=getattr(text, "num_hidden_layers", None),
        prompt_tuning_init="RANDOM",
    )


class SoftPrompt(nn.Module):
    """A trainable soft prompt: PEFT's ``PromptEmbedding``, m rows of the embedding size.

    Parameter ``encoder.embedding.weight`` (m, hidden), N(0, init_std²) from ``seed`` (the
    global RNG is left untouched). Calling it with a batch size gives (batch, m, hidden).

    >>> from transformers import GPT2Config
    >>> prompt = SoftPrompt(peft_prompt_config(GPT2Config(n_embd=16), 4), seed=0)
    >>> tuple(prompt(3).shape)
    (3, 4, 16)
    """

    def __init__(self, config: PromptTuningConfig, *, seed: int, init_std: float = 0.02) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.encoder = PromptEmbedding(config, None)
            nn.init.normal_(self.encoder.embedding.weight, mean=0.0, std=init_std)
        self.register_buffer("positions", torch.arange(config.num_virtual_tokens), persistent=False)

    def forward(self, batch_size: int) -> Tensor:
        """(batch, m, hidden): one copy per row, through the embedding (opacus sees a batch)."""
        if batch_size < 1:
            raise FedpktError(f"batch_size is {batch_size}; expected at least 1")
        return self.encoder(self.positions.unsqueeze(0).expand(batch_size, -1))

    def fold(self) -> Tensor:
        """The stored prompt: (m, hidden), detached float32."""
        with torch.no_grad():
            return self.encoder(self.positions.unsqueeze(0))[0].detach().float().clone()


def _prompted(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, states: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """(inputs_embeds, attention_mask, position_ids), each m columns longer than input_ids."""
    width = embedding_size(model.config)
    if states.dim() != 3 or states.shape[2] != width or states.shape[0] != input_ids.shape[0]:
        raise FedpktError(
            f"soft prompt states have shape {tuple(states.shape)}; expected "
            f"({input_ids.shape[0]}, m, {width})"
        )
    m = states.shape[1]
    limit = position_limit(model.config)
    if limit is not None and m + input_ids.shape[1] > limit:
        raise FedpktError(
            f"input of {input_ids.shape[1]} tokens behind a soft prompt of {m} needs "
            f"{m + input_ids.shape[1]} positions; the backbone has {limit} (encode with "
            f"max_length <= {limit - m}: input_budget)"
        )
    embeds = model.get_input_embeddings()(input_ids)
    prompt = states.to(device=embeds.device, dtype=embeds.dtype)
    mask = prefix_attention_mask(attention_mask, m)
    return torch.cat([prompt, embeds], dim=1), mask, prefix_position_ids(mask, 0)


class PromptTuning(PeftMethod):
    """Per-persona prompt tuning: states are input embeddings in front of every row."""

    name = "prompt"
    label = "Prompt-tuning"
    module_type = SoftPrompt

    def build(self, model_config: Any, settings: PrefixConfig, *, seed: int) -> nn.Module:
        config = peft_prompt_config(model_config, settings.num_virtual_tokens)
        return SoftPrompt(config, seed=seed, init_std=settings.init_std)

    def width(self, model_config: Any) -> int:
        return embedding_size(model_config)

    def fold(self, module: nn.Module) -> Tensor:
        return module.fold()

    def fold_arrays(self, model_config: Any, arrays: Mapping[str, np.ndarray]) -> Tensor:
        """The prompt is its own stored form: ``encoder.embedding.weight`` (m, hidden)."""
        try:
            m = int(arrays["encoder.embedding.weight"].shape[0])
        except KeyError as exc:
            raise FedpktError(
                f"soft prompt arrays lack {exc.args[0]!r}; expected SoftPrompt arrays"
            ) from exc
        module = SoftPrompt(peft_prompt_config(model_config, m), seed=0)
        self.load_arrays(module, arrays)
        return module.fold()

    def forward(
        self,
        model: nn.Module,
        input_ids: Tensor,
        attention_mask: Tensor,
        states: Tensor,
        labels: Tensor | None = None,
    ) -> CausalLMOutputWithPast:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        embeds, mask, positions = _prompted(model, input_ids, attention_mask, states)
        m = states.shape[1]
        if labels is not None:
            labels = torch.cat([labels.new_full((labels.shape[0], m), IGNORE_INDEX), labels], 1)
        output = model(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions, labels=labels
        )
        output.logits = output.logits[:, m:]
        return output

    def generation_inputs(
        self,
        model: nn.Module,
        input_ids: Tensor,
        attention_mask: Tensor,
        states: Tensor,
        num_beams: int,
    ) -> dict[str, Any]:
        """Embeddings, mask and positions m columns longer; ``generate`` repeats them per beam."""
        embeds, mask, positions = _prompted(model, input_ids, attention_mask, states)
        pad = getattr(model.generation_config, "pad_token_id", None)
        if pad is None:
            pad = model.config.eos_token_id if model.config.eos_token_id is not None else 0
        if isinstance(pad, list):
            pad = pad[0]
        placeholders = input_ids.new_full((input_ids.shape[0], states.shape[1]), int(pad))
        return {
            "input_ids": torch.cat([placeholders, input_ids], dim=1),
            "inputs_embeds": embeds,
            "attention_mask": mask,
            "position_ids": positions,
        }

    def peft_config(
        self, model_config: Any, num_virtual_tokens: int, base_model_name_or_path: str | None
    ) -> PromptTuningConfig:
        config = peft_prompt_config(model_config, num_virtual_tokens, base_model_name_or_path)
        config.inference_mode = True
        return config


PROMPT = register(PromptTuning())
