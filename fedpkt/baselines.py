"""The paper's centralized settings (Table 2) as loops over the same client code as Flower.

Eight settings, one ``Setting`` each. The prefix settings (Rand init + Prefix-tuning and the
three PersonaPKT variants) call ``LocalClient.personalize`` and ``train_source_centralized``
unchanged. The four fine-tuning settings train a ``trainable_copy`` of the frozen backbone with
``finetune`` / ``sgd_inner_steps_model``, and evaluate it with the same generation and scoring
code; what they add is only how a persona is made visible to the model:

- ``none``: the prompt is ``render_history(history)``, exactly as for prefixes;
- ``description``: ``"persona: <sentence> <sentence> ...\\n"`` + history (Persona + FT);
- ``persona_id``: ``"persona 17:\\n"`` + history (Persona_id + FT). Numbers are given in the
  order Part A, B, C (sorted client ids inside a Part), so B/C personas get ids never seen in
  training, as in the paper.

A context always survives truncation: the oldest history turns are dropped first.
This module never imports Flower.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from fedpkt.baseline_settings import ContextKind
from fedpkt.config import FedpktConfig
from fedpkt.data.encoding import EncodedExample, encode_example, render_history, render_target
from fedpkt.data.schema import Example, Persona, Split, Utterance
from fedpkt.errors import FedpktError
from fedpkt.eval.consistency import ConsistencyScorer
from fedpkt.eval.scoring import score_responses
from fedpkt.local import LocalClient
from fedpkt.model.backbone import Backbone
from fedpkt.model.generate import generate_replies
from fedpkt.model.positions import input_budget
from fedpkt.source import ClientUpdate, SourceTrainer, client_seed
from fedpkt.train.finetune import finetune, trainable_copy
from fedpkt.train.inner_loop import InnerSettings, sgd_inner_steps_model
from fedpkt.train.loop import LoopSettings, ProgressFn, TrainResult, evaluate_loss

Arrays = dict[str, np.ndarray]


# --- persona context in the prompt ------------------------------------------------------------


def persona_numbers(ids_by_part: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """Persona id numbers: Part A first, then B, then C, sorted ids inside each Part.

    >>> persona_numbers({"A": ["a2", "a1"], "B": ["b1"], "C": ["c1"]})
    {'a1': 0, 'a2': 1, 'b1': 2, 'c1': 3}
    """
    ordered = [cid for part in ("A", "B", "C") for cid in sorted(ids_by_part.get(part, ()))]
    return {cid: number for number, cid in enumerate(ordered)}


def persona_context(kind: ContextKind, persona: Persona, number: int) -> str:
    """The text put before the history for one persona ("" for ``none``)."""
    if kind == "none":
        return ""
    if kind == "description":
        sentences = " ".join(s.strip() for s in persona.sentences if s.strip())
        return f"persona: {sentences}\n"
    if kind == "persona_id":
        return f"persona {number}:\n"
    raise FedpktError(f"persona context kind '{kind}' unknown; expected none, description or id")


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def context_prompt(history: Sequence[Utterance], context: str, tokenizer: Any, budget: int) -> str:
    """``context + render_history(history[i:])`` for the smallest i that fits ``budget`` tokens.

    Dropping whole old turns (rather than cutting tokens from the left) keeps the context; if
    even the bare reply cue does not fit, that shortest text is returned and the caller's
    left-truncation cuts into the context.
    """
    text = context + render_history(history)
    for start in range(len(history) + 1):
        text = context + render_history(history[start:])
        if len(_ids(tokenizer, text)) <= budget:
            return text
    return text


def encode_with_context(
    example: Example, tokenizer: Any, max_length: int, context: str
) -> EncodedExample:
    """``encode_example`` with ``context`` before the history (identical when it is empty).

    The reply (+eos) is cut to ``max_length - 1`` tokens, the prompt is built by
    ``context_prompt`` within the rest and, if still too long, cut from the left.
    """
    if not context:
        return encode_example(example, tokenizer, max_length)
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise FedpktError(f"tokenizer {type(tokenizer).__name__} has no eos_token_id")
    target = [*_ids(tokenizer, render_target(example.response.text)), int(eos)]
    target = target[: max_length - 1]
    budget = max_length - len(target)
    prompt = _ids(tokenizer, context_prompt(example.history, context, tokenizer, budget))
    prompt = prompt[-budget:]
    return EncodedExample(
        input_ids=tuple(prompt + target),
        labels=tuple([-100] * len(prompt) + target),
        prompt_len=len(prompt),
    )


def encode_split(client: LocalClient, split: Split, context: str) -> list[EncodedExample]:
    """One client's split encoded with ``context`` (the client's own encoding when empty)."""
    if not context:
        return list(client.encoded.get(split, []))
    # Full fine-tuning rows run without a prefix: the whole position table is theirs.
    budget = input_budget(client.backbone.model.config, client.cfg.data.max_length, 0)
    return [
        encode_with_context(ex, client.backbone.tokenizer, budget, context)
        for ex in client.examples.get(split, [])
    ]


# --- evaluating a fine-tuned model ------------------------------------------------------------


def model_num_params(model: nn.Module) -> int:
    """Distinct parameters of ``model`` (tied weights once): what storing it costs."""
    return sum(p.numel() for p in model.parameters())


def evaluate_model(
    model: nn.Module,
    client: LocalClient,
    context: str,
    scorer: ConsistencyScorer | None,
    cfg: FedpktConfig,
) -> dict[str, float]:
    """Test one persona locally on a (fine-tuned) model: same beams, metrics and C as prefixes.

    Returns f1, f1_2gram, lcs_f1, c_score (absent when C is not measured), test_loss,
    n_test_responses, n_train_dialogues.
    """
    examples = client.examples.get("test", [])
    if not examples:
        raise FedpktError(f"client '{client.client_id}' has 0 test examples; expected some")
    tokenizer = client.backbone.tokenizer
    loss = evaluate_loss(model, None, encode_split(client, "test", context), cfg.phase2.batch_size)
    prompts = [
        context_prompt(ex.history, context, tokenizer, cfg.data.max_length) for ex in examples
    ]
    generated = generate_replies(
        model, tokenizer, None, prompts, cfg.generation, max_length=cfg.data.max_length
    )
    references = [ex.response.text for ex in examples]
    scores = score_responses(generated, references, client.data.persona, scorer)
    return {
        "f1": scores["f1"],
        "f1_2gram": scores["f1_2gram"],
        "lcs_f1": scores["lcs_f1"],
        **{key: scores[key] for key in ("c_score",) if key in scores},  # none: not measured
        "test_loss": float(loss),
        "n_test_responses": float(len(references)),
        "n_train_dialogues": float(client.data.num_dialogues("train")),
    }


def finetune_model(
    model: nn.Module,
    tokenizer: Any,
    train: Sequence[EncodedExample],
    valid: Sequence[EncodedExample],
    cfg: FedpktConfig,
    seed: int,
    progress: ProgressFn | None = None,
) -> TrainResult:
    """``finetune`` with phase-2 settings, except the whole-model lr ``phase2.finetune_lr``."""
    settings = LoopSettings.for_phase2(cfg.phase2, seed, lr=cfg.phase2.finetune_lr)
    return finetune(model, tokenizer, train, valid, settings, progress=progress)


def finetune_pooled(
    backbone: Backbone,
    clients: Mapping[str, LocalClient],
    contexts: Mapping[str, str],
    cfg: FedpktConfig,
    progress: ProgressFn | None = None,
) -> tuple[nn.Module, TrainResult]:
    """One ``trainable_copy`` of the backbone fine-tuned on the pooled train splits of
    ``clients`` (Part A), early-stopped on their pooled validation splits.

    ``contexts`` maps each client id to the text put before its histories ("" for none).
    """
    if not clients:
        raise FedpktError("pooled fine-tuning got 0 Part A clients; expected at least one")
    ids = sorted(clients)
    train = [e for cid in ids for e in encode_split(clients[cid], "train", contexts[cid])]
    valid = [e for cid in ids for e in encode_split(clients[cid], "valid", contexts[cid])]
    model = trainable_copy(backbone.model)
    result = finetune_model(model, backbone.tokenizer, train, valid, cfg, cfg.seed, progress)
    return model, result


# --- full-model Reptile -----------------------------------------------------------------------


def model_arrays(model: nn.Module) -> Arrays:
    """Every parameter of ``model`` as float32 numpy arrays (name -> array), copied."""
    return {
        name: p.detach().to("cpu", torch.float32).numpy().copy()
        for name, p in model.named_parameters()
    }


def load_model_arrays(model: nn.Module, arrays: Mapping[str, np.ndarray]) -> None:
    """Copy ``arrays`` into ``model``'s parameters in place (names and shapes must match)."""
    params = dict(model.named_parameters())
    if set(params) != set(arrays):
        missing = sorted(set(params) - set(arrays))[:3]
        raise FedpktError(f"model arrays miss parameters {missing}; expected every model name")
    with torch.no_grad():
        for name, param in params.items():
            value = torch.from_numpy(np.asarray(arrays[name]))
            if tuple(value.shape) != tuple(param.shape):
                raise FedpktError(
                    f"array '{name}' has shape {tuple(value.shape)}; expected {tuple(param.shape)}"
                )
            param.copy_(value.to(device=param.device, dtype=param.dtype))


def reptile_meta_train(
    cfg: FedpktConfig,
    backbone: Backbone,
    clients: Mapping[str, LocalClient],
    on_round: Callable[[dict[str, Any]], None] | None = None,
) -> nn.Module:
    """Full-model Reptile on Part A: PPReptile's rounds with the whole model as θ.

    Same θ-server (``SourceTrainer`` with strategy ppreptile, its configured parameters when
    ppreptile is the configured strategy, else its defaults: same client sampling, seeds and
    outer optimizer β), same k/α/b_in; the inner loop is ``sgd_inner_steps_model`` on a
    trainable copy. Returns that copy holding the meta-trained θ. Memory: θ plus one model-size
    array per sampled client per round (float32, on the CPU).
    """
    model = trainable_copy(backbone.model)
    counts = {cid: c.num_train_examples for cid, c in clients.items()}
    phase1 = cfg.phase1.with_strategy("ppreptile")
    trainer = SourceTrainer(model_arrays(model), phase1, counts, cfg.seed)
    for round_num in range(1, phase1.rounds + 1):
        updates = []
        for cid in trainer.sample_train():
            load_model_arrays(model, trainer.theta)
            step = sgd_inner_steps_model(
                model,
                clients[cid].encoded["train"],
                InnerSettings.for_phase1(phase1, client_seed(cfg.seed, round_num, cid, "train")),
                tokenizer=backbone.tokenizer,
            )
            updates.append(
                ClientUpdate(cid, model_arrays(model), step.num_examples, step.mean_loss)
            )
        trainer.apply(updates)
        if on_round is not None:
            on_round({"round": round_num, "train_loss": float(np.mean([u.loss for u in updates]))})
    load_model_arrays(model, trainer.theta)
    model.eval()
    return model


# --- which personas phase 2 covers ------------------------------------------------------------


def phase2_targets(cfg: FedpktConfig, ids_b: Sequence[str], ids_c: Sequence[str]) -> list[str]:
    """The Part B/C clients phase 2 personalizes: all, or the server's ``max_clients`` draw.

    Mirrors ``server.app.run_phase2`` (B then C, sorted; ``default_rng([seed, 2])``), so a
    baseline scores exactly the personas the federated run scored.
    """
    targets = sorted(ids_b) + sorted(ids_c)
    if cfg.phase2.max_clients:
        rng = np.random.default_rng([cfg.seed, 2])
        size = min(cfg.phase2.max_clients, len(targets))
        keep = sorted(rng.choice(len(targets), size=size, replace=False))
        targets = [targets[i] for i in keep]
    return targets


def personalize_seed(cfg: FedpktConfig, client_id: str) -> int:
    """The phase-2 seed the server sends this client (so baselines replay the same RNG)."""
    return client_seed(cfg.seed, 0, client_id, "personalize")
