"""How dialogue text is laid out for a causal LM: one format for pretraining, training and chat.

The embedded backbone is pretrained on exactly this layout, so a prefix trained later conditions
a model that already knows where a reply starts. Speaker tags are plain text ("A:" partner,
"B:" persona) so that any tokenizer (GPT-2's, the embedded BPE, a Llama one) can use them.
"""

from __future__ import annotations

from collections.abc import Sequence

from fedpkt.data.schema import Dialogue, Utterance

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
