"""Text layout and tokenisation, worked by hand with a byte-level BPE that has no merges.

With no merges every UTF-8 byte is one token, so token counts are byte counts:
"A: hi\\nB:" is 8 tokens, " yo" is 3.
"""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from fedpkt.data.encoding import (
    IGNORE_INDEX,
    EncodedExample,
    collate,
    encode_example,
    encode_examples,
    encode_prompts,
    pad_token_id,
    render_history,
    render_target,
)
from fedpkt.data.schema import Example, Utterance
from fedpkt.errors import FedpktError


def byte_tokenizer(*, pad: bool = True, eos: bool = True) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained to 256 bytes + 2 specials (ids 0 "<eos>", 1 "<pad>"): no merges."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=258,
        special_tokens=["<eos>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(["A: hi\nB: yo", "hello there"], trainer=trainer)
    kwargs = {}
    if eos:
        kwargs["eos_token"] = "<eos>"
    if pad:
        kwargs["pad_token"] = "<pad>"
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)


TOK = byte_tokenizer()
EOS = TOK.eos_token_id


def example(reply: str, *history: str) -> Example:
    """History alternates partner, persona, partner ... ending before the persona's reply."""
    speakers = ["partner", "persona"]
    turns = [Utterance(speakers[i % 2], text) for i, text in enumerate(history)]
    return Example(history=turns, response=Utterance("persona", reply))


def ids(text: str) -> list[int]:
    return TOK(text, add_special_tokens=False)["input_ids"]


def test_layout_of_prompt_and_target() -> None:
    ex = example("yo", "hi", "hey", "how are you")
    assert render_history(ex.history) == "A: hi\nB: hey\nA: how are you\nB:"
    assert render_target(ex.response.text) == " yo"


def test_tokenizer_has_one_token_per_byte() -> None:
    assert len(ids("A: hi\nB:")) == 8
    assert TOK.decode(ids("A: hi\nB:")) == "A: hi\nB:"


def test_example_without_truncation_puts_loss_on_reply_and_eos_only() -> None:
    """prompt "A: hi\\nB:" (8) + " yo" (3) + eos = 12 tokens; 8 labels are -100."""
    enc = encode_example(example("yo", "hi"), TOK, max_length=32)
    assert enc.prompt_len == 8
    assert enc.input_ids == (*ids("A: hi\nB:"), *ids(" yo"), EOS)
    assert enc.labels == (*[IGNORE_INDEX] * 8, *ids(" yo"), EOS)


def test_long_history_is_cut_from_the_left() -> None:
    """max_length 8: the target keeps its 4 tokens, the prompt its last 4 bytes "i\\nB:"."""
    enc = encode_example(example("yo", "hi"), TOK, max_length=8)
    assert enc.prompt_len == 4
    assert TOK.decode(enc.input_ids[:4]) == "i\nB:"
    assert enc.input_ids[4:] == (*ids(" yo"), EOS)
    assert len(enc.input_ids) == len(enc.labels) == 8


def test_reply_is_kept_whole_even_if_history_shrinks_to_one_token() -> None:
    """max_length 5 = " yo" + eos (4) + 1: only the prompt's last token ":" survives."""
    enc = encode_example(example("yo", "hi"), TOK, max_length=5)
    assert TOK.decode(enc.input_ids[:1]) == ":"
    assert enc.prompt_len == 1
    assert enc.input_ids[1:] == (*ids(" yo"), EOS)


def test_reply_longer_than_max_length_is_cut_from_the_right() -> None:
    """Reply " abcdefgh" + eos = 10 tokens, max_length 6: ":" then " abcd" (5), eos lost."""
    enc = encode_example(example("abcdefgh", "hi"), TOK, max_length=6)
    assert enc.prompt_len == 1
    assert TOK.decode(enc.input_ids) == ": abcd"
    assert EOS not in enc.input_ids
    assert enc.labels == (IGNORE_INDEX, *ids(" abcd"))


def test_encode_examples_keeps_order() -> None:
    encoded = encode_examples([example("a", "x"), example("bb", "y")], TOK, 32)
    assert [len(e.input_ids) - e.prompt_len for e in encoded] == [3, 4]  # " a"+eos, " bb"+eos


def test_tokenizer_without_eos_is_rejected() -> None:
    with pytest.raises(FedpktError, match="has no eos_token_id"):
        encode_example(example("yo", "hi"), byte_tokenizer(eos=False), 32)


def test_max_length_below_two_is_rejected() -> None:
    with pytest.raises(FedpktError, match="max_length is 1; expected at least 2"):
        encode_example(example("yo", "hi"), TOK, 1)


def test_collate_right_pads_with_masked_ignored_positions() -> None:
    batch = [
        EncodedExample(input_ids=(5, 6, 7), labels=(-100, 6, 7), prompt_len=1),
        EncodedExample(input_ids=(8, 9), labels=(-100, 9), prompt_len=1),
    ]
    out = collate(batch, pad_id=1)
    assert out["input_ids"].tolist() == [[5, 6, 7], [8, 9, 1]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert out["labels"].tolist() == [[-100, 6, 7], [-100, 9, -100]]
    assert all(t.dtype == torch.long for t in out.values())


def test_collate_rejects_an_empty_batch() -> None:
    with pytest.raises(FedpktError, match="empty batch"):
        collate([], pad_id=0)


def test_prompts_are_left_padded_with_the_pad_token() -> None:
    out = encode_prompts(["ab", "abcd"], TOK, max_length=16)
    pad = TOK.pad_token_id
    assert out["input_ids"].tolist() == [[pad, pad, *ids("ab")], ids("abcd")]
    assert out["attention_mask"].tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]


def test_prompts_keep_their_last_max_length_tokens() -> None:
    out = encode_prompts(["abcdef"], TOK, max_length=3)
    assert out["input_ids"].tolist() == [ids("def")]


def test_generation_prompt_equals_training_prompt() -> None:
    """Generation must continue from exactly the ids training conditioned on."""
    ex = example("yo", "hi", "hey", "how are you")
    train = encode_example(ex, TOK, 64)
    gen = encode_prompts([render_history(ex.history)], TOK, 64)
    assert tuple(gen["input_ids"][0].tolist()) == train.input_ids[: train.prompt_len]


def test_pad_falls_back_to_eos_when_tokenizer_has_no_pad() -> None:
    assert pad_token_id(byte_tokenizer(pad=False)) == EOS
    assert pad_token_id(TOK) == 1
