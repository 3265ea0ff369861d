"""Scanning one reply for one client's data: raw payload bytes (printable ASCII runs and
encoded token ids), the decoded JSON of its metric/config records and its error reason;
hits are merged into one finding per record, key, source and encoding.
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

from fedpkt.privacy.audit.egress_log import EgressEntry, _record_value
from fedpkt.privacy.audit.findings import Finding, FindingKind
from fedpkt.privacy.audit.fingerprints import MIN_SENTENCE_CHARS, TOKEN_WINDOW, Fingerprint, Source
from fedpkt.privacy.audit.record_checks import _is_number

EXCERPT_CHARS = 80
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


def _record_at(entry: EgressEntry, offset: int) -> dict[str, Any]:
    starts = [int(r["offset"]) for r in entry.records]
    index = bisect_right(starts, offset) - 1
    if index < 0:
        return {"record": None, "key": None}
    record = entry.records[index]
    return {"record": record["record"], "key": record["key"]}


def _excerpt(text: str) -> str:
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 3] + "..."


class _Collector:
    """Merges content hits into one finding per (reply, record, key, source, encoding)."""

    def __init__(self, entry: EgressEntry) -> None:
        self.entry = entry
        self.hits: dict[tuple[Any, ...], dict[str, Any]] = {}

    def add(self, where: dict[str, Any], source: Source, encoding: str, excerpt: str) -> None:
        """One matched window; the same window read twice (raw bytes and decoded JSON) counts
        once."""
        key = (where.get("record"), where.get("key"), source.label, encoding)
        if key not in self.hits:
            self.hits[key] = {
                "where": where,
                "source": source,
                "encoding": encoding,
                "excerpt": excerpt,
                "windows": set(),
            }
        self.hits[key]["windows"].add(excerpt)

    def findings(self, client: str) -> list[Finding]:
        out = []
        for hit in self.hits.values():
            source: Source = hit["source"]
            if source.kind == "canary":
                kind: FindingKind = "canary"
            elif hit["encoding"] == "utf-8 text":
                kind = "text"
            else:
                kind = "token-ids"
            detail = f"{source.label} of client {client} found as {hit['encoding']}"
            out.append(
                self.entry.finding(
                    kind,
                    detail,
                    record=hit["where"].get("record"),
                    key=hit["where"].get("key"),
                    source=f"{client}: {source.label}",
                    encoding=hit["encoding"],
                    excerpt=_excerpt(hit["excerpt"]),
                    matches=len(hit["windows"]),
                )
            )
        return out


def scan_reply(
    entry: EgressEntry, payload: bytes, fingerprint: Fingerprint, decode: Any = None
) -> list[Finding]:
    """Search one reply for one client's data: raw bytes, decoded JSON views, error reason.

    ``decode`` (token ids -> str) only makes excerpts readable.
    """
    collect = _Collector(entry)

    def show(window: Sequence[int]) -> str:
        return f"{decode(list(window))!r} ids {list(window)}" if decode else str(list(window))

    for offset, text in ascii_runs(payload):
        for window, source, at in fingerprint.match_text(text):
            collect.add(_record_at(entry, offset + at), source, "utf-8 text", window)
    rows = fingerprint.scanner.windows
    id_sources = fingerprint.ids
    for start, row, encoding in fingerprint.scanner.scan(payload):
        window = tuple(int(v) for v in rows[row])
        collect.add(_record_at(entry, start), id_sources[window], encoding, show(window))
    views = reply_views(entry, payload)
    for text, where in views.texts:
        for window, source, _ in fingerprint.match_text(text):
            collect.add(where, source, "utf-8 text", window)
    for values, where in views.ints:
        for window, source in fingerprint.match_ints(values):
            collect.add(where, source, "json integers", show(window))
    for blob, where in views.blobs:
        for _start, row, encoding in fingerprint.scanner.scan(blob):
            window = tuple(int(v) for v in rows[row])
            collect.add(where, id_sources[window], f"{encoding} (bytes value)", show(window))
        for _, text in ascii_runs(blob):
            for window, source, _ in fingerprint.match_text(text):
                collect.add(where, source, "utf-8 text", window)
    return collect.findings(fingerprint.client_id)
