"""The run's backbone as the audit needs it: its tokenizer (what token ids to search for) and
its config (θ's shapes for the contract); never its weights.
"""

from __future__ import annotations

from typing import Any

from fedpkt.config import FedpktConfig
from fedpkt.errors import FedpktError


def load_tokenizer(cfg: FedpktConfig) -> Any:
    """The run's backbone tokenizer (only the tokenizer: the audit needs no weights)."""
    from transformers import AutoTokenizer

    from fedpkt.model.backbone import backbone_path

    path = backbone_path(
        cfg.backbone.name,
        embedded_size=cfg.backbone.embedded_size,
        embedded_recipe=cfg.backbone.embedded_recipe,
        progress=False,
    )
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FedpktError(
            f"backbone '{cfg.backbone.name}' has no usable tokenizer ({first})"
        ) from None
    # Whole dialogues are longer than the model's context; they are only searched for, never
    # fed to the model, so the length warning would be noise.
    tokenizer.model_max_length = 1 << 62
    return tokenizer


def load_model_config(cfg: FedpktConfig) -> Any:
    """The backbone's config (for θ's shapes): what the server itself builds θ_0 from."""
    from fedpkt.model.backbone_info import backbone_config

    try:
        return backbone_config(
            cfg.backbone.name,
            embedded_size=cfg.backbone.embedded_size,
            embedded_recipe=cfg.backbone.embedded_recipe,
        )
    except (OSError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FedpktError(
            f"backbone '{cfg.backbone.name}' has an unreadable config ({first})"
        ) from None
