"""What fits in the backbone's position table: input budgets and the up-front refusal.

A prefix of m virtual tokens takes positions 0..m-1 (``fedpkt.model.prefix``), so a row of T
real tokens needs m + T positions. GPT-2's learned position table ends at ``n_positions`` (an
index beyond it is ``IndexError: index out of range in self`` deep inside the forward); a
rotary backbone's ``max_position_embeddings`` is where it was trained to stop.

- ``check_lengths`` refuses, in one line, settings under which nothing can run: an example of
  ``data.max_length`` tokens behind the prefix, or a prefix plus ``generation.max_new_tokens``
  with not even one prompt token left. ``check_backbone_fits`` runs it on a config against the
  backbone's config (read without weights) before a run directory is written.
- ``input_budget`` is how many tokens an input may keep: ``max_length``, less where the table
  (after the prefix and the tokens still to be generated) is shorter. Training, evaluation and
  generation encode with it, cutting the oldest history first.
"""

from __future__ import annotations

from typing import Any

from fedpkt.errors import FedpktError
from fedpkt.model.backbone_info import backbone_config


def position_limit(model_config: Any) -> int | None:
    """Positions the backbone can encode (``n_positions`` / ``max_position_embeddings``), or
    None when its config sets neither (no table to overflow)."""
    if hasattr(model_config, "get_text_config"):
        model_config = model_config.get_text_config(decoder=True)
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(model_config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def input_budget(
    model_config: Any, max_length: int, num_virtual_tokens: int, max_new_tokens: int = 0
) -> int:
    """Tokens an input keeps: ``max_length``, or fewer so that prefix + input + new tokens fit.

    Worked example: 256 positions, m = 8, max_length 256 -> 248 (training); with 24 new
    tokens -> 224 (generation prompts).
    """
    limit = position_limit(model_config)
    if limit is None:
        return max_length
    budget = min(max_length, limit - num_virtual_tokens - max_new_tokens)
    if budget < 1:
        raise FedpktError(
            f"model has {limit} positions; expected more than prefix ({num_virtual_tokens}) + "
            f"max_new_tokens ({max_new_tokens})"
        )
    return budget


def check_lengths(
    model_config: Any,
    *,
    max_length: int,
    num_virtual_tokens: int,
    max_new_tokens: int,
    backbone: str = "the backbone",
) -> None:
    """Refuse settings the backbone's position table cannot take (one-line FedpktError).

    Training rows hold up to ``max_length`` tokens behind the prefix: m + max_length must fit.
    Generation cuts its prompts to fit (``input_budget``), so it only needs m + max_new_tokens
    to leave room for one prompt token.
    """
    limit = position_limit(model_config)
    if limit is None:
        return
    m = num_virtual_tokens
    if m + max_length > limit:
        raise FedpktError(
            f"data.max_length ({max_length}) + prefix.num_virtual_tokens ({m}) = "
            f"{max_length + m} positions, but {backbone} has {limit}; expected a sum of at most "
            f"{limit} (e.g. data.max_length={limit - m})"
        )
    if m + max_new_tokens >= limit:
        raise FedpktError(
            f"prefix.num_virtual_tokens ({m}) + generation.max_new_tokens ({max_new_tokens}) = "
            f"{m + max_new_tokens} positions leave no prompt token in the {limit} of {backbone}; "
            f"expected a sum of at most {limit - 1}"
        )


def check_backbone_fits(cfg: Any) -> None:
    """``check_lengths`` for a resolved ``FedpktConfig``, against its backbone's config.

    Reads ``config.json`` only (building the embedded backbone first if it is not cached).
    """
    name = cfg.backbone.name
    model_config = backbone_config(
        name, embedded_size=cfg.backbone.embedded_size, embedded_recipe=cfg.backbone.embedded_recipe
    )
    label = f"backbone '{name}'" + (
        f" ({cfg.backbone.embedded_size})" if name == "embedded" else ""
    )
    check_lengths(
        model_config,
        max_length=cfg.data.max_length,
        num_virtual_tokens=cfg.prefix.num_virtual_tokens,
        max_new_tokens=cfg.generation.max_new_tokens,
        backbone=label,
    )
