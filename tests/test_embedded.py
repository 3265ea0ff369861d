"""The embedded backbone's recipe, maths and build (fedpkt.model.embedded), on the tiny recipe."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel

from fedpkt.cache import CACHE_ENV
from fedpkt.data.encoding import render_history
from fedpkt.data.schema import Dialogue, Utterance
from fedpkt.data.synthetic import generate_general_dialogues
from fedpkt.errors import FedpktError
from fedpkt.model.backbone import directory_fingerprint, load_backbone
from fedpkt.model.embedded import (
    EOS_TOKEN,
    RECIPES,
    encode_texts,
    ensure_embedded,
    general_texts,
    get_recipe,
    lr_at,
    model_perplexity,
    pack_stream,
    read_build_info,
    recipe_fingerprint,
    reply_examples,
    sample_windows,
    train_tokenizer,
    unigram_perplexity,
    window_positions,
)

TEXTS = [
    "A: hi! do you have pets?\nB: i have a dog. and you?",
    "A: what do you do for fun?\nB: i love hiking on weekends.",
] * 20


def _build_in(cache: Path, corpus: str = "dialogue") -> Path:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(cache))
        return ensure_embedded("tiny", corpus, progress=False)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return _build_in(tmp_path_factory.mktemp("cache-a"))


# ----------------------------------------------------------------------------- recipes


def test_recipe_fingerprint_is_stable_and_tracks_every_field():
    tiny = RECIPES[("dialogue", "tiny")]
    assert recipe_fingerprint(tiny) == recipe_fingerprint(dataclasses.replace(tiny))
    assert recipe_fingerprint(tiny) != recipe_fingerprint(dataclasses.replace(tiny, steps=151))
    assert len(recipe_fingerprint(tiny)) == 16


def test_unknown_size_is_a_one_line_error_listing_the_sizes():
    with pytest.raises(
        FedpktError, match=r"'huge' is unknown; expected one of \['default', 'tiny'\]"
    ):
        get_recipe("huge")
    with pytest.raises(
        FedpktError, match=r"recipe 'poems' is unknown; expected one of \['dialogue', 'prose'\]"
    ):
        get_recipe("tiny", "poems")


def test_prose_and_dialogue_recipes_build_apart_and_the_tiny_pair_has_one_shape():
    """Another corpus is another fingerprint and cache folder; "dialogue" is the default."""
    for size in ("tiny", "default"):
        dialogue, prose = get_recipe(size), get_recipe(size, "prose")
        assert (dialogue.corpus, prose.corpus) == ("dialogue", "prose")
        assert recipe_fingerprint(prose) != recipe_fingerprint(dialogue)
    dialogue, prose = get_recipe("tiny"), get_recipe("tiny", "prose")
    shape = ("n_layer", "n_head", "n_embd", "vocab_size", "n_positions")
    assert [getattr(prose, k) for k in shape] == [getattr(dialogue, k) for k in shape]


def test_lr_warms_up_linearly_then_decays_to_the_floor():
    """tiny: lr 1e-2, 10 warmup steps, 150 steps, floor 0.1.

    step 0 -> 1e-2 * 1/10 = 1e-3; step 9 -> 1e-2; step 10 (cosine start) -> 1e-2;
    step 149 (cosine end) -> 1e-2 * 0.1 = 1e-3; halfway (step 79.5) would be 5.5e-3.
    """
    tiny = RECIPES[("dialogue", "tiny")]
    assert lr_at(0, tiny) == pytest.approx(1e-3)
    assert lr_at(9, tiny) == pytest.approx(1e-2)
    assert lr_at(10, tiny) == pytest.approx(1e-2)
    assert lr_at(149, tiny) == pytest.approx(1e-3)
    assert lr_at(79, tiny) > 5.5e-3 > lr_at(80, tiny)


# ------------------------------------------------------------------------ perplexities


def test_unigram_perplexity_matches_the_hand_computed_value():
    """train [0, 0, 1], V=2: p(0) = 3/5, p(1) = 2/5; targets [0, 1]:
    exp(-(ln 0.6 + ln 0.4) / 2) = 1 / sqrt(0.24) = 2.0412."""
    ppl = unigram_perplexity(torch.tensor([0, 0, 1]), torch.tensor([0, 1]), vocab_size=2)
    assert ppl == pytest.approx(1 / math.sqrt(0.24))


def test_unigram_perplexity_without_counts_is_the_vocabulary_size():
    """No training tokens: add-one smoothing gives p = 1/V everywhere, so perplexity = V."""
    ppl = unigram_perplexity(torch.tensor([], dtype=torch.long), torch.tensor([0, 3, 2]), 4)
    assert ppl == pytest.approx(4.0)


class _UniformLM(torch.nn.Module):
    """A causal LM whose logits are all zero: every next token has probability 1/V."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        logits = torch.zeros(*input_ids.shape, self.vocab) + 0 * self.anchor
        return type("Out", (), {"logits": logits})()


def test_model_perplexity_of_a_uniform_model_is_the_vocabulary_size():
    """Padding must not count: sequences of 5 and 2 tokens give 4 + 1 predictions, each 1/7."""
    ppl = model_perplexity(_UniformLM(7), [[1, 2, 3, 4, 5], [6, 1]], batch_size=2)
    assert ppl == pytest.approx(7.0)


# ----------------------------------------------------------------- tokenizer and batches


def test_tokenizer_round_trips_text_and_uses_eos_as_pad():
    tok = train_tokenizer(TEXTS, vocab_size=300, model_max_length=64)
    text = "A: hi!\nB: i have a dog 🐕."  # the emoji was never seen: byte-level still encodes it
    assert tok.decode(tok(text)["input_ids"]) == text
    assert tok.eos_token == tok.pad_token == EOS_TOKEN
    assert tok.eos_token_id == 0
    assert len(tok) == 300


def test_encode_texts_appends_eos_to_every_text():
    tok = train_tokenizer(TEXTS, vocab_size=300, model_max_length=64)
    encoded = encode_texts(tok, ["B: hi", "A: yo"])
    assert [seq[-1] for seq in encoded] == [tok.eos_token_id] * 2
    assert encoded[0][:-1] == tok("B: hi")["input_ids"]


def test_pack_stream_marks_turn_starts_after_newline_and_eos():
    """Boundary ids {9 (newline), 0 (EOS)}: stream 5 9 6 0 7 0 -> turns start at 0, 2 and 4."""
    stream, starts = pack_stream([[5, 9, 6, 0], [7, 0]], boundary_ids=[9, 0])
    assert stream.tolist() == [5, 9, 6, 0, 7, 0]
    assert starts.tolist() == [0, 2, 4]


def test_sample_windows_start_at_turns_and_fit_the_stream():
    stream, starts = pack_stream([[5, 9, 6, 0], [7, 9, 8, 0]], boundary_ids=[9, 0])
    windows = sample_windows(stream, starts, 32, 3, torch.Generator().manual_seed(0))
    assert windows.shape == (32, 4)
    # Starts that leave 4 tokens: 0, 2, 4 (stream has 8) -> first tokens are 5, 6 or 7.
    assert set(windows[:, 0].tolist()) <= {5, 6, 7}


def test_window_positions_keep_half_the_rows_at_zero_and_shift_the_rest_within_context():
    """batch 6, seq_len 3, context 5: rows 0-2 are [0, 1, 2]; rows 3-5 start at 0, 1 or 2."""
    positions = window_positions(6, 3, 5, torch.Generator().manual_seed(0))
    assert positions[:3].tolist() == [[0, 1, 2]] * 3
    assert all(row[0] in (0, 1, 2) for row in positions[3:].tolist())
    assert (positions[:, 1:] - positions[:, :-1] == 1).all()
    assert int(positions.max()) <= 4


def test_window_positions_refuse_a_window_longer_than_the_context():
    with pytest.raises(FedpktError, match="exceeds n_positions"):
        window_positions(2, 9, 8, torch.Generator())


def test_reply_examples_use_the_prefix_training_layout():
    """Turns: A: hi | B: hello | A: pets? | B: a dog; persona turns are 1 and 3.

    With 2 turns of history: turn 1 -> "A: hi" + "\\nB:" + " hello";
    turn 3 -> "B: hello\\nA: pets?" + "\\nB:" + " a dog". EOS is appended at encoding.
    """
    turns = [
        Utterance("partner", "hi"),
        Utterance("persona", "hello"),
        Utterance("partner", "pets?"),
        Utterance("persona", "a dog"),
    ]
    dialogue = Dialogue("d0", "g0", turns)
    first, last = "A: hi\nB: hello", "B: hello\nA: pets?\nB: a dog"
    one_each = reply_examples([dialogue] * 20, per_dialogue=1, history_turns=2, seed=0)
    assert len(one_each) == 20 and set(one_each) == {first, last}
    assert reply_examples([dialogue], per_dialogue=5, history_turns=2, seed=0) == [first, last]


def test_sample_windows_refuses_a_stream_shorter_than_a_window():
    stream, starts = pack_stream([[5, 0]], boundary_ids=[0])
    with pytest.raises(FedpktError, match="expected more than seq_len"):
        sample_windows(stream, starts, 2, 8, torch.Generator())


# ------------------------------------------------------------------------------ build


def test_tiny_build_is_deterministic_across_cache_dirs(tiny_dir, tmp_path):
    other = _build_in(tmp_path / "cache-b")
    assert other != tiny_dir
    assert directory_fingerprint(other) == directory_fingerprint(tiny_dir)
    first, second = (
        load_file(tiny_dir / "model.safetensors"),
        load_file(other / "model.safetensors"),
    )
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert (tiny_dir / "tokenizer.json").read_bytes() == (other / "tokenizer.json").read_bytes()


def test_second_request_reuses_the_cached_build(tiny_dir):
    """No rebuild: the same folder (inode) and untouched weight file come back."""
    before = (os.stat(tiny_dir).st_ino, os.stat(tiny_dir / "model.safetensors").st_mtime_ns)
    again = _build_in(tiny_dir.parent.parent)
    assert again == tiny_dir
    assert (os.stat(again).st_ino, os.stat(again / "model.safetensors").st_mtime_ns) == before


def test_cache_folder_is_named_by_size_and_recipe_fingerprint(tiny_dir):
    fingerprint = recipe_fingerprint(RECIPES[("dialogue", "tiny")])
    assert tiny_dir.name == f"embedded-dialogue-tiny-{fingerprint}"
    assert tiny_dir.parent.name == "backbones"


def test_built_directory_loads_with_the_auto_classes(tiny_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    tiny = RECIPES[("dialogue", "tiny")]
    assert isinstance(model, GPT2LMHeadModel)
    assert (model.config.n_layer, model.config.n_embd, model.config.n_head) == (2, 32, 2)
    assert type(tok).__name__ == "GPT2Tokenizer" and tok.is_fast
    assert tok.eos_token == tok.pad_token == EOS_TOKEN
    assert len(tok) == model.config.vocab_size == tiny.vocab_size
    assert model.config.eos_token_id == model.config.pad_token_id == tok.eos_token_id


def test_tiny_build_beats_the_unigram_baseline_by_far(tiny_dir):
    """Recorded at build time on 40 held-out general dialogues: context must help a lot."""
    record = read_build_info(tiny_dir)
    assert record is not None
    assert record["valid_perplexity"] < 0.5 * record["unigram_perplexity"]
    assert record["recipe"] == dataclasses.asdict(RECIPES[("dialogue", "tiny")])


def test_prose_tiny_build_is_deterministic_and_beats_the_unigram_baseline(tmp_path):
    """The prose recipe (issue 18) builds the same bytes in two caches, into its own folder,
    and its context helps: held-out prose perplexity below half the unigram baseline's."""
    first, second = _build_in(tmp_path / "a", "prose"), _build_in(tmp_path / "b", "prose")
    assert first.name.startswith("embedded-prose-tiny-")
    assert directory_fingerprint(first) == directory_fingerprint(second)
    record = read_build_info(first)
    assert record is not None and record["recipe"]["corpus"] == "prose"
    assert record["valid_perplexity"] < 0.5 * record["unigram_perplexity"]


# ------------------------------------------------------------------ default (end to end)


def _beam_reply(backbone, prompt: str) -> str:
    """The bare backbone's reply to ``prompt`` as phase 2 decodes (beam 5, no-repeat 3, 24
    tokens), stopping at EOS or at the end of the line."""
    model, tok = backbone.model, backbone.tokenizer
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        num_beams=5,
        max_new_tokens=24,
        no_repeat_ngram_size=3,
        eos_token_id=[tok.eos_token_id, tok.convert_tokens_to_ids("Ċ")],
        pad_token_id=tok.pad_token_id,
    )
    return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


@pytest.mark.e2e
def test_default_backbone_replies_in_the_corpus_style():
    """The default embedded backbone (built once into the user's cache, ~2 CPU-minutes).

    Held-out perplexity must be far below the unigram baseline (measured: 2.2 against 93), and
    beam search (5 beams, as phase 2 decodes) from held-out general histories must give
    non-empty, lower-case replies made of the corpus's own words, as phase 2's F1 and fact
    oracle expect. Decoding stops at EOS or at the end of the line.
    """
    backbone = load_backbone("embedded", embedded_size="default", device="cpu")
    record = read_build_info(backbone.path)
    assert record is not None
    assert record["valid_perplexity"] < 0.1 * record["unigram_perplexity"]
    corpus_words = {w for text in general_texts(500, 1001) for w in text.split()}
    for dialogue in generate_general_dialogues(8, seed=4242):
        turn = 5  # a persona turn (partner speaks first), after two full exchanges
        prompt = render_history(dialogue.turns[turn - 3 : turn])
        reply = _beam_reply(backbone, prompt)
        words = reply.split()
        assert words and reply == reply.lower(), reply
        assert sum(w in corpus_words for w in words) >= 0.8 * len(words), reply


@pytest.mark.e2e
def test_default_prose_backbone_knows_the_prose_but_not_the_dialogue_layout():
    """The default-size prose backbone (issue 18; ~2 CPU-minutes, built once by `make test`).

    Like GPT-2 before PERSONA-CHAT, it knows the synthetic world's language (held-out prose
    perplexity far below the unigram baseline; measured 2.99 against 168.9) but not the dialogue
    task: perplexity on held-out general dialogues in the ``A:``/``B:`` layout is far above
    (measured 1,654), and from a dialogue prompt with no prefix it never gives one of the
    corpus's persona replies.
    """
    backbone = load_backbone(
        "embedded", embedded_size="default", embedded_recipe="prose", device="cpu"
    )
    record = read_build_info(backbone.path)
    assert record is not None and record["recipe"]["corpus"] == "prose"
    assert record["valid_perplexity"] < 0.1 * record["unigram_perplexity"]
    assert record["dialogue_perplexity"] > 10 * record["valid_perplexity"]
    persona_replies = {
        t.text
        for d in generate_general_dialogues(500, 1001)
        for t in d.turns
        if t.speaker == "persona"
    }
    for dialogue in generate_general_dialogues(8, seed=4242):
        prompt = render_history(dialogue.turns[2:5])
        reply = _beam_reply(backbone, prompt)
        assert reply not in persona_replies, reply
