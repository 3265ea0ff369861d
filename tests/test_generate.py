"""Beam-search generation under per-row prefixes."""

from __future__ import annotations

import pytest
import torch

from fedpkt.config import GenerationConfig as GenerationSettings
from fedpkt.data.encoding import encode_prompts
from fedpkt.errors import FedpktError
from fedpkt.model.generate import first_line, generate_replies, stop_token_ids
from fedpkt.model.prefix import forward_with_prefix
from tests.training_fixtures import PROMPTS, tiny_model, tiny_prefix, tiny_tokenizer

MAX_NEW = 10


def three_prefixes(model) -> torch.Tensor:
    """Three different personas' folded prefixes, (3, m, width)."""
    return torch.stack([tiny_prefix(model, seed=s, init_std=1.0).fold() for s in range(3)])


def test_batched_mixed_prefixes_equal_one_by_one_generation():
    """Prompts of different lengths (so left padding differs) and a different prefix per row:
    one batch of 3 with beam 3 gives each row exactly what that row alone gives."""
    model, tokenizer = tiny_model(), tiny_tokenizer()
    states = three_prefixes(model)
    options = GenerationSettings(num_beams=3, max_new_tokens=MAX_NEW, no_repeat_ngram_size=2)
    batched = generate_replies(model, tokenizer, states, PROMPTS, options, batch_size=3)
    alone = [
        generate_replies(model, tokenizer, states[i : i + 1], [PROMPTS[i]], options)[0]
        for i in range(len(PROMPTS))
    ]
    assert batched == alone
    assert any(batched)


def test_the_prefix_changes_the_reply():
    """Same prompt, three personas: the prefix reaches the model (replies are not all equal)."""
    model, tokenizer = tiny_model(), tiny_tokenizer()
    replies = generate_replies(
        model,
        tokenizer,
        three_prefixes(model),
        [PROMPTS[0]] * 3,
        GenerationSettings(num_beams=2, max_new_tokens=8),
    )
    assert len(set(replies)) > 1


def hand_greedy(model, tokenizer, states: torch.Tensor, prompt: str) -> str:
    """Greedy decoding written out: re-run the whole sequence under the prefix each step (no
    cache), take the argmax, stop at a stop token or after MAX_NEW tokens."""
    ids = encode_prompts([prompt], tokenizer, 128)["input_ids"]
    stops = set(stop_token_ids(tokenizer))
    new: list[int] = []
    with torch.no_grad():
        for _ in range(MAX_NEW):
            logits = forward_with_prefix(model, ids, torch.ones_like(ids), states).logits
            token = int(logits[0, -1].argmax())
            new.append(token)
            if token in stops:
                break
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return first_line(tokenizer.decode(new, skip_special_tokens=True))


def test_greedy_equals_a_hand_rolled_argmax_loop():
    model, tokenizer = tiny_model(), tiny_tokenizer()
    states = three_prefixes(model)
    got = generate_replies(
        model,
        tokenizer,
        states,
        PROMPTS,
        GenerationSettings(num_beams=1, max_new_tokens=MAX_NEW, no_repeat_ngram_size=0),
    )
    want = [hand_greedy(model, tokenizer, states[i : i + 1], p) for i, p in enumerate(PROMPTS)]
    assert got == want


def test_one_shared_prefix_of_shape_m_by_width_applies_to_every_row():
    model, tokenizer = tiny_model(), tiny_tokenizer()
    folded = tiny_prefix(model, seed=1, init_std=1.0).fold()
    shared = generate_replies(
        model, tokenizer, folded, PROMPTS, GenerationSettings(num_beams=2, max_new_tokens=6)
    )
    rows = folded.unsqueeze(0).expand(len(PROMPTS), -1, -1)
    assert shared == generate_replies(
        model, tokenizer, rows, PROMPTS, GenerationSettings(num_beams=2, max_new_tokens=6)
    )


def test_stop_tokens_are_eos_and_every_token_containing_a_newline():
    tokenizer = tiny_tokenizer()
    ids = stop_token_ids(tokenizer)
    assert tokenizer.eos_token_id in ids
    assert tokenizer.convert_tokens_to_ids("Ċ") in ids  # byte-level BPE's "\n"
    assert all("\n" in tokenizer.decode([i]) for i in ids if i != tokenizer.eos_token_id)


def test_a_reply_is_its_first_line_stripped():
    assert first_line("  i like dogs. \nA: me too") == "i like dogs."


def test_states_must_have_one_row_per_prompt():
    model, tokenizer = tiny_model(), tiny_tokenizer()
    with pytest.raises(FedpktError, match=r"^prefix states have shape \(2, 4, 64\); expected \(3,"):
        generate_replies(model, tokenizer, three_prefixes(model)[:2], PROMPTS)


def test_generation_leaves_the_model_mode_unchanged():
    model, tokenizer = tiny_model(), tiny_tokenizer()
    model.train()
    generate_replies(
        model, tokenizer, None, PROMPTS[:1], GenerationSettings(num_beams=2, max_new_tokens=3)
    )
    assert model.training
