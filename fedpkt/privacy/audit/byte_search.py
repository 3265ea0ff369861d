"""Byte-level search for token-id windows: every window written in every integer and float
encoding (:data:`ENCODINGS`), found at any byte offset of a payload by one numpy pass per
byte alignment (:class:`ByteScanner`).
"""

from __future__ import annotations

import numpy as np

ENCODINGS: tuple[tuple[str, str], ...] = (
    ("int16-le", "<u2"),
    ("int16-be", ">u2"),
    ("int32-le", "<i4"),
    ("int32-be", ">i4"),
    ("int64-le", "<i8"),
    ("int64-be", ">i8"),
    ("float16-le", "<f2"),
    ("float16-be", ">f2"),
    ("float32-le", "<f4"),
    ("float32-be", ">f4"),
    ("float64-le", "<f8"),
    ("float64-be", ">f8"),
)
"""How token ids may be written into bytes. 16-bit covers int16 and uint16 (same bytes)."""
_TABLE_BITS = 22
_TABLE_MASK = np.uint64((1 << _TABLE_BITS) - 1)


def encode_windows(windows: np.ndarray, dtype: str) -> np.ndarray | None:
    """(count, 8·itemsize) uint8 rows: each window written as ``dtype``; None if it cannot hold
    the ids (16-bit ids above 65535, float16 above 65504)."""
    target = np.dtype(dtype)
    if target.kind == "u" and windows.max(initial=0) > np.iinfo(target).max:
        return None
    if target.kind == "f" and target.itemsize == 2 and windows.max(initial=0) > 65504:
        return None
    cast = windows.astype(target)
    return cast.view(np.uint8).reshape(len(windows), -1)


class ByteScanner:
    """Finds any of a set of id windows, in every encoding, at any byte offset of a payload.

    Each encoded pattern (16 to 64 bytes) is keyed by its 8-byte chunk with the most non-zero
    bytes. For each of the 8 byte alignments the payload is read as little-endian uint64; a
    table on the low 22 bits of those words rejects almost every position, a sorted search
    confirms the key, and the surviving positions are compared byte for byte.
    """

    def __init__(self, windows: np.ndarray) -> None:
        self.windows = windows
        keys, offsets, pattern_ids, encodings = [], [], [], []
        self.patterns: list[np.ndarray] = []
        for number, (_, dtype) in enumerate(ENCODINGS):
            rows = encode_windows(windows, dtype) if len(windows) else None
            if rows is None:
                self.patterns.append(np.zeros((0, 0), dtype=np.uint8))
                continue
            self.patterns.append(rows)
            chunks = rows.reshape(len(rows), -1, 8)
            best = np.argmax(np.count_nonzero(chunks, axis=2), axis=1)
            chosen = chunks[np.arange(len(rows)), best]
            keys.append(np.ascontiguousarray(chosen).view("<u8").reshape(-1))
            offsets.append(best * 8)
            pattern_ids.append(np.arange(len(rows)))
            encodings.append(np.full(len(rows), number))
        if keys:
            all_keys = np.concatenate(keys)
            order = np.argsort(all_keys, kind="stable")
            self.keys = all_keys[order]
            self.offsets = np.concatenate(offsets)[order]
            self.rows = np.concatenate(pattern_ids)[order]
            self.encodings = np.concatenate(encodings)[order]
        else:
            self.keys = np.zeros(0, dtype=np.uint64)
            self.offsets = self.rows = self.encodings = np.zeros(0, dtype=np.int64)
        self.table = np.zeros(1 << _TABLE_BITS, dtype=bool)
        self.table[(self.keys & _TABLE_MASK).astype(np.intp)] = True

    def scan(self, payload: bytes) -> list[tuple[int, int, str]]:
        """Every (start offset, window index, encoding name) whose bytes occur in ``payload``.

        Small ids leave zero bytes that let the same bytes read as another encoding one byte
        later (int16-le ids a, b, c read as int16-be b, c, ... from the next byte), so each run
        of overlapping hits is reported in the encoding of its earliest hit only.
        """
        if len(self.keys) == 0 or len(payload) < 16:
            return []
        hits: set[tuple[int, int, str]] = set()
        for align in range(8):
            count = (len(payload) - align) // 8
            if count <= 0:
                break
            words = np.frombuffer(payload, dtype="<u8", count=count, offset=align)
            maybe = np.flatnonzero(self.table[(words & _TABLE_MASK).astype(np.intp)])
            if len(maybe) == 0:
                continue
            candidates = words[maybe]
            lo = np.searchsorted(self.keys, candidates, side="left")
            hi = np.searchsorted(self.keys, candidates, side="right")
            present = hi > lo
            maybe, lo, hi = maybe[present], lo[present], hi[present]
            for position, first, last in zip(maybe, lo, hi, strict=True):
                at = align + 8 * int(position)
                for k in range(int(first), int(last)):
                    enc = int(self.encodings[k])
                    row = int(self.rows[k])
                    pattern = self.patterns[enc][row]
                    start = at - int(self.offsets[k])
                    end = start + len(pattern)
                    if (
                        start >= 0
                        and end <= len(payload)
                        and payload[start:end] == pattern.tobytes()
                    ):
                        hits.add((start, row, enc))
        return _one_reading(sorted(hits), self.patterns)


def _one_reading(
    hits: list[tuple[int, int, int]], patterns: list[np.ndarray]
) -> list[tuple[int, int, str]]:
    """Keep, in each cluster of overlapping (start, row, encoding) hits sorted by start, only
    the hits in the encoding of the cluster's first hit."""
    out: list[tuple[int, int, str]] = []
    cluster_end, cluster_encoding = -1, -1
    for start, row, enc in hits:
        end = start + patterns[enc].shape[1]
        if start >= cluster_end:
            cluster_encoding = enc
        cluster_end = max(cluster_end, end)
        if enc == cluster_encoding:
            out.append((start, row, ENCODINGS[enc][0]))
    return out
