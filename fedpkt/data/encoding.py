"""How dialogue text is laid out for a causal LM: one format for pretraining, training and chat.

The embedded backbone is pretrained on exactly this layout, so a prefix trained later conditions
a model that already knows where a reply starts. Speaker tags are plain text ("A:" partner,
"B:" persona) so that any tokenizer (GPT-2's, the embedded BPE, a Llama one) can use them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fedpkt.data.schema import Dialogue, Example, Utterance
from fedpkt.errors import FedpktError

SPEAKER_TAG = {"partner": "A", "persona": "B"}


def render_history(history: Sequence[Utterance]) -> str:
    """The prompt: one line per history utterance, then the persona's tag awaiting its reply."""
    lines = [f"{SPEAKER_TAG[u.speaker]}: {u.text}" for u in history]
    lines.append(f"{SPEAKER_TAG['persona']}:")
    return "\n".join(lines)


def render_target(text: str) -> str:
    """The reply as it follows the prompt (leading space; the EOS token is appended by ids)."""
    return f" {text}"


def render_dialogue(dialogue: Dialogue) -> str:
    """A whole dialogue as one text, for language-model pretraining of the embedded backbone."""
    return "\n".join(f"{SPEAKER_TAG[u.speaker]}: {u.text}" for u in dialogue.turns)


# --- Tokenisation: the text layout above as model inputs -------------------------------------

IGNORE_INDEX = -100  # the label HF causal-LM losses skip


@dataclass(frozen=True)
class EncodedExample:
    """One example as token ids: ``input_ids`` = prompt + response (+eos); ``labels`` the same
    ids with ``IGNORE_INDEX`` on the ``prompt_len`` prompt tokens, so loss falls on the reply only.
    """

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    prompt_len: int


def _ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` with no special tokens: the layout is plain text, and a BOS in the
    middle of a left-truncated prompt would be meaningless."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _eos_id(tokenizer: Any) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise FedpktError(
            f"tokenizer {type(tokenizer).__name__} has no eos_token_id; expected one to end replies"
        )
    return int(eos)


def pad_token_id(tokenizer: Any) -> int:
    """The tokenizer's pad id, else its EOS id (GPT-2 has no pad token; padded positions are
    masked, so which id fills them does not matter)."""
    pad = getattr(tokenizer, "pad_token_id", None)
    return int(pad) if pad is not None else _eos_id(tokenizer)


def _check_max_length(max_length: int) -> None:
    if max_length < 2:
        raise FedpktError(f"max_length is {max_length}; expected at least 2 (prompt + reply)")


def encode_example(example: Example, tokenizer: Any, max_length: int) -> EncodedExample:
    """Tokenise one example for training, at most ``max_length`` tokens.

    prompt = render_history(history), target = render_target(response) + eos, encoded separately
    (so generation, which sees only the prompt, starts from the same ids). When too long, the
    history is cut from the LEFT (the latest turns and the "B:" cue survive). At least one prompt
    token is always kept, so the first reply token is still predicted from something; the reply
    is cut (from the right, losing its eos) only when it alone exceeds ``max_length - 1``.

    Worked example (max_length 6, prompt ids [p1..p5], target ids [t1, t2, eos]):
    input_ids = [p3, p4, p5, t1, t2, eos], labels = [-100, -100, -100, t1, t2, eos], prompt_len 3.
    """
    _check_max_length(max_length)
    prompt = _ids(tokenizer, render_history(example.history))
    target = [*_ids(tokenizer, render_target(example.response.text)), _eos_id(tokenizer)]
    target = target[: max_length - 1]
    prompt = prompt[-(max_length - len(target)) :]  # keeps >= 1 token: len(target) < max_length
    return EncodedExample(
        input_ids=tuple(prompt + target),
        labels=tuple([IGNORE_INDEX] * len(prompt) + target),
        prompt_len=len(prompt),
    )


def encode_examples(
    examples: Iterable[Example], tokenizer: Any, max_length: int
) -> list[EncodedExample]:
    """``encode_example`` over a sequence, order kept."""
    return [encode_example(example, tokenizer, max_length) for example in examples]


def collate(batch: Sequence[EncodedExample], pad_id: int) -> dict[str, Tensor]:
    """Right-pad a training batch: input_ids, attention_mask, labels, each (batch, longest).

    Padding positions get ``pad_id``, mask 0 and label -100 (no loss).
    """
    if not batch:
        raise FedpktError("collate got an empty batch; expected at least one example")
    width = max(len(item.input_ids) for item in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    for row, item in enumerate(batch):
        n = len(item.input_ids)
        input_ids[row, :n] = torch.tensor(item.input_ids, dtype=torch.long)
        attention_mask[row, :n] = 1
        labels[row, :n] = torch.tensor(item.labels, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def encode_prompts(prompts: Sequence[str], tokenizer: Any, max_length: int) -> dict[str, Tensor]:
    """Left-pad rendered prompts for generation: input_ids, attention_mask, (batch, longest).

    Each prompt keeps its last ``max_length`` tokens (the cue to reply is at the end); left
    padding puts every prompt's last token in the last column, where generation continues.
    """
    if max_length < 1:
        raise FedpktError(f"max_length is {max_length}; expected at least 1")
    if not prompts:
        raise FedpktError("encode_prompts got no prompts; expected at least one")
    encoded = [_ids(tokenizer, text)[-max_length:] for text in prompts]
    if any(not ids for ids in encoded):
        raise FedpktError("a prompt encodes to zero tokens; expected non-empty prompts")
    width = max(len(ids) for ids in encoded)
    input_ids = torch.full((len(encoded), width), pad_token_id(tokenizer), dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, ids in enumerate(encoded):
        input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, width - len(ids) :] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}
