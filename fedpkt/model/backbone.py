"""Loading the frozen backbone: the embedded one, a local directory or a hub id, one code path.

Every name is first turned into a local Hugging Face directory (the embedded backbone is built
into the cache, a hub id is downloaded into the hub cache), then loaded with
``AutoModelForCausalLM`` / ``AutoTokenizer``. The model is frozen and in eval mode: PersonaPKT
trains only prefixes. Each (directory, device, dtype) is loaded once per process and shared,
because Ray workers and Flower clients in one process all ask for the same backbone.

The fingerprint hashes config.json and the weight files' bytes. Encrypted prefixes record it,
so a prefix is never silently applied to a different backbone than the one it was trained on.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

from fedpkt.config import BackboneConfig
from fedpkt.errors import FedpktError
from fedpkt.model.embedded import DEFAULT_CORPUS, ensure_embedded, quiet_hf_progress

EMBEDDED = "embedded"
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json")
LEGACY_WEIGHT_PATTERNS = ("*.bin", "*.bin.index.json")
_HUB_FILES = ["*.json", "*.txt", "*.model", "*.tiktoken", "*.safetensors"]


@dataclass
class Backbone:
    """A loaded, frozen causal LM and its tokenizer.

    ``tokenizer.padding_side`` is ``"right"`` (training and scoring batches); code that batches
    prompts for generation should pass ``padding_side="left"`` to the tokenizer call rather than
    change the attribute, because the tokenizer is shared by everyone in the process. The pad
    token may equal EOS (GPT-2 and the embedded backbone): mask with ``attention_mask``, never
    by comparing ids with ``pad_token_id``.

    ``fingerprint``: 16 hex digits of sha256 over config.json and the weight files;
    ``num_params``: parameter count (tied embeddings counted once); ``name``: what was asked
    for ("embedded", a directory, a hub id); ``path``: the local directory actually loaded.
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    fingerprint: str
    num_params: int
    name: str
    path: Path
    device: torch.device

    @property
    def text_config(self) -> PretrainedConfig:
        """The decoder's config (multimodal configs nest it; plain LMs are their own)."""
        return self.model.config.get_text_config()

    @property
    def num_layers(self) -> int:
        """L: transformer blocks, each of which receives its own prefix keys and values."""
        return int(self.text_config.num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        """d: width of the residual stream."""
        return int(self.text_config.hidden_size)

    @property
    def num_heads(self) -> int:
        """Query heads per layer."""
        return int(self.text_config.num_attention_heads)

    @property
    def num_kv_heads(self) -> int:
        """Key/value heads per layer (fewer than query heads under grouped-query attention)."""
        return int(getattr(self.text_config, "num_key_value_heads", None) or self.num_heads)

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        explicit = getattr(self.text_config, "head_dim", None)
        return int(explicit or self.hidden_size // self.num_heads)


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' -> cuda if available else cpu; 'cpu', 'cuda' and 'cuda:N' are checked to exist."""
    text = device.strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(text)
    except (RuntimeError, ValueError):
        raise FedpktError(
            f"device '{device}' is not a device; expected auto, cpu, cuda or cuda:N"
        ) from None
    if resolved.type == "cpu":
        return resolved
    if resolved.type != "cuda":
        raise FedpktError(f"device '{device}' is not supported; expected auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise FedpktError(f"device '{device}' was asked for but no CUDA GPU is available")
    if resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise FedpktError(
            f"device '{device}' does not exist; this machine has "
            f"{torch.cuda.device_count()} CUDA device(s)"
        )
    return resolved


def resolve_dtype(dtype: str) -> torch.dtype:
    """'float32' | 'bfloat16' | 'float16' -> the torch dtype."""
    if dtype not in DTYPES:
        raise FedpktError(f"dtype '{dtype}' is unknown; expected one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def weight_files(path: str | Path) -> list[Path]:
    """The files holding the weights ``from_pretrained`` reads (safetensors preferred), sorted."""
    root = Path(path)
    for patterns in (WEIGHT_PATTERNS, LEGACY_WEIGHT_PATTERNS):
        found = sorted({file for pattern in patterns for file in root.glob(pattern)})
        if found:
            return found
    return []


def directory_fingerprint(path: str | Path) -> str:
    """16 hex digits of sha256 over config.json and every weight file (name, then bytes).

    Stable across loads and machines: it depends only on file names and contents, so it
    changes exactly when the model would compute something different.
    """
    root = Path(path)
    digest = hashlib.sha256()
    for file in [root / "config.json", *weight_files(root)]:
        digest.update(file.name.encode("utf-8") + b"\0")
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def _looks_like_path(name: str) -> bool:
    """Whether ``name`` is meant as a local path (a hub id is 'name' or 'org/name')."""
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or "\\" in name


def _download_from_hub(name: str) -> Path:
    """Fetch a hub repository's config, tokenizer and weights into the hub cache."""
    from huggingface_hub import snapshot_download

    try:
        local = Path(snapshot_download(repo_id=name, allow_patterns=_HUB_FILES))
        if not weight_files(local):  # older repositories ship only PyTorch pickles
            legacy = [*_HUB_FILES[:-1], *LEGACY_WEIGHT_PATTERNS]
            local = Path(snapshot_download(repo_id=name, allow_patterns=legacy))
    except Exception as err:  # the hub client raises many types; all mean "not available"
        raise FedpktError(
            f"backbone '{name}' is neither a local directory nor reachable on the Hugging Face "
            f"hub ({type(err).__name__}); expected 'embedded', a model directory or a hub id"
        ) from None
    return local


def backbone_path(
    name: str,
    *,
    embedded_size: str = "default",
    embedded_recipe: str = DEFAULT_CORPUS,
    progress: bool = True,
) -> Path:
    """The local directory ``name`` stands for, building or downloading it if needed.

    ``embedded_size`` and ``embedded_recipe`` choose the embedded backbone's recipe
    (:func:`fedpkt.model.embedded.get_recipe`); other names ignore them.
    """
    if name == EMBEDDED:
        return ensure_embedded(embedded_size, embedded_recipe, progress=progress)
    candidate = Path(name).expanduser()
    if candidate.exists() or _looks_like_path(name):
        if not candidate.is_dir():
            raise FedpktError(
                f"backbone directory '{name}' does not exist; expected a Hugging Face model "
                "directory (config.json, weights, tokenizer files)"
            )
        return candidate.resolve()
    return _download_from_hub(name)


def check_causal_lm(path: Path, name: str) -> PretrainedConfig:
    """Read config.json and insist on a causal-LM architecture, with a one-line error."""
    if not (path / "config.json").is_file():
        raise FedpktError(
            f"backbone '{name}' has no config.json in '{path}'; expected a Hugging Face model "
            "directory"
        )
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FedpktError(f"backbone '{name}' has an unreadable config.json ({first})") from None
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise FedpktError(
            f"backbone '{name}' is a '{config.model_type}' model, not a causal LM; expected an "
            "architecture AutoModelForCausalLM can load (gpt2, llama, ...)"
        )
    if not weight_files(path):
        raise FedpktError(
            f"backbone '{name}' has no weights in '{path}'; expected model.safetensors "
            "(or pytorch_model.bin)"
        )
    return config


def _load_tokenizer(path: Path, name: str) -> PreTrainedTokenizerBase:
    """The tokenizer with a pad token (EOS when it has none) and right padding."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FedpktError(f"backbone '{name}' has no usable tokenizer ({first})") from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise FedpktError(
                f"backbone '{name}' tokenizer has neither a pad nor an EOS token; expected one"
            )
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def _load(path: Path, name: str, device: torch.device, dtype: torch.dtype) -> Backbone:
    check_causal_lm(path, name)
    tokenizer = _load_tokenizer(path, name)
    try:
        with quiet_hf_progress():
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except Exception as err:  # torch, safetensors and transformers raise many types
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FedpktError(
            f"backbone '{name}' has weights in '{path}' that cannot be loaded "
            f"({type(err).__name__}: {first[:200]})"
        ) from None
    vocab = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > vocab:
        raise FedpktError(
            f"backbone '{name}' tokenizer has {len(tokenizer)} tokens but the model embeds "
            f"{vocab}; expected at most {vocab}"
        )
    model.requires_grad_(False)
    model.eval()
    model.to(device)
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return Backbone(
        model=model,
        tokenizer=tokenizer,
        fingerprint=directory_fingerprint(path),
        num_params=sum(p.numel() for p in model.parameters()),
        name=name,
        path=path,
        device=device,
    )


_LOADED: dict[tuple[str, str, str], Backbone] = {}
_LOCK = threading.Lock()


def load_backbone(
    name: str = EMBEDDED,
    *,
    embedded_size: str = "default",
    embedded_recipe: str = DEFAULT_CORPUS,
    device: str = "auto",
    dtype: str = "float32",
    progress: bool = True,
) -> Backbone:
    """The frozen backbone ``name`` ('embedded', a local directory or a hub id), loaded once.

    Repeated calls with the same directory, device and dtype return the same object (module
    cache). The embedded backbone is built on first use (``progress`` shows the build).
    Raises FedpktError (one line) for a missing directory, no config.json, an architecture that
    is not a causal LM, missing weights or tokenizer, or an unavailable device.
    """
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype)
    with _LOCK:
        path = backbone_path(
            name, embedded_size=embedded_size, embedded_recipe=embedded_recipe, progress=progress
        )
        key = (str(path), str(torch_device), dtype)
        if key not in _LOADED:
            _LOADED[key] = _load(path, name, torch_device, torch_dtype)
        return _LOADED[key]


def load_backbone_from_config(config: BackboneConfig, *, progress: bool = True) -> Backbone:
    """:func:`load_backbone` with the ``[backbone]`` section of a run's configuration."""
    return load_backbone(
        config.name,
        embedded_size=config.embedded_size,
        embedded_recipe=config.embedded_recipe,
        device=config.device,
        dtype=config.dtype,
        progress=progress,
    )


def clear_loaded_backbones() -> None:
    """Forget every loaded backbone (frees memory; tests use it to load afresh)."""
    with _LOCK:
        _LOADED.clear()
