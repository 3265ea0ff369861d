"""Tiny, fast stand-ins shared by the training and generation tests.

A byte-level BPE tokenizer trained (in milliseconds) on a few persona lines with the embedded
backbone's own recipe function, and a randomly initialised 2-layer GPT-2 of width 16: real HF
models and tokenizers, small enough that a whole test file runs in seconds on one core.
"""

from __future__ import annotations

import functools

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from fedpkt.data.encoding import EncodedExample, encode_example
from fedpkt.data.schema import Example, Utterance
from fedpkt.model.embedded import train_tokenizer
from fedpkt.model.prefix import PersonaPrefix, prefix_shape_for

torch.set_num_threads(1)

LINES = [
    ("hi! how are you today?", "i am great, i just walked my dog."),
    ("what do you do for fun?", "i like to paint and play chess."),
    ("do you have any pets?", "yes, a dog named max."),
    ("where do you live?", "i live in a small town by the sea."),
    ("what is your job?", "i am a nurse at the city hospital."),
    ("any hobbies?", "i play the guitar every evening."),
]
PROMPTS = ["A: hi! how are you today?\nB:", "A: any hobbies?\nB:", "A: where do you live?\nB:"]
NUM_VIRTUAL_TOKENS = 4
PROJECTION_HIDDEN = 8
INIT_RANGE = 0.3  # larger than GPT-2's 0.02 so that a random model is not near-uniform


@functools.cache
def tiny_tokenizer():
    """A GPT-2-style tokenizer (EOS id 0, also pad) over the ``LINES`` vocabulary."""
    texts = [f"A: {q}\nB: {a}" for q, a in LINES] * 4
    return train_tokenizer(texts, vocab_size=300, model_max_length=128)


def tiny_model(seed: int = 0) -> GPT2LMHeadModel:
    """A random 2-layer GPT-2 (width 16, 2 heads, 64 positions), frozen, in eval mode."""
    tokenizer = tiny_tokenizer()
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=64,
        n_embd=16,
        n_layer=2,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
        initializer_range=INIT_RANGE,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    model.requires_grad_(False)
    return model.eval()


def tiny_prefix(model: GPT2LMHeadModel, seed: int = 0, init_std: float = 0.02) -> PersonaPrefix:
    """A reparameterised prefix of 4 virtual tokens (MLP hidden 8) for ``model``."""
    shape = prefix_shape_for(model.config, NUM_VIRTUAL_TOKENS)
    return PersonaPrefix(shape, PROJECTION_HIDDEN, seed=seed, init_std=init_std)


def examples(lines: list[tuple[str, str]] | None = None) -> list[EncodedExample]:
    """``LINES`` (or ``lines``) as encoded (prompt, reply) examples, at most 48 tokens each."""
    tokenizer = tiny_tokenizer()
    return [
        encode_example(
            Example(history=[Utterance("partner", q)], response=Utterance("persona", a)),
            tokenizer,
            48,
        )
        for q, a in (lines or LINES)
    ]


def parameters_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of a module's parameters, by name."""
    return {name: p.detach().clone() for name, p in module.named_parameters()}
