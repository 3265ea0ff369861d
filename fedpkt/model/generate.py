"""Beam-search replies under persona prefixes, many personas in one batch.

HF ``generate`` does the search (beam search with length penalty and n-gram blocking, or greedy
with ``num_beams=1``); what fedpkt adds is how a *different* prefix per row gets in. That is the
PEFT method's ``generation_inputs`` (``fedpkt.peft``); for prefix tuning, the default:

- The prefix is handed to ``generate`` as a pre-filled cache (``prefix_cache``): m tokens of
  keys/values per layer, one row per prompt. ``generate`` expands every tensor argument to
  ``batch · num_beams`` rows itself (``repeat_interleave``) but not a user cache, so the states
  are repeated the same way *before* the cache is built: row i's beams sit at rows
  ``i·num_beams .. i·num_beams + num_beams - 1``, exactly where ``generate`` puts row i's
  prompt, and beam reordering then moves cache rows along with their beams.
- The attention mask given to ``generate`` covers prefix + prompt (m ones in front). Because it
  is longer than ``input_ids`` by the cache length, ``generate`` feeds the whole prompt at the
  first step (it only slices inputs when mask and ids are the same length).
- Position ids are ``prefix_position_ids`` (the prefix takes 0..m-1, real tokens count from m,
  left padding does not shift them), the same rule as ``forward_with_prefix`` in training, so a
  row generates the same text whether batched with others or alone. ``generate`` extends them
  by one per new token.

Prompt tuning (``fedpkt.peft.prompt``) hands over input embeddings instead, m columns longer
than the prompt, with m placeholder ids in front of ``input_ids`` so that the reply still starts
after the last column of ``input_ids``.

A reply is one line: generation stops at EOS or at any token whose text contains a newline, and
the decoded text is cut at its first newline and stripped.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from transformers import GenerationConfig

from fedpkt.config import DataConfig
from fedpkt.config import GenerationConfig as GenerationSettings
from fedpkt.data.encoding import encode_prompts, pad_token_id
from fedpkt.errors import FedpktError
from fedpkt.model.backbone import Backbone
from fedpkt.model.positions import input_budget
from fedpkt.model.prefix import prefix_position_ids
from fedpkt.peft import PeftMethod, get_method

DEFAULT_MAX_LENGTH: int = DataConfig.model_fields["max_length"].default
"""Tokens of prompt + reply when no run says (``data.max_length``'s default)."""

_STOP_IDS: weakref.WeakKeyDictionary[Any, tuple[int, ...]] = weakref.WeakKeyDictionary()


def stop_token_ids(tokenizer: Any) -> tuple[int, ...]:
    """EOS and every vocabulary token whose text contains a newline (sorted, EOS included).

    Computed once per tokenizer object: decoding the whole vocabulary is cheap but not free.
    """
    cached = _STOP_IDS.get(tokenizer)
    if cached is not None:
        return cached
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise FedpktError(
            f"tokenizer {type(tokenizer).__name__} has no eos_token_id; expected one to end replies"
        )
    size = len(tokenizer)
    texts = tokenizer.batch_decode([[i] for i in range(size)], skip_special_tokens=False)
    ids = tuple(sorted({int(eos), *(i for i, text in enumerate(texts) if "\n" in text)}))
    _STOP_IDS[tokenizer] = ids
    return ids


def _model_of(backbone_or_model: Backbone | nn.Module) -> nn.Module:
    """The causal LM of a ``Backbone``, or the model itself."""
    if isinstance(backbone_or_model, Backbone):
        return backbone_or_model.model
    if isinstance(backbone_or_model, nn.Module):
        return backbone_or_model
    raise FedpktError(
        f"generate_replies got a {type(backbone_or_model).__name__}; expected a Backbone or a "
        "Hugging Face causal LM"
    )


def _row_states(states: Tensor | None, rows: int) -> Tensor | None:
    """Validate ``states``: (rows, m, width), or one prefix (m, width) shared by every row."""
    if states is None:
        return None
    if states.dim() == 2:
        return states.unsqueeze(0).expand(rows, -1, -1)
    if states.dim() != 3 or states.shape[0] != rows:
        raise FedpktError(
            f"prefix states have shape {tuple(states.shape)}; expected ({rows}, m, width), one "
            "row per prompt, or (m, width)"
        )
    return states


def reply_generation_config(
    tokenizer: Any, generation: GenerationSettings | None = None
) -> GenerationConfig:
    """The search fedpkt's replies use: deterministic beam search (greedy at ``num_beams=1``)
    under a run's ``[generation]`` section (None: its defaults, the one place they live), that
    stops at EOS or at any token containing a newline (``stop_token_ids``).

    ``generate_replies`` runs with it; pass it to any HF ``generate`` (an exported adapter's
    included, ``fedpkt.model.adapter``) to get the same replies.
    """
    generation = generation or GenerationSettings()
    return GenerationConfig(
        do_sample=False,
        num_beams=generation.num_beams,
        max_new_tokens=generation.max_new_tokens,
        length_penalty=generation.length_penalty,
        no_repeat_ngram_size=generation.no_repeat_ngram_size,
        eos_token_id=list(stop_token_ids(tokenizer)),
        pad_token_id=pad_token_id(tokenizer),
    )


def first_line(text: str) -> str:
    """The reply proper: text up to its first newline, stripped."""
    return text.split("\n", 1)[0].strip()


def generate_replies(
    backbone_or_model: Backbone | nn.Module,
    tokenizer: Any,
    states: Tensor | None,
    prompts: Sequence[str],
    generation: GenerationSettings | None = None,
    *,
    max_length: int = DEFAULT_MAX_LENGTH,
    batch_size: int = 16,
    method: PeftMethod | None = None,
) -> list[str]:
    """One reply per prompt, row i conditioned on prefix ``states[i]``, decoded under
    ``generation`` (a run's ``[generation]`` section; None: its defaults), so that every caller
    (phase 2, baselines, ``fedpkt chat``) honours every decoding setting.

    ``method`` is the PEFT method of ``states`` (default: prefix tuning); it says how they get
    into ``generate`` (``PeftMethod.generation_inputs``).

    ``states``: (n, m, width) with n = len(prompts) (rows may be different personas), one
    prefix (m, width) for all prompts, or None for the bare model. ``prompts`` are rendered
    histories (``render_history``), each cut to its last ``max_length`` tokens. Deterministic:
    beam search (greedy when ``num_beams=1``), no sampling. Runs without gradients with the model
    in eval mode (its previous mode is restored). Returns stripped one-line replies. Raises
    FedpktError for a ``batch_size`` below 1.
    """
    model = _model_of(backbone_or_model)
    if not prompts:
        return []
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise FedpktError(f"batch_size is {batch_size!r}; expected an integer >= 1")
    config = reply_generation_config(tokenizer, generation)
    row_states = _row_states(states, len(prompts))
    m = 0 if row_states is None else row_states.shape[1]
    peft = method or get_method()
    budget = input_budget(model.config, max_length, m, config.max_new_tokens)
    device = next(model.parameters()).device
    # Prompts of similar length share a call (less left padding); replies return in order.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    replies: list[str] = [""] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(prompts), batch_size):
            indices = order[start : start + batch_size]
            chunk = [prompts[i] for i in indices]
            encoded = encode_prompts(chunk, tokenizer, budget)
            input_ids = encoded["input_ids"].to(device)
            mask = encoded["attention_mask"].to(device)
            kwargs: dict[str, Any] = {
                "input_ids": input_ids,
                "attention_mask": mask,
                "position_ids": prefix_position_ids(mask, 0),
            }
            with torch.no_grad():
                if row_states is not None:
                    rows = row_states[indices].detach()
                    rows = rows.to(device=device, dtype=model.dtype)
                    kwargs = peft.generation_inputs(model, input_ids, mask, rows, config.num_beams)
                output = model.generate(generation_config=config, **kwargs)
            new_tokens = output[:, kwargs["input_ids"].shape[1] :]
            texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            for i, text in zip(indices, texts, strict=True):
                replies[i] = first_line(text)
    finally:
        model.train(was_training)
    return replies
