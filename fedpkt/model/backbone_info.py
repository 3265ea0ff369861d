"""What the server may know of a backbone without loading it: its config and parameter count.

The phase-1 server needs the prefix shape (from the config) and the report needs the backbone's
size (for "stored parameters per persona, % of the backbone"); neither justifies holding the
weights in server memory, which for gpt2-medium would be 1.4 GB for nothing.
"""

from __future__ import annotations

import functools
import json
import struct
from pathlib import Path

from transformers import AutoConfig, PretrainedConfig

from fedpkt.errors import FedpktError
from fedpkt.model.backbone import backbone_path, weight_files
from fedpkt.model.embedded import DEFAULT_CORPUS


def backbone_config(
    name: str, *, embedded_size: str = "default", embedded_recipe: str = DEFAULT_CORPUS
) -> PretrainedConfig:
    """The model config of backbone ``name`` (building the embedded one if needed)."""
    path = backbone_path(name, embedded_size=embedded_size, embedded_recipe=embedded_recipe)
    return AutoConfig.from_pretrained(path)


def _safetensors_numel(path: Path) -> int:
    """Parameter count of one safetensors file, read from its JSON header only."""
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    total = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        count = 1
        for dim in entry["shape"]:
            count *= int(dim)
        total += count
    return total


@functools.lru_cache(maxsize=8)
def _count(path: str) -> int:
    files = [f for f in weight_files(path) if f.suffix == ".safetensors"]
    if not files:
        raise FedpktError(f"backbone '{path}' has no safetensors weights to count parameters of")
    return sum(_safetensors_numel(f) for f in files)


def backbone_num_params(
    name: str, *, embedded_size: str = "default", embedded_recipe: str = DEFAULT_CORPUS
) -> int:
    """Number of stored backbone parameters (tied embeddings counted once, as stored)."""
    path = backbone_path(name, embedded_size=embedded_size, embedded_recipe=embedded_recipe)
    return _count(str(path))
