"""A folded persona prefix (or any ``fedpkt.peft`` method's stored states) as a standard PEFT
adapter directory.

``export_method_adapter`` takes the method's own PEFT config (``PeftMethod.peft_config``); every
prompt-learning method PEFT has saves and loads its states as ``prompt_embeddings``, so the rest
below holds for all of them. For prefix tuning:

The stored prefix is already PEFT's inference form (``prefix_projection=False``: the (m, width)
key/value states are the prompt embedding itself), so export is a change of container, not of
numbers: ``adapter_config.json`` from PEFT's own ``PrefixTuningConfig`` and
``adapter_model.safetensors`` holding one tensor, ``prompt_embeddings`` (m, width), the key PEFT's
prompt encoders save and load. Anyone can then run
``PeftModel.from_pretrained(backbone, out_dir)`` without fedpkt.

Both files are written atomically; the weights go first, so a directory whose config exists
always has its weights.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from peft import PeftConfig
from peft.utils import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME
from safetensors.torch import save as safetensors_save
from torch import Tensor

from fedpkt.atomic import atomic_write_bytes, atomic_write_json
from fedpkt.errors import FedpktError
from fedpkt.model.prefix import PrefixShape, peft_prefix_config
from fedpkt.peft import PeftMethod

PROMPT_EMBEDDINGS_KEY = "prompt_embeddings"


def export_peft_adapter(
    folded: Tensor,
    shape: PrefixShape,
    base_model_name_or_path: str,
    out_dir: str | os.PathLike[str],
) -> Path:
    """Write ``folded`` (m, width) as a PEFT prefix-tuning adapter into ``out_dir``; returns it.

    ``base_model_name_or_path`` is recorded in the config for the reader's benefit (PEFT uses the
    model it is handed, not this string). Rejects wrong shapes and non-finite values.
    """
    expected = (shape.num_virtual_tokens, shape.width)
    if folded.dim() != 2 or tuple(folded.shape) != expected:
        raise FedpktError(f"folded prefix has shape {tuple(folded.shape)}; expected {expected}")
    return _write(folded, peft_prefix_config(shape, None, base_model_name_or_path), out_dir)


def export_method_adapter(
    folded: Tensor,
    method: PeftMethod,
    model_config: Any,
    base_model_name_or_path: str,
    out_dir: str | os.PathLike[str],
) -> Path:
    """Write ``folded`` (m, width), the stored form of any ``fedpkt.peft`` method, as that
    method's PEFT adapter (``PeftMethod.peft_config``) into ``out_dir``; returns it."""
    method.check_folded(folded, model_config, "folded states")
    config = method.peft_config(model_config, int(folded.shape[0]), base_model_name_or_path)
    return _write(folded, config, out_dir)


def _write(folded: Tensor, peft_config: PeftConfig, out_dir: str | os.PathLike[str]) -> Path:
    """``prompt_embeddings`` = ``folded`` and the config, atomically, weights first."""
    if not torch.isfinite(folded).all():
        raise FedpktError("folded prefix has non-finite values; expected finite")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FedpktError(f"export directory {str(out)!r} is a file; expected a directory")

    weights = folded.detach().to(device="cpu", dtype=torch.float32).contiguous()
    blob = safetensors_save({PROMPT_EMBEDDINGS_KEY: weights}, metadata={"format": "pt"})
    atomic_write_bytes(out / SAFETENSORS_WEIGHTS_NAME, blob)

    config = peft_config.to_dict()
    config = {key: list(val) if isinstance(val, set) else val for key, val in config.items()}
    atomic_write_json(out / CONFIG_NAME, config)
    return out
