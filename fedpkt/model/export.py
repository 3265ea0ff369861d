"""A folded persona prefix as a standard PEFT prefix-tuning adapter directory.

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

import torch
from peft.utils import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME
from safetensors.torch import save as safetensors_save
from torch import Tensor

from fedpkt.atomic import atomic_write_bytes, atomic_write_json
from fedpkt.errors import FedpktError
from fedpkt.model.prefix import PrefixShape, peft_prefix_config

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
    if not torch.isfinite(folded).all():
        raise FedpktError("folded prefix has non-finite values; expected finite")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FedpktError(f"export directory {str(out)!r} is a file; expected a directory")

    weights = folded.detach().to(device="cpu", dtype=torch.float32).contiguous()
    blob = safetensors_save({PROMPT_EMBEDDINGS_KEY: weights}, metadata={"format": "pt"})
    atomic_write_bytes(out / SAFETENSORS_WEIGHTS_NAME, blob)

    config = peft_prefix_config(shape, None, base_model_name_or_path).to_dict()
    config = {key: list(val) if isinstance(val, set) else val for key, val in config.items()}
    atomic_write_json(out / CONFIG_NAME, config)
    return out
