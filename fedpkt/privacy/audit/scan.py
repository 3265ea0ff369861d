"""Scanning one reply for one client's data: raw payload bytes (printable text in UTF-8,
UTF-16 and UTF-32, and encoded token ids), the decoded JSON of its metric/config records and
its error reason. Matches are merged into one :class:`Hit` per record, key, source and
encoding; each hit keeps the hashes of the windows it matched, so that a hit found where the
reply was sent (the egress mod) can be recorded and judged later by ``fedpkt audit``.
"""

from __future__ import annotations

import ast
import math
import re
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedpkt.privacy.audit.byte_search import ENCODINGS
from fedpkt.privacy.audit.egress_log import EgressEntry, _record_value
from fedpkt.privacy.audit.findings import Finding, FindingKind
from fedpkt.privacy.audit.fingerprints import (
    GENERIC_FLOOR,
    GENERIC_SHARE,
    MIN_DISTINCT_IDS,
    MIN_SENTENCE_CHARS,
    MIN_SENTENCE_WORDS,
    TEXT_NGRAM,
    TOKEN_WINDOW,
    Fingerprint,
    GenericSets,
    Source,
    WindowSpace,
    id_hash,
    text_hash,
)
from fedpkt.privacy.audit.record_checks import _is_number

EXCERPT_CHARS = 80
LOGGED_WINDOWS = 32
"""Window hashes a recorded hit keeps (it counts all): enough to tell a copied sentence from
generic chit-chat; a hit with more windows than it kept is never dropped as generic."""
TEXT_ENCODINGS: tuple[tuple[str, str], ...] = (
    ("utf-8", "u1"),
    ("utf-16-le", "<u2"),
    ("utf-16-be", ">u2"),
    ("utf-32-le", "<u4"),
    ("utf-32-be", ">u4"),
)
"""How text is read out of raw bytes: UTF-8 (printable ASCII bytes) and printable ASCII
characters written as UTF-16 or UTF-32 code units, either byte order (a BOM is not text, so
text after one is found like text without)."""
SCAN_RULES: dict[str, Any] = {
    "text_ngram_words": TEXT_NGRAM,
    "token_window_ids": TOKEN_WINDOW,
    "persona_and_canary_min_words": MIN_SENTENCE_WORDS,
    "persona_and_canary_min_chars": MIN_SENTENCE_CHARS,
    "min_distinct_ids": MIN_DISTINCT_IDS,
    "generic_share": GENERIC_SHARE,
    "generic_floor": GENERIC_FLOOR,
    "token_encodings": [name for name, _ in ENCODINGS],
    "text_encodings": [name for name, _ in TEXT_ENCODINGS],
    "logged_windows": LOGGED_WINDOWS,
}
"""What a scan searches for and how; a scan recorded by the egress mod is only taken by the
audit when its rules are these."""
_PRINTABLE = np.zeros(256, dtype=bool)
_PRINTABLE[0x20:0x7F] = True
_PRINTABLE[[0x09, 0x0A, 0x0D]] = True
_DIGITS = re.compile(r"\d+")


@dataclass
class _Views:
    """The ways a reply's content can be read: texts, integer runs and raw byte blobs."""

    texts: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    ints: list[tuple[list[int], dict[str, Any]]] = field(default_factory=list)
    blobs: list[tuple[bytes, dict[str, Any]]] = field(default_factory=list)


def _walk_json(value: Any, where: dict[str, Any], views: _Views) -> None:
    """Collect texts (keys, strings), integer runs (number lists, digit runs) and bytes values."""
    if isinstance(value, dict):
        for key, item in value.items():
            views.texts.append((str(key), where))
            _walk_json(item, where, views)
    elif isinstance(value, list):
        run: list[int] = []
        for item in value:
            if _is_number(item) and math.isfinite(item) and float(item).is_integer():
                run.append(int(item))
                continue
            if len(run) >= TOKEN_WINDOW:
                views.ints.append((run, where))
            run = []
            if not _is_number(item):
                _walk_json(item, where, views)
        if len(run) >= TOKEN_WINDOW:
            views.ints.append((run, where))
    elif isinstance(value, str):
        views.texts.append((value, where))
        digits = [int(d) for d in _DIGITS.findall(value)]
        if len(digits) >= TOKEN_WINDOW:
            views.ints.append((digits, where))
        if value[:2] in ("b'", 'b"'):  # bytes values reach the log as their repr (egress mod)
            try:
                blob = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                blob = None
            if isinstance(blob, bytes):
                views.blobs.append((blob, where))


def reply_views(entry: EgressEntry, payload: bytes) -> _Views:
    """Decode a reply's metric/config records and error reason into searchable views."""
    views = _Views()
    for record in entry.records:
        if record["kind"] == "array":
            continue
        where = {"record": record["record"], "key": record["key"]}
        views.texts.append((str(record["key"]), where))
        _walk_json(_record_value(entry, record, payload), where, views)
    if entry.error:
        where = {"record": None, "key": "error reason"}
        _walk_json(entry.error, where, views)
    return views


def ascii_runs(data: bytes, min_length: int = MIN_SENTENCE_CHARS) -> list[tuple[int, str]]:
    """(offset, text) of every run of at least ``min_length`` printable ASCII bytes.

    A numpy pass (a lookup table and the edges of the mask) rather than a regex: payloads are
    mostly float bytes, and this is the one pass over every byte of them that reads text.
    """
    if len(data) < min_length:
        return []
    mask = _PRINTABLE[np.frombuffer(data, dtype=np.uint8)]
    edges = np.flatnonzero(np.diff(np.concatenate(([False], mask, [False])).astype(np.int8)))
    starts, ends = edges[0::2], edges[1::2]
    keep = ends - starts >= min_length
    return [
        (int(a), data[a:b].decode("ascii")) for a, b in zip(starts[keep], ends[keep], strict=True)
    ]


def _unit_runs(data: bytes, dtype: str, min_length: int) -> list[tuple[int, int, str]]:
    """(start, end, text) of every run of ``min_length`` or more printable ASCII characters
    written as ``dtype`` code units (UTF-16/32), at every alignment; start/end are byte
    offsets."""
    width = np.dtype(dtype).itemsize
    out = []
    for align in range(width):
        count = (len(data) - align) // width
        if count < min_length:
            continue
        units = np.frombuffer(data, dtype=dtype, count=count, offset=align)
        mask = np.zeros(count, dtype=bool)
        low = units < 0x80
        mask[low] = _PRINTABLE[units[low].astype(np.intp)]
        edges = np.flatnonzero(np.diff(np.concatenate(([False], mask, [False])).astype(np.int8)))
        starts, ends = edges[0::2], edges[1::2]
        keep = ends - starts >= min_length
        for a, b in zip(starts[keep], ends[keep], strict=True):
            text = units[a:b].astype(np.uint8).tobytes().decode("ascii")
            out.append((align + width * int(a), align + width * int(b), text))
    return out


def text_runs(data: bytes, min_length: int = MIN_SENTENCE_CHARS) -> list[tuple[int, int, str, str]]:
    """(byte offset, bytes per character, text, encoding) of every run of at least
    ``min_length`` printable ASCII characters in ``data``, in each of :data:`TEXT_ENCODINGS`.

    The zero bytes of UTF-16/32 text let the same bytes read as the other byte order one byte
    further on ('h\\0e\\0' is 'h', 'e' little-endian and, from byte 1, 'e' big-endian), so of
    overlapping wide runs only the one that starts first is kept. Little-endian text right
    after a zero byte reads big-endian from that byte: it is found, under the other name.
    """
    runs = [(offset, 1, text, "utf-8") for offset, text in ascii_runs(data, min_length)]
    wide = sorted(
        (start, end, name, np.dtype(dtype).itemsize, text)
        for name, dtype in TEXT_ENCODINGS[1:]
        for start, end, text in _unit_runs(data, dtype, min_length)
    )
    covered = -1
    for start, end, name, width, text in wide:
        if start >= covered:
            runs.append((start, width, text, name))
            covered = end
    return runs


def _record_at(entry: EgressEntry, offset: int) -> dict[str, Any]:
    starts = [int(r["offset"]) for r in entry.records]
    index = bisect_right(starts, offset) - 1
    if index < 0:
        return {"record": None, "key": None}
    record = entry.records[index]
    return {"record": record["record"], "key": record["key"]}


def _excerpt(text: str) -> str:
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 3] + "..."


@dataclass
class Hit:
    """One client's data found in one record/key of a reply: one source, one encoding.

    ``windows`` maps each matched window's hash (:func:`text_hash` of the words, or
    :func:`id_hash` of the ids) to its excerpt, in the order found; ``matches`` counts them
    (a hit read back from the log keeps only :data:`LOGGED_WINDOWS` of its windows).
    """

    record: str | None
    key: str | None
    source: Source
    encoding: str
    space: WindowSpace
    windows: dict[int, str] = field(default_factory=dict)
    matches: int = 0

    @property
    def kind(self) -> FindingKind:
        if self.source.kind == "canary":
            return "canary"
        return "text" if self.space == "words" else "token-ids"

    def to_json(self) -> dict[str, Any]:
        kept = list(self.windows.items())[:LOGGED_WINDOWS]
        return {
            "record": self.record,
            "key": self.key,
            "source": {"kind": self.source.kind, "label": self.source.label},
            "encoding": self.encoding,
            "space": self.space,
            "windows": [[f"{h:016x}", excerpt] for h, excerpt in kept],
            "matches": self.matches,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Hit:
        """A hit as the egress mod logged it; KeyError/TypeError/ValueError when malformed."""
        source = obj["source"]
        if source["kind"] not in ("dialogue", "persona", "canary") or obj["space"] not in (
            "words",
            "ids",
        ):
            raise ValueError(f"hit of kind {source['kind']!r} in space {obj['space']!r}")
        return cls(
            record=obj["record"],
            key=obj["key"],
            source=Source(source["kind"], str(source["label"])),
            encoding=str(obj["encoding"]),
            space=obj["space"],
            windows={int(h, 16): str(e) for h, e in obj["windows"]},
            matches=int(obj["matches"]),
        )

    def finding(self, entry: EgressEntry, client: str) -> Finding:
        return entry.finding(
            self.kind,
            f"{self.source.label} of client {client} found as {self.encoding}",
            record=self.record,
            key=self.key,
            source=f"{client}: {self.source.label}",
            encoding=self.encoding,
            excerpt=_excerpt(next(iter(self.windows.values()), "")),
            matches=self.matches,
        )


def drop_generic(hits: list[Hit], generic: GenericSets) -> list[Hit]:
    """``hits`` without their generic dialogue windows (persona and canary windows are never
    generic); a hit left with none is dropped, unless it matched more windows than it kept."""
    out = []
    for hit in hits:
        if hit.source.kind != "dialogue":
            out.append(hit)
            continue
        kept = {h: e for h, e in hit.windows.items() if not generic.holds(hit.space, h)}
        dropped = len(hit.windows) - len(kept)
        if kept or hit.matches > len(hit.windows):
            left = hit.matches - dropped
            out.append(Hit(hit.record, hit.key, hit.source, hit.encoding, hit.space, kept, left))
    return out


class _Collector:
    """Merges matched windows into one :class:`Hit` per (record, key, source, encoding)."""

    def __init__(self) -> None:
        self.hits: dict[tuple[Any, ...], Hit] = {}

    def add(
        self,
        where: dict[str, Any],
        source: Source,
        encoding: str,
        window: str | tuple[int, ...],
        excerpt: str,
    ) -> None:
        """One matched window (words or ids); the same window read twice (raw bytes and
        decoded JSON) counts once."""
        record, key = where.get("record"), where.get("key")
        space: WindowSpace = "words" if isinstance(window, str) else "ids"
        group = (record, key, source.label, encoding)
        hit = self.hits.get(group)
        if hit is None:
            hit = self.hits[group] = Hit(record, key, source, encoding, space)
        digest = text_hash(window) if isinstance(window, str) else id_hash(window)
        if digest not in hit.windows:
            hit.windows[digest] = excerpt
            hit.matches += 1


def scan_hits(
    entry: EgressEntry, payload: bytes, fingerprint: Fingerprint, decode: Any = None
) -> list[Hit]:
    """Search one reply for one client's data: raw bytes, decoded JSON views, error reason.

    ``decode`` (token ids -> str) only makes excerpts readable.
    """
    collect = _Collector()

    def show(window: Sequence[int]) -> str:
        return f"{decode(list(window))!r} ids {list(window)}" if decode else str(list(window))

    def read_text(
        text: str, encoding: str, where: dict[str, Any] | None, at: int = 0, width: int = 1
    ) -> None:
        """Match ``text``; without ``where``, locate each match by its byte offset (``at`` +
        ``width`` bytes per character) in the payload."""
        for window, source, offset in fingerprint.match_text(text):
            place = where if where is not None else _record_at(entry, at + width * offset)
            collect.add(place, source, f"{encoding} text", window, window)

    for offset, width, text, encoding in text_runs(payload):
        read_text(text, encoding, None, offset, width)
    rows = fingerprint.scanner.windows
    id_sources = fingerprint.ids
    for start, row, encoding in fingerprint.scanner.scan(payload):
        window = tuple(int(v) for v in rows[row])
        collect.add(_record_at(entry, start), id_sources[window], encoding, window, show(window))
    views = reply_views(entry, payload)
    for text, where in views.texts:
        read_text(text, "utf-8", where)
    for values, where in views.ints:
        for window, source in fingerprint.match_ints(values):
            collect.add(where, source, "json integers", window, show(window))
    for blob, where in views.blobs:
        for _start, row, encoding in fingerprint.scanner.scan(blob):
            window = tuple(int(v) for v in rows[row])
            encoding = f"{encoding} (bytes value)"
            collect.add(where, id_sources[window], encoding, window, show(window))
        for _, _, text, encoding in text_runs(blob):
            read_text(text, encoding, where)
    return list(collect.hits.values())


def scan_reply(
    entry: EgressEntry, payload: bytes, fingerprint: Fingerprint, decode: Any = None
) -> list[Finding]:
    """:func:`scan_hits` as findings (one per hit)."""
    hits = scan_hits(entry, payload, fingerprint, decode)
    return [hit.finding(entry, fingerprint.client_id) for hit in hits]
