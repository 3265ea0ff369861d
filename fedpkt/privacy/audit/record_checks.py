"""Record-level contract checks shared by the plain contract (``contract``) and the SecAgg+
stage checks (``secagg``): the run's :class:`ContractSpec`, allowed records and keys,
numeric scalars, numpy ``.npy`` headers, and the phase-1 train metric names both allow.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedpkt.privacy.audit.egress_log import EgressEntry, _record_value
from fedpkt.privacy.audit.findings import Finding

PHASE1_TRAIN_METRICS = frozenset({"num-examples", "train-loss"})
DP_METRICS = frozenset({"epsilon"})
"""Optional in a phase-1 train reply: the client's privacy budget spent so far (DP-SGD)."""


@dataclass(frozen=True)
class ArraySpec:
    """One expected phase-1 array: its dtype name and shape."""

    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ContractSpec:
    """What replies may hold in this run: θ's arrays, each client's Part and count, and
    whether phase 1 ran through SecAgg+ (then train replies are SecAgg+ stage replies)."""

    arrays: dict[str, ArraySpec]
    clients: dict[str, tuple[str, int]]
    secagg: bool = False

    def digest(self) -> str:
        """SHA-256 of what a non-handshake reply is checked against (θ's arrays, SecAgg+): the
        egress mod and the audit agree on it when they check by the same contract."""
        arrays = {name: [a.dtype, list(a.shape)] for name, a in sorted(self.arrays.items())}
        text = json.dumps({"arrays": arrays, "secagg": self.secagg}, sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _npy_header(blob: bytes) -> tuple[str, tuple[int, ...], int] | None:
    """(dtype, shape, header length) of a numpy ``.npy`` blob, or None if it is not one."""
    stream = io.BytesIO(blob)
    readers = {
        (1, 0): np.lib.format.read_array_header_1_0,
        (2, 0): np.lib.format.read_array_header_2_0,
    }
    try:
        reader = readers.get(np.lib.format.read_magic(stream))
        if reader is None:
            return None
        shape, fortran, dtype = reader(stream)
    except (ValueError, OSError, SyntaxError):
        return None
    if fortran:
        return None
    return str(dtype), tuple(int(d) for d in shape), stream.tell()


def _check_keys(
    entry: EgressEntry,
    records: list[dict[str, Any]],
    required: frozenset[str],
    optional: frozenset[str] = frozenset(),
) -> list[Finding]:
    """Keys outside ``required | optional``, and missing required keys, as findings."""
    allowed = required | optional
    found = [r["key"] for r in records]
    name = records[0]["record"] if records else None
    out = [
        entry.finding(
            "contract",
            f"key '{key}' is not allowed here (allowed: {sorted(allowed)})",
            record=name,
            key=key,
        )
        for key in found
        if key not in allowed
    ]
    for key in sorted(required - set(found)):
        out.append(
            entry.finding("contract", f"required key '{key}' is missing", record=name, key=key)
        )
    return out


def _only_records(
    entry: EgressEntry,
    allowed: set[tuple[str, str]],
    label: str | None = None,
    required: bool = True,
) -> tuple[list[Finding], dict[tuple[str, str], list[dict[str, Any]]]]:
    """Group records by (kind, name); a group not in ``allowed``, or (``required``) an allowed
    one missing from a reply that is not an error, is a finding. ``label`` names the reply in
    findings (default: its message type)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for record in entry.records:
        groups.setdefault((record["kind"], str(record["record"])), []).append(record)
    findings = []
    for (kind, name), records in groups.items():
        if (kind, name) not in allowed:
            keys = ", ".join(str(r["key"]) for r in records)
            findings.append(
                entry.finding(
                    "contract",
                    f"{kind} record '{name}' (keys: {keys}) is not part of a "
                    f"{label or repr(entry.message_type)} reply",
                    record=name,
                    key=str(records[0]["key"]),
                )
            )
    for kind, name in sorted(allowed):
        if required and (kind, name) not in groups and not entry.error:
            findings.append(
                entry.finding("contract", f"{kind} record '{name}' is missing", record=name)
            )
    return findings, groups


def _check_scalars(
    entry: EgressEntry, records: list[dict[str, Any]], payload: bytes, integer: Sequence[str] = ()
) -> list[Finding]:
    out = []
    for record in records:
        value = _record_value(entry, record, payload)
        where = {"record": record["record"], "key": record["key"]}
        if not _is_number(value):
            out.append(
                entry.finding(
                    "contract", f"value is {type(value).__name__}; expected a number", **where
                )
            )
        elif record["key"] in integer and (not float(value).is_integer() or value < 0):
            out.append(entry.finding("contract", f"value {value!r} is not a count", **where))
    return out
