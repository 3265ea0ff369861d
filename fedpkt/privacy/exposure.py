"""Canary exposure (Carlini et al. 2019, "The Secret Sharer"): how much a model memorised a secret.

Part A clients may carry planted canaries, "my secret code is 4821 9930." appended to a persona
reply (``fedpkt data prepare --canaries N``, records in ``canaries.json``). A model that
memorised the secret finds it more likely than other secrets of the same format. Exposure
measures that:

- the **log-perplexity** of a candidate r is −Σ log2 P(token | everything before it), summed
  over the candidate sentence's tokens, in the dialogue layout (the planted reply's history and
  reply text before the canary are the context), under the backbone and the prefix;
- the **rank** of the true secret s is 1 + the number of candidates with a strictly lower
  log-perplexity, among the randomness space R (every digit string of the same shape:
  |R| = 10^digits);
- **exposure** = log2 |R| − log2 rank: log2 |R| when s is the most likely candidate, about 1 bit
  for a secret the model never saw (its rank is then uniform on R, median |R|/2).

When |R| is too large to score every candidate (the default canaries have 8 digits, 10^8), the
paper's extrapolation is used: score a uniform random sample of candidates, fit a skew-normal
distribution to their log-perplexities, and take exposure = −log2 F(logppl(s)), F its CDF (the
fraction of R expected to beat s), capped at log2 |R|.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from scipy.stats import skewnorm
from torch import Tensor, nn

from fedpkt.data.encoding import render_history, render_target
from fedpkt.data.schema import ClientData
from fedpkt.errors import FedpktError
from fedpkt.peft import PeftMethod, get_method, peft_forward
from fedpkt.train.loop import model_device
from fedpkt.train.prefix_training import backbone_parts

SECRET = re.compile(r"\d+(?: \d+)*")
"""A secret: digit groups separated by single spaces ("4821 9930")."""

Method = Literal["exact", "extrapolated"]


@dataclass(frozen=True)
class Canary:
    """One planted sentence and where it sits.

    ``context`` is the text the canary follows in the dialogue layout (the rendered history,
    the persona's "B:" cue and the reply text before the canary); ``text`` the canary sentence.
    """

    text: str
    context: str = render_history([])
    client_id: str = ""


@dataclass(frozen=True)
class ExposureRow:
    """One canary's exposure. ``rank`` may be fractional when extrapolated (|R|·F);
    ``log_perplexity`` is in bits; ``scored`` is how many candidates were scored."""

    client_id: str
    canary: str
    secret: str
    log_perplexity: float
    rank: float
    space_size: int
    scored: int
    exposure: float
    method: Method


# --- the randomness space ----------------------------------------------------------------------


def split_secret(text: str) -> tuple[str, str, str]:
    """(before, secret, after) around the last digit run of ``text``.

    "my secret code is 4821 9930." -> ("my secret code is ", "4821 9930", ".").
    """
    matches = list(SECRET.finditer(text))
    if not matches:
        raise FedpktError(f"canary {text!r} has no digits; expected e.g. 'my secret code is 1234'")
    last = matches[-1]
    return text[: last.start()], last.group(), text[last.end() :]


def space_size(secret: str) -> int:
    """|R| = 10^(number of digits): every digit string of the secret's shape."""
    return 10 ** sum(ch.isdigit() for ch in secret)


def nth_candidate(secret: str, index: int) -> str:
    """The ``index``-th digit string (0-based, in numeric order) of ``secret``'s shape.

    Shape "12 3", index 45 -> "04 5".
    """
    digits = sum(ch.isdigit() for ch in secret)
    flat = f"{index:0{digits}d}"
    out, pos = [], 0
    for ch in secret:
        if ch.isdigit():
            out.append(flat[pos])
            pos += 1
        else:
            out.append(ch)
    return "".join(out)


def exposure_from_rank(space: int, rank: float) -> float:
    """log2 |R| − log2 rank. |R| = 1000: rank 1 -> 9.966 bits; rank 500 -> 1.0 bit."""
    if space < 1 or not 1 <= rank <= space:
        raise FedpktError(f"rank {rank} in a space of {space}; expected 1 <= rank <= space")
    return math.log2(space) - math.log2(rank)


def extrapolated_exposure(sampled: Sequence[float], target: float, space: int) -> float:
    """−log2 F(target), F the skew-normal CDF fitted to ``sampled`` log-perplexities (bits),
    clipped to [0, log2 |R|]."""
    if len(sampled) < 3:
        raise FedpktError(f"{len(sampled)} sampled candidates; expected at least 3 to fit")
    shape, loc, scale = skewnorm.fit(np.asarray(sampled, dtype=np.float64))
    log_cdf = float(skewnorm.logcdf(target, shape, loc=loc, scale=scale))
    return min(max(-log_cdf / math.log(2), 0.0), math.log2(space))


# --- scoring ------------------------------------------------------------------------------------


def folded_states(
    prefix: Tensor | Mapping[str, np.ndarray] | None,
    model: nn.Module,
    method: PeftMethod | None = None,
) -> Tensor | None:
    """The folded prefix (m, width) from folded states, ``method``'s module arrays (the phase-1
    payload; default method: prefix tuning), or None (``PeftMethod.fold_arrays``)."""
    if prefix is None or isinstance(prefix, Tensor):
        return prefix
    return (method or get_method()).fold_arrays(model.config, prefix)


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def log_perplexities(
    model: nn.Module,
    tokenizer: Any,
    states: Tensor | None,
    context: str,
    sentences: Sequence[str],
    *,
    batch_size: int = 64,
    peft: PeftMethod | None = None,
) -> list[float]:
    """Log-perplexity in bits of each sentence after ``context``: −Σ log2 P over its tokens.

    ``states`` is a folded prefix (m, width) of the PEFT method ``peft`` (default: prefix
    tuning) or None. Context and sentence are tokenised apart
    (the sentence starts with a space, so BPE word boundaries match joint tokenisation).
    """
    device = model_device(model)
    context_ids = _ids(tokenizer, context)
    if not context_ids:
        raise FedpktError("canary context encodes to zero tokens; expected at least one")
    encoded = [_ids(tokenizer, s) for s in sentences]
    # Keep the most recent context that fits the model's positions behind the prefix.
    positions = getattr(model.config, "n_positions", None) or getattr(
        model.config, "max_position_embeddings", None
    )
    if positions:
        used = (0 if states is None else int(states.shape[-2])) + max(map(len, encoded), default=0)
        room = int(positions) - used
        if room < 1:
            raise FedpktError(f"canary sentences need {used} positions; the model has {positions}")
        context_ids = context_ids[-room:]
    out: list[float] = []
    with torch.no_grad():
        for start in range(0, len(sentences), batch_size):
            chunk = encoded[start : start + batch_size]
            width = len(context_ids) + max(len(ids) for ids in chunk)
            input_ids = torch.zeros((len(chunk), width), dtype=torch.long)
            mask = torch.zeros_like(input_ids)
            targets = torch.full_like(input_ids, -100)
            for row, ids in enumerate(chunk):
                n = len(context_ids) + len(ids)
                input_ids[row, :n] = torch.tensor(context_ids + ids)
                mask[row, :n] = 1
                targets[row, len(context_ids) : n] = torch.tensor(ids)
            batch_states = None
            if states is not None:
                batch_states = states.to(device).unsqueeze(0).expand(len(chunk), -1, -1)
            logits = (
                peft_forward(peft, model, input_ids.to(device), mask.to(device), batch_states)
                .logits[:, :-1]
                .float()
            )
            nll = nn.functional.cross_entropy(
                logits.transpose(1, 2),
                targets[:, 1:].to(device),
                ignore_index=-100,
                reduction="none",
            ).sum(dim=1)
            out.extend((nll / math.log(2)).tolist())
    return out


def canary_exposure(
    backbone: Any,
    prefix: Tensor | Mapping[str, np.ndarray] | None,
    canary: Canary,
    *,
    max_enumerate: int = 10_000,
    num_samples: int = 2_000,
    seed: int = 0,
    batch_size: int = 64,
    peft: PeftMethod | None = None,
) -> ExposureRow:
    """The exposure of one canary under ``backbone`` (a ``Backbone`` or (model, tokenizer)) and
    ``prefix`` (folded states, module arrays of the PEFT method ``peft`` (default: prefix
    tuning), or None for the bare backbone).

    |R| <= ``max_enumerate``: every candidate is scored, exact rank. Otherwise ``num_samples``
    candidates drawn uniformly (seeded) are scored and the skew-normal extrapolation is used;
    the reported rank is then |R| · 2^(−exposure).
    """
    model, tokenizer = backbone if isinstance(backbone, tuple) else backbone_parts(backbone)
    if tokenizer is None:
        raise FedpktError("exposure needs a tokenizer; expected a Backbone or (model, tokenizer)")
    states = folded_states(prefix, model, peft)
    before, secret, after = split_secret(canary.text)
    space = space_size(secret)

    def sentence(candidate: str) -> str:
        return render_target(f"{before}{candidate}{after}")

    was_training = model.training
    model.eval()
    try:
        own = log_perplexities(
            model,
            tokenizer,
            states,
            canary.context,
            [sentence(secret)],
            batch_size=batch_size,
            peft=peft,
        )[0]
        if space <= max_enumerate:
            others = [nth_candidate(secret, i) for i in range(space)]
            others = [c for c in others if c != secret]
            scores = log_perplexities(
                model,
                tokenizer,
                states,
                canary.context,
                [sentence(c) for c in others],
                batch_size=batch_size,
                peft=peft,
            )
            rank = 1 + sum(score < own for score in scores)
            exposure, method, scored = exposure_from_rank(space, rank), "exact", len(scores) + 1
        else:
            rng = random.Random(f"fedpkt-exposure|{seed}|{canary.text}")
            picks = {nth_candidate(secret, rng.randrange(space)) for _ in range(num_samples)}
            picks.discard(secret)
            scores = log_perplexities(
                model,
                tokenizer,
                states,
                canary.context,
                [sentence(c) for c in sorted(picks)],
                batch_size=batch_size,
                peft=peft,
            )
            exposure = extrapolated_exposure(scores, own, space)
            rank, method, scored = space * 2.0 ** (-exposure), "extrapolated", len(scores) + 1
    finally:
        model.train(was_training)
    return ExposureRow(
        client_id=canary.client_id,
        canary=canary.text,
        secret=secret,
        log_perplexity=own,
        rank=float(rank),
        space_size=space,
        scored=scored,
        exposure=float(exposure),
        method=method,  # type: ignore[arg-type]
    )


def exposure_table(
    backbone: Any,
    prefix: Tensor | Mapping[str, np.ndarray] | None,
    canaries: Sequence[Canary],
    **options: Any,
) -> list[ExposureRow]:
    """``canary_exposure`` for every canary (options as there), in the given order."""
    return [canary_exposure(backbone, prefix, canary, **options) for canary in canaries]


# --- where the canaries are ---------------------------------------------------------------------


def client_canaries(client: ClientData) -> list[Canary]:
    """The canaries planted in one client's training data, each with its dialogue context.

    Reads ``client.meta["canaries"]`` (records {text, dialogue_id, turn}, from ``canaries.json``)
    and rebuilds the context: the history before the planted turn, the "B:" cue, and the reply
    text before the canary.
    """
    records = client.meta.get("canaries") or []
    client_id = str(client.meta.get("client_id", client.persona.persona_id))
    dialogues = {d.dialogue_id: d for d in client.splits.get("train", [])}
    out = []
    for record in records:
        dialogue = dialogues.get(record["dialogue_id"])
        if dialogue is None:
            raise FedpktError(
                f"canary dialogue {record['dialogue_id']!r} of client {client_id} is not in its "
                "train split; expected the dialogue it was planted in"
            )
        turn = dialogue.turns[int(record["turn"])]
        reply = turn.text
        if not reply.endswith(record["text"]):
            raise FedpktError(
                f"turn {record['turn']} of dialogue {record['dialogue_id']!r} does not end with "
                f"canary {record['text']!r}; expected the planted sentence"
            )
        head = reply[: len(reply) - len(record["text"])].rstrip()
        context = render_history(dialogue.turns[: int(record["turn"])])
        if head:
            context += render_target(head)
        out.append(Canary(text=record["text"], context=context, client_id=client_id))
    return out


# --- rendering ---------------------------------------------------------------------------------


def exposure_markdown(rows: Sequence[ExposureRow]) -> str:
    """A Markdown table of ``rows``, then the mean and max exposure."""
    if not rows:
        return "No canaries to measure."
    lines = [
        "| Client | Canary | log-ppl (bits) | Rank | log2 size(R) | Exposure (bits) | Method |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        rank = f"{row.rank:.0f}" if row.method == "exact" else f"~{row.rank:.3g}"
        lines.append(
            f"| {row.client_id} | {row.canary} | {row.log_perplexity:.2f} | {rank} | "
            f"{math.log2(row.space_size):.2f} | {row.exposure:.2f} | {row.method} |"
        )
    exposures = [row.exposure for row in rows]
    lines.append("")
    lines.append(
        f"Mean exposure {sum(exposures) / len(exposures):.2f} bits, max {max(exposures):.2f} "
        f"bits over {len(rows)} canaries (a never-seen secret scores about 1 bit)."
    )
    return "\n".join(lines)
