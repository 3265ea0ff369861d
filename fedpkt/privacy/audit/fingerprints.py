"""What the audit searches for in one client's replies: the client's data as words and
backbone token ids (:func:`client_sequences`), their windows and hashes, the generic
windows shared by many clients (:class:`GenericSets`), and the per-client search tables
(:class:`Fingerprint`).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from fedpkt.data.encoding import render_dialogue, render_history, render_target
from fedpkt.data.examples import examples_from_dialogues
from fedpkt.data.schema import ClientData
from fedpkt.privacy.audit.byte_search import ByteScanner

TEXT_NGRAM = 8
"""Words per dialogue-text window: long enough that a hit means a copied sentence."""
TOKEN_WINDOW = 8
"""Token ids per window (the issue's 'runs of >= 8 ids')."""
MIN_SENTENCE_WORDS = 3
MIN_SENTENCE_CHARS = 8
GENERIC_SHARE = 0.10
GENERIC_FLOOR = 3
MIN_DISTINCT_IDS = 3
"""A token window with fewer distinct ids (e.g. a run of one id) would match zero-filled or
constant arrays, so it is not searched for."""

SourceKind = Literal["dialogue", "persona", "canary"]
WindowSpace = Literal["words", "ids"]
_PRIORITY = {"dialogue": 0, "persona": 1, "canary": 2}
_WORD = re.compile(r"\w+")


def generic_min_clients(num_clients: int) -> int:
    """How many clients must share a window for it to count as generic chit-chat.

    ``max(3, ceil(10% of clients))``: a window in at least a tenth of all personas' data is
    k-anonymous for a large k and says nothing about the sender. The floor of 3 keeps text that
    two clients share (PERSONA-CHAT lists each conversation under both speakers) identifying.
    E.g. 14 clients -> 3, 60 -> 6, 1293 -> 130.
    """
    return max(GENERIC_FLOOR, math.ceil(GENERIC_SHARE * num_clients))


@dataclass(frozen=True)
class Source:
    """Where a searched-for sequence comes from in one client's data."""

    kind: SourceKind
    label: str


@dataclass
class ClientSequences:
    """One client's data as texts and token-id sequences (int64 arrays), each with its Source."""

    client_id: str
    texts: list[tuple[str, Source]]
    tokens: list[tuple[np.ndarray, Source]]

    def digest(self) -> str:
        """SHA-256 of everything searched for (texts, token ids, sources): two scans that agree
        on it searched for the same data with the same tokenizer."""
        h = hashlib.sha256(self.client_id.encode("utf-8"))
        for text, source in self.texts:
            h.update(f"\0{source.kind}\0{source.label}\0{text}".encode())
        for tokens, source in self.tokens:
            h.update(f"\0{source.kind}\0{source.label}\0".encode())
            h.update(np.ascontiguousarray(tokens, dtype="<i8").tobytes())
        return h.hexdigest()


def words_of(text: str) -> list[str]:
    """Lower-cased ``\\w+`` words: the same split for the client's data and for payload text."""
    return _WORD.findall(text.lower())


def client_sequences(data: ClientData, tokenizer: Any, history_turns: int) -> ClientSequences:
    """Everything of ``data`` the audit searches for, as words and as backbone token ids.

    Dialogues (all splits) contribute each utterance, the dialogue rendered as the model reads
    it, the turns joined by spaces (words only), and each training example as the client
    encodes it (prompt ids + reply ids + EOS, before truncation: truncating only removes
    windows); the persona contributes each description sentence and the whole description;
    canaries each planted sentence. Single sentences are tokenized with and without a leading
    space, because BPE spells a word differently at the start of a text. Two batched tokenizer
    calls per client.
    """
    client_id = str(data.meta.get("client_id", data.persona.persona_id))
    texts: list[tuple[str, Source]] = []  # single sentences: tokenized with and without " "
    dialogues_text: list[tuple[str, Source]] = []  # whole dialogues: words, and ids as is
    for split, dialogues in sorted(data.splits.items()):
        for dialogue in dialogues:
            source = Source("dialogue", f"{split} dialogue {dialogue.dialogue_id}")
            for turn, utterance in enumerate(dialogue.turns):
                texts.append((utterance.text, Source("dialogue", f"{source.label} turn {turn}")))
            dialogues_text.append((render_dialogue(dialogue), source))
    for number, sentence in enumerate(data.persona.sentences):
        texts.append((sentence, Source("persona", f"persona sentence {number}")))
    for number, canary in enumerate(data.meta.get("canaries", []) or []):
        texts.append((str(canary["text"]), Source("canary", f"canary {number}")))
    description = (" ".join(data.persona.sentences), Source("persona", "persona description"))
    variants = [t for text, _ in texts for t in (text, f" {text}")]
    variants += [text for text, _ in dialogues_text] + [description[0]]
    sources = [source for _, source in texts for _ in (0, 1)]
    sources += [source for _, source in dialogues_text] + [description[1]]
    encoded = tokenizer(variants, add_special_tokens=False)["input_ids"]
    tokens = [(np.asarray(ids, np.int64), src) for ids, src in zip(encoded, sources, strict=True)]
    examples = [
        (f"{split} example {number}", example)
        for split, dialogues in sorted(data.splits.items())
        for number, example in enumerate(examples_from_dialogues(dialogues, history_turns))
    ]
    if examples:
        parts = [render_history(e.history) for _, e in examples]
        parts += [render_target(e.response.text) for _, e in examples]
        ids = tokenizer(parts, add_special_tokens=False)["input_ids"]
        eos = getattr(tokenizer, "eos_token_id", None)
        tail = [int(eos)] if eos is not None else []
        for i, (label, _) in enumerate(examples):
            sequence = np.asarray([*ids[i], *ids[len(examples) + i], *tail], np.int64)
            tokens.append((sequence, Source("dialogue", label)))
    joined = [
        (" ".join(u.text for u in d.turns), Source("dialogue", f"{split} dialogue {d.dialogue_id}"))
        for split, dialogues in sorted(data.splits.items())
        for d in dialogues
    ]
    return ClientSequences(client_id, [*texts, *dialogues_text, *joined, description], tokens)


def _text_windows(words: list[str], n: int) -> list[str]:
    return [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]


def id_windows(sequences: Sequence[np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Every length-n window of every sequence: a (count, n) int64 array, and for each row the
    index of the sequence it comes from (one gather over the concatenation, no Python loop)."""
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    if len(sequences) == 0 or lengths.max(initial=0) < n:
        return np.zeros((0, n), dtype=np.int64), np.zeros(0, dtype=np.int64)
    flat = np.concatenate([np.asarray(s, dtype=np.int64) for s in sequences])
    ends = np.cumsum(lengths)
    counts = np.maximum(lengths - n + 1, 0)
    owner = np.repeat(np.arange(len(sequences)), counts)
    first = np.repeat(ends - lengths, counts)
    step = np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts)
    starts = first + step
    return flat[starts[:, None] + np.arange(n)], owner


_MULTIPLIERS = np.array(
    [
        0x9E3779B97F4A7C15,
        0xC2B2AE3D27D4EB4F,
        0x165667B19E3779F9,
        0xD6E8FEB86659FD93,
        0xFF51AFD7ED558CCD,
        0xC4CEB9FE1A85EC53,
        0x94D049BB133111EB,
        0xBF58476D1CE4E5B9,
    ],
    dtype=np.uint64,
)


def window_hashes(windows: np.ndarray) -> np.ndarray:
    """64-bit hashes of the rows of a (count, 8) id array (equal rows, equal hashes)."""
    if len(windows) == 0:
        return np.zeros(0, dtype=np.uint64)
    mixed = (windows.astype(np.uint64) + np.uint64(1)) * _MULTIPLIERS[: windows.shape[1]]
    h = np.bitwise_xor.reduce(mixed, axis=1)
    h ^= h >> np.uint64(31)
    return h * np.uint64(0x94D049BB133111EB)


def text_hash(window: str) -> int:
    """A 64-bit hash of a text window, the same in every process (the egress mod records it,
    the audit compares it with its generic windows)."""
    return int.from_bytes(hashlib.blake2b(window.encode("utf-8"), digest_size=8).digest(), "little")


def id_hash(window: Sequence[int]) -> int:
    """:func:`window_hashes` of one id window."""
    return int(window_hashes(np.asarray([window], dtype=np.int64))[0])


def dialogue_keys(seqs: ClientSequences) -> tuple[np.ndarray, np.ndarray]:
    """Unique hashes of this client's dialogue text windows and dialogue token windows."""
    text = {
        text_hash(w)
        for t, src in seqs.texts
        if src.kind == "dialogue"
        for w in _text_windows(words_of(t), TEXT_NGRAM)
    }
    windows, _ = id_windows([t for t, src in seqs.tokens if src.kind == "dialogue"], TOKEN_WINDOW)
    id_hashes = window_hashes(windows)
    return np.unique(np.fromiter(text, dtype=np.uint64, count=len(text))), np.unique(id_hashes)


@dataclass(frozen=True)
class GenericSets:
    """Sorted hashes of dialogue windows shared by at least ``min_clients`` clients."""

    text: np.ndarray
    ids: np.ndarray
    min_clients: int

    @classmethod
    def count(
        cls, per_client: Iterable[tuple[np.ndarray, np.ndarray]], num_clients: int
    ) -> GenericSets:
        """Document frequency over clients (each client's hashes are unique already)."""
        threshold = generic_min_clients(num_clients)
        texts, ids = [], []
        for text, id_hashes in per_client:
            texts.append(text)
            ids.append(id_hashes)

        def frequent(parts: list[np.ndarray]) -> np.ndarray:
            if not parts:
                return np.zeros(0, dtype=np.uint64)
            values, counts = np.unique(np.concatenate(parts), return_counts=True)
            return values[counts >= threshold]

        return cls(frequent(texts), frequent(ids), threshold)

    @classmethod
    def none(cls) -> GenericSets:
        """No window is generic: what a client searches with, knowing only its own data (the
        audit drops the generic windows from its findings afterwards)."""
        empty = np.zeros(0, dtype=np.uint64)
        return cls(empty, empty, 0)

    def holds(self, space: WindowSpace, window_hash: int) -> bool:
        """Is this text ("words") or token ("ids") window generic?"""
        values = self.text if space == "words" else self.ids
        return bool(_contains(values, np.array([window_hash], dtype=np.uint64))[0])


def _contains(sorted_values: np.ndarray, values: np.ndarray) -> np.ndarray:
    if len(sorted_values) == 0 or len(values) == 0:
        return np.zeros(len(values), dtype=bool)
    idx = np.searchsorted(sorted_values, values)
    idx[idx == len(sorted_values)] = 0
    return sorted_values[idx] == values


@dataclass
class Fingerprint:
    """What to search for in one client's replies: word windows and id windows, by Source."""

    client_id: str
    text: dict[int, dict[str, Source]]
    first_words: dict[int, set[str]]
    ids: dict[tuple[int, ...], Source]
    scanner: ByteScanner

    @classmethod
    def build(cls, seqs: ClientSequences, generic: GenericSets) -> Fingerprint:
        """Dialogue windows minus generic ones; persona sentences and canaries always."""
        text: dict[int, dict[str, Source]] = {}

        def add_text(window: str, length: int, source: Source) -> None:
            table = text.setdefault(length, {})
            old = table.get(window)
            if old is None or _PRIORITY[source.kind] > _PRIORITY[old.kind]:
                table[window] = source

        for text_unit, source in seqs.texts:
            words = words_of(text_unit)
            if source.kind == "dialogue":
                windows = _text_windows(words, TEXT_NGRAM)
                hashes = np.fromiter((text_hash(w) for w in windows), np.uint64, len(windows))
                for window, generic_hit in zip(
                    windows, _contains(generic.text, hashes), strict=True
                ):
                    if not generic_hit:
                        add_text(window, TEXT_NGRAM, source)
            elif len(words) >= TEXT_NGRAM:
                for window in _text_windows(words, TEXT_NGRAM):
                    add_text(window, TEXT_NGRAM, source)
            elif len(words) >= MIN_SENTENCE_WORDS and len(" ".join(words)) >= MIN_SENTENCE_CHARS:
                add_text(" ".join(words), len(words), source)
        sources = [source for _, source in seqs.tokens]
        windows, owner = id_windows([tokens for tokens, _ in seqs.tokens], TOKEN_WINDOW)
        private = np.array([s.kind != "dialogue" for s in sources], dtype=bool)[owner]
        keep = private | ~_contains(generic.ids, window_hashes(windows))
        ordered = np.sort(windows, axis=1)
        keep &= 1 + np.count_nonzero(np.diff(ordered, axis=1), axis=1) >= MIN_DISTINCT_IDS
        ids: dict[tuple[int, ...], Source] = {}
        for row, index in zip(windows[keep].tolist(), owner[keep].tolist(), strict=True):
            key, source = tuple(row), sources[index]
            old = ids.get(key)
            if old is None or _PRIORITY[source.kind] > _PRIORITY[old.kind]:
                ids[key] = source
        rows = np.array(list(ids), dtype=np.int64).reshape(-1, TOKEN_WINDOW)
        first = {length: {w.split(" ", 1)[0] for w in table} for length, table in text.items()}
        return cls(seqs.client_id, text, first, ids, ByteScanner(rows))

    def match_text(self, text: str) -> list[tuple[str, Source, int]]:
        """Each (window, Source, character offset) of this client's text found in ``text``."""
        found = list(_WORD.finditer(text.lower()))
        words = [m.group() for m in found]
        out = []
        for length, table in self.text.items():
            starts = self.first_words[length]
            for i in range(len(words) - length + 1):
                if words[i] in starts:
                    window = " ".join(words[i : i + length])
                    source = table.get(window)
                    if source is not None:
                        out.append((window, source, found[i].start()))
        return out

    def match_ints(self, values: Sequence[int]) -> list[tuple[tuple[int, ...], Source]]:
        """Each id window of this client found in a run of integers."""
        out = []
        for i in range(len(values) - TOKEN_WINDOW + 1):
            window = tuple(values[i : i + TOKEN_WINDOW])
            source = self.ids.get(window)
            if source is not None:
                out.append((window, source))
        return out
