"""An exported persona adapter in PEFT: load it and generate *with* its prefix.

``fedpkt export`` writes a standard PEFT prefix-tuning adapter (``fedpkt.model.export``), and
PEFT's forward pass reproduces fedpkt's exactly. PEFT's ``generate`` does not, with the versions
fedpkt installs (transformers 5.24, PEFT 0.21): it runs the bare backbone. Why:

- transformers 5.24 renamed the cache argument of ``forward`` and
  ``prepare_inputs_for_generation`` from ``past_key_values`` to ``cache`` (the old name still
  works through ``deprecate_kwarg``). ``generate`` keeps the cache in ``model_kwargs["cache"]``:
  an empty ``DynamicCache`` it makes before the first step.
- PEFT 0.21's ``PeftModelForCausalLM.prepare_inputs_for_generation`` looks for the cache under
  ``past_key_values``, finds none, and so at *every* step builds the prefix (``get_prompt``) and
  puts it under ``past_key_values``, beside the ``cache`` that the base model's
  ``prepare_inputs_for_generation`` returned.
- The forward gets both names. ``deprecate_kwarg`` keeps ``cache`` (empty at the first step,
  then the growing prompt cache) and drops ``past_key_values`` with a FutureWarning ("Both
  `past_key_values` and `cache` are set ... ignoring deprecated `past_key_values`"). The prefix
  never reaches attention; only PEFT's m-shifted position ids and mask do.

The fix (``prefix_generation``), for the length of one ``generate`` call: the base model's
inputs reach PEFT with the cache under the name PEFT reads (``cache`` -> ``past_key_values``),
and PEFT's inputs reach the model under the name the model reads (``past_key_values`` ->
``cache``). PEFT then injects the prefix once, into the empty cache of the first step, and later
steps extend that cache. Everything else is PEFT's own: m ones in front of the attention mask,
position ids + m (fedpkt's convention, ``fedpkt.model.prefix``), one prefix per beam.

    model = load_adapter(backbone_model, "my_adapter")   # PeftModel.from_pretrained + the fix
    model.generate(**inputs, generation_config=reply_generation_config(tokenizer))

or, for a ``PeftModel`` loaded elsewhere, ``generate_with_prefix(peft_model, **inputs, ...)``.

An exported soft prompt (``fedpkt.peft.prompt``) meets the same mismatch: PEFT decides whether
to prepend the prompt embeddings by looking for ``past_key_values``, finds none at every step,
and so feeds the prompt again each time. The same renaming fixes it, so ``load_adapter`` takes
either kind of adapter. For prompt tuning PEFT drops position ids, so its replies are fedpkt's
for unpadded prompts (one prompt per call); left padding shifts its positions.
``tests/test_adapter.py`` trains a prefix on the embedded default backbone, exports it and checks
that this path gives ``generate_replies``' replies (greedy and beam 5, one prompt and a
left-padded batch) with warnings as errors.
"""

from __future__ import annotations

import inspect
import os
import types
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from peft import PeftModel, PeftType
from torch import nn

from fedpkt.errors import FedpktError

# transformers' name for the cache since 5.24, and PEFT 0.21's (the pre-5.24 name).
CACHE_KEY = "cache"
PEFT_CACHE_KEY = "past_key_values"


def _renamed(inputs: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    if old in inputs:
        inputs[new] = inputs.pop(old)
    return inputs


def _check_prefix_adapter(peft_model: Any) -> None:
    config = getattr(peft_model, "active_peft_config", None)
    if not isinstance(peft_model, PeftModel) or config is None:
        raise FedpktError(
            f"expected a PeftModel holding a prefix-tuning adapter; got {type(peft_model).__name__}"
        )
    if not config.is_prompt_learning:  # prefix or prompt tuning: what `fedpkt export` writes
        raise FedpktError(
            f"adapter is {config.peft_type}; expected a prompt-learning adapter such as "
            f"{PeftType.PREFIX_TUNING} or {PeftType.PROMPT_TUNING} (what `fedpkt export` writes)"
        )


def _model_names_cache_cache(base_model: nn.Module) -> bool:
    """True when the backbone's ``prepare_inputs_for_generation`` takes ``cache`` (5.24+)."""
    prepare = type(base_model).prepare_inputs_for_generation
    return CACHE_KEY in inspect.signature(prepare).parameters


@contextmanager
def prefix_generation(peft_model: PeftModel) -> Iterator[PeftModel]:
    """Within the block, ``peft_model.generate`` generates under the adapter's prefix.

    Renames the cache between the base model's and PEFT's ``prepare_inputs_for_generation``
    (module docstring); restores both methods on exit. A no-op on a transformers that still
    names the cache ``past_key_values``.
    """
    _check_prefix_adapter(peft_model)
    base_model = peft_model.base_model
    if not _model_names_cache_cache(base_model):
        yield peft_model
        return
    base_prepare = peft_model.base_model_prepare_inputs_for_generation
    peft_prepare = peft_model.prepare_inputs_for_generation

    def base_prepare_for_peft(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return _renamed(base_prepare(*args, **kwargs), CACHE_KEY, PEFT_CACHE_KEY)

    # Named ``kwargs``: generate validates its arguments against this signature.
    def prepare(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return _renamed(peft_prepare(*args, **kwargs), PEFT_CACHE_KEY, CACHE_KEY)

    peft_model.base_model_prepare_inputs_for_generation = base_prepare_for_peft
    peft_model.prepare_inputs_for_generation = prepare
    try:
        yield peft_model
    finally:
        peft_model.base_model_prepare_inputs_for_generation = base_prepare
        del peft_model.prepare_inputs_for_generation
        # PEFT's generate leaves its saved base method on the base model: the original, again.
        base_model.prepare_inputs_for_generation = base_prepare


def generate_with_prefix(peft_model: PeftModel, *args: Any, **kwargs: Any) -> Any:
    """``peft_model.generate(*args, **kwargs)`` under the adapter's prefix (any HF arguments:
    ``input_ids``, a left-padded ``attention_mask``, ``num_beams``, ``generation_config``)."""
    with prefix_generation(peft_model):
        return type(peft_model).generate(peft_model, *args, **kwargs)


def load_adapter(model: nn.Module, adapter_dir: str | os.PathLike[str]) -> PeftModel:
    """``PeftModel.from_pretrained(model, adapter_dir)`` whose ``generate`` keeps the prefix.

    The returned model's ``generate`` is ``generate_with_prefix``; everything else is PEFT's.
    PEFT 0.21 reads transformers' deprecated ``is_gradient_checkpointing`` while loading; that
    one FutureWarning is silenced here, where fedpkt knows it is harmless.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
        )
        peft_model = PeftModel.from_pretrained(model, os.fspath(adapter_dir))
    _check_prefix_adapter(peft_model)
    peft_model.generate = types.MethodType(generate_with_prefix, peft_model)
    return peft_model
