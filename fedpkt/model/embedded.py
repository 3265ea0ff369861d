"""The embedded backbone: a small GPT-2 pretrained here, because no machine reaches a model hub.

PersonaPKT needs a *pretrained*, frozen causal LM: a prefix only steers what the backbone
already knows. This module builds one deterministically from a recipe: a byte-level BPE
tokenizer and a ``GPT2LMHeadModel`` trained on texts about the synthetic world whose people are
disjoint from Parts A/B/C. The default "dialogue" recipe trains on general dialogues laid out
exactly as prefix training presents them. The "prose" recipe (issue 18, opt-in) writes that
world in non-dialogue registers, so that, like GPT-2 before PERSONA-CHAT, the backbone knows
the language but not the ``A:``/``B:`` layout or the persona's reply policy: the prefix has to
learn them, which is what a source prefix transfers. The result is
an ordinary Hugging Face directory, so the embedded backbone, a local directory and a hub id
all load through the same ``from_pretrained`` path.

The directory is cached under ``<cache>/backbones/embedded-<corpus>-<size>-<fingerprint>``; the
fingerprint hashes the recipe, :data:`EMBEDDED_CODE_VERSION` and the corpus generators'
versions, so changing any of them builds a new directory instead of reusing a stale one.

Read top to bottom: recipes, corpus, tokenizer, training batches, perplexities, the build.
Build times: ``bench/backbone_build.py`` and bench/RESULTS.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, GPT2Tokenizer, PreTrainedTokenizerBase

from fedpkt.atomic import atomic_write_json
from fedpkt.cache import cache_path, materialize
from fedpkt.data import prose, synthetic
from fedpkt.data.encoding import render_dialogue, render_history, render_target
from fedpkt.data.schema import Dialogue
from fedpkt.data.synthetic import generate_general_dialogues
from fedpkt.errors import FedpktError

EMBEDDED_CODE_VERSION = 1
"""Bump when the build code changes what it produces: the cache key changes with it."""

EOS_TOKEN = "<|endoftext|>"
BUILD_INFO_FILE = "fedpkt_build.json"


# --------------------------------------------------------------------------------- recipes


@dataclass(frozen=True)
class EmbeddedRecipe:
    """Everything that determines the embedded backbone's bytes (hashed into its cache key).

    ``corpus`` picks the pretraining texts (:func:`pretraining_texts`): "prose", documents
    about ``train_units`` general people in non-dialogue registers (:mod:`fedpkt.data.prose`),
    or "dialogue", ``train_units`` general dialogues in the ``A:``/``B:`` layout plus
    ``reply_examples`` persona replies per dialogue in the prefix-training layout with
    ``history_turns`` turns of history (:func:`reply_examples`). ``valid_units`` of the same
    kind from ``valid_seed`` are held out for perplexity.
    Training samples ``batch_size`` windows of ``seq_len + 1`` tokens per step from the packed
    token stream, each starting at the beginning of a line or text (as a prefix-training prompt
    does). ``vocab_size`` is the BPE trainer's ceiling: it stops early once no pair of tokens
    occurs twice (the synthetic world's vocabulary is small). ``threads`` fixes torch's
    intra-op thread count during the build: float reductions depend on it, so pinning it
    makes the bytes (and the fingerprint) independent of the core count.
    """

    size: str
    corpus: str
    vocab_size: int
    n_layer: int
    n_head: int
    n_embd: int
    n_positions: int
    dropout: float
    train_units: int
    valid_units: int
    reply_examples: int
    history_turns: int
    corpus_seed: int
    valid_seed: int
    steps: int
    batch_size: int
    seq_len: int
    lr: float
    min_lr_ratio: float
    warmup_steps: int
    weight_decay: float
    seed: int
    threads: int


_DIALOGUE_RECIPES = (
    # Tests: a few seconds on one core; still clearly better than a unigram model.
    EmbeddedRecipe(
        size="tiny",
        corpus="dialogue",
        vocab_size=320,
        n_layer=2,
        n_head=2,
        n_embd=32,
        n_positions=256,
        dropout=0.0,
        train_units=200,
        valid_units=40,
        reply_examples=1,
        history_turns=3,
        corpus_seed=1001,
        valid_seed=2002,
        steps=150,
        batch_size=8,
        seq_len=64,
        lr=1e-2,
        min_lr_ratio=0.1,
        warmup_steps=10,
        weight_decay=0.0,
        seed=0,
        threads=1,
    ),
    # The embedded run (default). One thread: under a shared CPU a 2-thread build spends
    # its time in thread barriers (measured 5-8 s/step against 0.2 s/step single-threaded).
    EmbeddedRecipe(
        size="default",
        corpus="dialogue",
        vocab_size=2000,
        n_layer=4,
        n_head=4,
        n_embd=128,
        n_positions=256,
        dropout=0.0,
        train_units=3000,
        valid_units=200,
        reply_examples=2,
        history_turns=3,
        corpus_seed=1001,
        valid_seed=2002,
        steps=550,
        batch_size=8,
        seq_len=128,
        lr=3e-3,
        min_lr_ratio=0.1,
        warmup_steps=30,
        weight_decay=0.01,
        seed=0,
        threads=1,
    ),
)
# Issue 18: the same world in prose (fedpkt.data.prose), so that like GPT-2 before
# PERSONA-CHAT the backbone knows the language but not the dialogue task. Grown to 6 x 160
# (2.2 M parameters): on seed 0 the 4 x 128 prose backbone gave PersonaPKT a Part B F1 lead
# of 1.2 over random init, this one 2.0 (ablation in bench/RESULTS.md, "issue 18").
_PROSE_RECIPES = (
    # Tests: prose is less repetitive than the dialogues, so fewer people and more steps keep
    # the tiny build both a few seconds long and far below the unigram baseline.
    replace(
        _DIALOGUE_RECIPES[0],
        corpus="prose",
        train_units=60,
        valid_units=40,
        reply_examples=0,
        steps=400,
    ),
    replace(
        _DIALOGUE_RECIPES[1],
        corpus="prose",
        n_layer=6,
        n_head=5,
        n_embd=160,
        train_units=3000,
        valid_units=200,
        reply_examples=0,
    ),
)
RECIPES: dict[tuple[str, str], EmbeddedRecipe] = {
    (r.corpus, r.size): r for r in _DIALOGUE_RECIPES + _PROSE_RECIPES
}
CORPORA = ("dialogue", "prose")
"""The pretraining corpora a recipe can use; the first is the default.

"prose" stays opt-in until it meets issue 18's criteria (five seeds, bench/RESULTS.md "issue
18: the prose backbone"): so far PersonaPKT beats random init on Part C but not reliably on
Part B, and C stays below 0.1."""
DEFAULT_CORPUS = CORPORA[0]


def get_recipe(size: str, corpus: str = DEFAULT_CORPUS) -> EmbeddedRecipe:
    """The recipe of this size and corpus, or a one-line error listing the known ones."""
    if corpus not in CORPORA:
        raise FedpktError(
            f"embedded backbone recipe '{corpus}' is unknown; expected one of {list(CORPORA)}"
        )
    sizes = sorted({r.size for r in RECIPES.values()})
    if (corpus, size) not in RECIPES:
        raise FedpktError(f"embedded backbone size '{size}' is unknown; expected one of {sizes}")
    return RECIPES[(corpus, size)]


def recipe_fingerprint(recipe: EmbeddedRecipe) -> str:
    """16 hex digits of sha256 over the recipe's JSON, the code version and the corpus version.

    The corpus generator's ``GENERATOR_VERSION`` (if it declares one) is included so that a
    change to the synthetic corpus also invalidates a cached backbone trained on the old one.
    """
    payload = {
        "recipe": asdict(recipe),
        "code_version": EMBEDDED_CODE_VERSION,
        "corpus_version": _corpus_version(recipe.corpus),
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]


def embedded_path(size: str = "default", corpus: str = DEFAULT_CORPUS) -> Path:
    """Where the embedded backbone of this recipe lives in the cache (it may not exist yet)."""
    recipe = get_recipe(size, corpus)
    name = f"embedded-{recipe.corpus}-{recipe.size}-{recipe_fingerprint(recipe)}"
    return cache_path("backbones", name)


def ensure_embedded(
    size: str = "default",
    corpus: str = DEFAULT_CORPUS,
    *,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """The embedded backbone's directory, building it first if it is not cached (or ``force``).

    Safe to call from many processes at once: one builds, the others wait and then reuse it.
    """
    recipe = get_recipe(size, corpus)
    target = embedded_path(size, corpus)
    materialize(target, lambda out: build_embedded(recipe, out, progress=progress), force=force)
    return target


def read_build_info(path: str | Path) -> dict[str, Any] | None:
    """The build record (recipe, seconds, perplexities) of an embedded directory, else None."""
    file = Path(path) / BUILD_INFO_FILE
    if not file.is_file():
        return None
    return json.loads(file.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------- corpus


def _corpus_version(corpus: str) -> Any:
    """The versions of the generators a corpus is written by (prose uses the synthetic
    generator's people too), so a change to either rebuilds only the backbones it feeds."""
    generator = getattr(synthetic, "GENERATOR_VERSION", None)
    return [generator, prose.PROSE_VERSION] if corpus == "prose" else generator


@dataclass(frozen=True)
class PretrainingTexts:
    """What a recipe trains on: ``train`` (tokenizer and LM), ``extra`` (LM only), ``valid``."""

    train: list[str]
    extra: list[str]
    valid: list[str]
    summary: str


def pretraining_texts(recipe: EmbeddedRecipe) -> PretrainingTexts:
    """The recipe's corpus, deterministic from its seeds.

    "dialogue": ``train_units`` general dialogues in the ``A:``/``B:`` layout plus
    :func:`reply_examples`; "prose": documents about ``train_units`` general people in
    non-dialogue registers (:mod:`fedpkt.data.prose`). Held out: ``valid_units`` of the same
    kind from ``valid_seed``.
    """
    if recipe.corpus == "prose":
        return PretrainingTexts(
            train=prose.prose_documents(recipe.train_units, recipe.corpus_seed),
            extra=[],
            valid=prose.prose_documents(recipe.valid_units, recipe.valid_seed),
            summary=f"{3 * recipe.train_units} prose documents",
        )
    dialogues = generate_general_dialogues(recipe.train_units, recipe.corpus_seed)
    examples = reply_examples(
        dialogues, recipe.reply_examples, recipe.history_turns, recipe.corpus_seed
    )
    return PretrainingTexts(
        train=[render_dialogue(d) for d in dialogues],
        extra=examples,
        valid=general_texts(recipe.valid_units, recipe.valid_seed),
        summary=f"{len(dialogues)} dialogues, {len(examples)} replies",
    )


def general_texts(num_dialogues: int, seed: int) -> list[str]:
    """``num_dialogues`` general synthetic dialogues rendered for LM training (no EOS yet).

    General personas are disjoint from Parts A/B/C, so pretraining never sees a client's text.
    """
    return [render_dialogue(d) for d in generate_general_dialogues(num_dialogues, seed)]


def reply_examples(
    dialogues: Sequence[Dialogue], per_dialogue: int, history_turns: int, seed: int
) -> list[str]:
    """Texts in the exact prefix-training layout: ``render_history(window) + render_target(reply)``.

    A whole dialogue has EOS only after its last turn, so from dialogues alone the backbone
    would never learn that a persona reply may end the sequence; prefix training (target +
    EOS) and beam search both rely on it. ``per_dialogue`` persona turns per dialogue are drawn
    (seeded), each with the ``history_turns`` utterances before it, as
    ``fedpkt.data`` builds examples. E.g. turns [A: hi, B: hello, A: pets?, B: a dog] with
    history 3 and the last turn drawn -> "B: hello\nA: pets?\nB: a dog" (EOS added later).
    """
    rng = random.Random(f"fedpkt-embedded-examples|{seed}")
    texts: list[str] = []
    for dialogue in dialogues:
        replies = [k for k, turn in enumerate(dialogue.turns) if turn.speaker == "persona"]
        for k in sorted(rng.sample(replies, min(per_dialogue, len(replies)))):
            history = dialogue.turns[max(0, k - history_turns) : k]
            texts.append(render_history(history) + render_target(dialogue.turns[k].text))
    return texts


# ------------------------------------------------------------------------------- tokenizer


def train_tokenizer(texts: Sequence[str], vocab_size: int, model_max_length: int) -> GPT2Tokenizer:
    """A GPT-2-style byte-level BPE tokenizer trained on ``texts``.

    Like GPT-2, ``<|endoftext|>`` (id 0) is the only special token and serves as bos, eos,
    unk and pad; code that pads must therefore mask by ``attention_mask``, never by pad id.
    Byte-level means every string is encodable, whatever a user types in ``fedpkt chat``.
    """
    if vocab_size <= 257:
        raise FedpktError(f"tokenizer vocab_size is {vocab_size}; expected > 257 (256 bytes + EOS)")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    spec = json.loads(bpe.to_str())["model"]
    return GPT2Tokenizer(
        vocab=spec["vocab"],
        merges=[tuple(pair) for pair in spec["merges"]],
        pad_token=EOS_TOKEN,
        model_max_length=model_max_length,
    )


def encode_texts(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text followed by EOS (the end of a dialogue is something to learn)."""
    ids = tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
    return [[*seq, tokenizer.eos_token_id] for seq in ids]


# ------------------------------------------------------------------------ training batches


def pack_stream(
    sequences: Sequence[Sequence[int]], boundary_ids: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate sequences into one stream and list where turns start.

    Returns ``(stream, starts)``: ``stream`` (N,) int64; ``starts`` (S,) int64, the positions
    whose previous token is one of ``boundary_ids`` (newline, EOS), plus position 0. Starting
    training windows there mirrors prefix training, whose prompts begin with a speaker tag.
    """
    stream = torch.tensor([tok for seq in sequences for tok in seq], dtype=torch.long)
    after = torch.isin(stream[:-1], torch.tensor(list(boundary_ids), dtype=torch.long))
    starts = torch.cat([torch.zeros(1, dtype=torch.long), torch.nonzero(after).flatten() + 1])
    return stream, starts


def sample_windows(
    stream: torch.Tensor,
    starts: torch.Tensor,
    batch_size: int,
    seq_len: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """(batch_size, seq_len + 1) token windows, each beginning at a random turn start.

    Inputs are ``window[:, :-1]`` and next-token labels ``window[:, 1:]``.
    """
    usable = starts[starts <= stream.numel() - (seq_len + 1)]
    if usable.numel() == 0:
        raise FedpktError(
            f"training stream has {stream.numel()} tokens; expected more than seq_len+1="
            f"{seq_len + 1}"
        )
    pick = usable[torch.randint(usable.numel(), (batch_size,), generator=generator)]
    offsets = pick[:, None] + torch.arange(seq_len + 1)[None, :]
    return stream[offsets]


def window_positions(
    batch_size: int, seq_len: int, n_positions: int, generator: torch.Generator
) -> torch.Tensor:
    """(batch_size, seq_len) position ids: the first half of the rows at 0, the rest shifted.

    Windows are shorter than the context (cheaper steps), so without a shift the position
    embeddings past ``seq_len`` would stay random. Later a prefix of m virtual tokens puts the
    prompt at positions m, m+1, ...; shifted rows (offset uniform in [0, n_positions -
    seq_len]) train every position and that case, unshifted rows a prompt with no prefix.
    E.g. batch 2, seq_len 3, n_positions 5: row 0 is [0, 1, 2]; row 1 is [k, k+1, k+2], k <= 2.
    """
    if seq_len > n_positions:
        raise FedpktError(f"seq_len={seq_len} exceeds n_positions={n_positions}; expected <=")
    offsets = torch.randint(n_positions - seq_len + 1, (batch_size,), generator=generator)
    offsets[: batch_size // 2] = 0
    return offsets[:, None] + torch.arange(seq_len)[None, :]


def lr_at(step: int, recipe: EmbeddedRecipe) -> float:
    """Learning rate at ``step`` (0-based): linear warmup, then cosine decay to a floor.

    E.g. lr=1e-2, warmup 10, 150 steps, floor 0.1: step 0 -> 1e-3, step 9 -> 1e-2,
    the last step -> ~1e-3.
    """
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    span = max(1, recipe.steps - recipe.warmup_steps - 1)
    progress = min(1.0, (step - recipe.warmup_steps) / span)
    floor = recipe.min_lr_ratio
    return recipe.lr * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))


# ---------------------------------------------------------------------------- perplexities


def unigram_perplexity(train_ids: torch.Tensor, targets: torch.Tensor, vocab_size: int) -> float:
    """Perplexity of an add-one-smoothed unigram model fitted on ``train_ids`` over ``targets``.

    p(t) = (count(t) + 1) / (N + V). The baseline a pretrained LM must beat by far: it knows
    word frequencies but nothing of context. E.g. train [0, 0, 1], V=2: p(0)=3/5, p(1)=2/5;
    targets [0, 1] -> exp(-(ln 0.6 + ln 0.4) / 2) = 1/sqrt(0.24) ~ 2.041.
    """
    counts = torch.bincount(train_ids.flatten(), minlength=vocab_size).double()[:vocab_size]
    probs = (counts + 1.0) / (counts.sum() + vocab_size)
    return float(torch.exp(-probs.log()[targets.flatten()].mean()))


@torch.inference_mode()
def model_perplexity(
    model: torch.nn.Module,
    sequences: Sequence[Sequence[int]],
    batch_size: int = 16,
) -> float:
    """Token-level perplexity of a causal LM over each sequence's tokens after the first.

    Sequences are batched by length, right-padded and masked, so every real next-token
    prediction counts once: exp(total NLL / number of predicted tokens).
    """
    device = next(model.parameters()).device
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(order), batch_size):
        batch = [sequences[i] for i in order[start : start + batch_size]]
        width = max(len(seq) for seq in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for row, seq in enumerate(batch):
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        ids, mask = ids.to(device), mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        labels = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), labels.reshape(-1), reduction="sum"
        )
        total_nll += float(nll)
        total_tokens += int((labels != -100).sum())
    if total_tokens == 0:
        raise FedpktError("perplexity needs at least one sequence of two or more tokens")
    return math.exp(total_nll / total_tokens)


@dataclass(frozen=True)
class PerplexityReport:
    """A backbone's perplexities on the recipe's held-out texts, next to the unigram baseline.

    ``valid_perplexity`` is on held-out texts of the recipe's own corpus (``valid_texts`` texts,
    ``valid_tokens`` predicted tokens) and ``unigram_perplexity`` the baseline on the same
    tokens. ``dialogue_perplexity`` is on held-out general dialogues in the ``A:``/``B:``
    layout, whatever the recipe: a "prose" backbone has never seen that layout, so it is far
    above ``valid_perplexity`` there, as GPT-2's is on PERSONA-CHAT.
    """

    valid_perplexity: float
    unigram_perplexity: float
    dialogue_perplexity: float
    valid_texts: int
    valid_tokens: int


def perplexity_report(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    recipe: EmbeddedRecipe,
    *,
    texts: PretrainingTexts | None = None,
) -> PerplexityReport:
    """Score any causal LM + tokenizer on the recipe's held-out texts and general dialogues.

    The unigram baseline is fitted on the recipe's training texts *in this tokenizer*, so both
    numbers are per token of the same tokenization. Texts are regenerated unless given.
    Sequences are cut to the model's context (at most ``recipe.n_positions`` tokens).
    """
    texts = texts or pretraining_texts(recipe)
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    limit = min(recipe.n_positions, context or recipe.n_positions)

    def cut(values: Sequence[str]) -> list[list[int]]:
        return [seq[:limit] for seq in encode_texts(tokenizer, values)]

    valid = cut(texts.valid)
    dialogues = (
        valid
        if recipe.corpus == "dialogue"
        else cut(general_texts(recipe.valid_units, recipe.valid_seed))
    )
    train = torch.tensor([t for seq in encode_texts(tokenizer, texts.train) for t in seq])
    targets = torch.tensor([t for seq in valid for t in seq[1:]])
    vocab = max(len(tokenizer), int(train.max()) + 1, int(targets.max()) + 1)
    return PerplexityReport(
        valid_perplexity=model_perplexity(model, valid),
        unigram_perplexity=unigram_perplexity(train, targets, vocab),
        dialogue_perplexity=model_perplexity(model, dialogues),
        valid_texts=len(valid),
        valid_tokens=int(targets.numel()),
    )


# ----------------------------------------------------------------------------------- build


@contextmanager
def _progress(enabled: bool) -> Iterator[Progress]:
    """A rich progress display on stderr (stdout stays clean for JSON-printing callers)."""
    bar = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[note]}"),
        console=Console(stderr=True),
        disable=not enabled,
    )
    with bar:
        yield bar


def _model_config(recipe: EmbeddedRecipe, tokenizer: GPT2Tokenizer) -> GPT2Config:
    eos = tokenizer.eos_token_id
    return GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=recipe.n_positions,
        n_embd=recipe.n_embd,
        n_layer=recipe.n_layer,
        n_head=recipe.n_head,
        resid_pdrop=recipe.dropout,
        embd_pdrop=recipe.dropout,
        attn_pdrop=recipe.dropout,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
        tie_word_embeddings=True,
    )


def train_model(
    recipe: EmbeddedRecipe,
    tokenizer: GPT2Tokenizer,
    train_sequences: Sequence[Sequence[int]],
    progress: Progress | None = None,
) -> tuple[GPT2LMHeadModel, float]:
    """Pretrain a fresh GPT-2 on the packed stream; returns (model in eval mode, last loss).

    Deterministic for a given recipe (which pins the thread count): the init, the windows and
    their position shifts are seeded from ``recipe.seed``; AdamW with warmup + cosine
    (:func:`lr_at`), gradient clipping at 1.0.
    """
    torch.manual_seed(recipe.seed)
    model = GPT2LMHeadModel(_model_config(recipe, tokenizer))
    model.train()
    newline = tokenizer.convert_tokens_to_ids("Ċ")  # byte-level BPE's spelling of "\n"
    stream, starts = pack_stream(train_sequences, [tokenizer.eos_token_id, newline])
    generator = torch.Generator().manual_seed(recipe.seed)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": recipe.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=recipe.lr,
        betas=(0.9, 0.98),
    )
    task = progress.add_task("pretraining", total=recipe.steps, note="") if progress else None
    ema_loss = float("nan")
    for step in range(recipe.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, recipe)
        window = sample_windows(stream, starts, recipe.batch_size, recipe.seq_len, generator)
        inputs = window[:, :-1]
        positions = window_positions(
            recipe.batch_size, recipe.seq_len, recipe.n_positions, generator
        )
        # An all-ones mask: EOS doubles as pad, so HF would otherwise warn of unmasked padding.
        mask = torch.ones_like(inputs)
        logits = model(input_ids=inputs, attention_mask=mask, position_ids=positions).logits
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), window[:, 1:].reshape(-1)
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        value = float(loss.detach())
        ema_loss = value if math.isnan(ema_loss) else 0.95 * ema_loss + 0.05 * value
        if progress is not None and task is not None:
            progress.update(task, advance=1, note=f"loss {ema_loss:.3f}")
    model.eval()
    return model, ema_loss


@contextmanager
def _pinned_threads(threads: int) -> Iterator[None]:
    """Run with exactly ``threads`` intra-op threads, restoring the caller's setting after."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def quiet_hf_progress() -> Iterator[None]:
    """Hide transformers' tqdm bars (saving/loading weights): fedpkt reports progress itself."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def build_embedded(recipe: EmbeddedRecipe, out_dir: str | Path, *, progress: bool = True) -> dict:
    """Build the embedded backbone into ``out_dir`` (an HF directory); returns the build record.

    Writes config.json, generation_config.json, model.safetensors, the tokenizer files and
    ``fedpkt_build.json`` (recipe, fingerprint, seconds, perplexities, library versions).
    Callers normally go through :func:`ensure_embedded`, which adds caching and locking.
    """
    import transformers

    out = Path(out_dir)
    started = time.perf_counter()
    with _pinned_threads(recipe.threads), _progress(progress) as bar:
        corpus = bar.add_task(f"{recipe.corpus} corpus", total=1, note="")
        texts = pretraining_texts(recipe)
        bar.update(corpus, advance=1, note=texts.summary)
        tok_task = bar.add_task("tokenizer", total=1, note="")
        tokenizer = train_tokenizer(texts.train, recipe.vocab_size, recipe.n_positions)
        train_sequences = encode_texts(tokenizer, texts.train + texts.extra)
        bar.update(tok_task, advance=1, note=f"vocab {len(tokenizer)}")
        model, final_loss = train_model(recipe, tokenizer, train_sequences, bar)
        eval_task = bar.add_task("held-out perplexity", total=1, note="")
        report = perplexity_report(model, tokenizer, recipe, texts=texts)
        bar.update(eval_task, advance=1, note=f"{report.valid_perplexity:.2f}")
    with quiet_hf_progress():
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    record = {
        "recipe": asdict(recipe),
        "recipe_fingerprint": recipe_fingerprint(recipe),
        "code_version": EMBEDDED_CODE_VERSION,
        "build_seconds": round(time.perf_counter() - started, 2),
        "final_train_loss": round(final_loss, 4),
        "num_params": sum(p.numel() for p in model.parameters()),
        **asdict(report),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    atomic_write_json(out / BUILD_INFO_FILE, record)
    return record
