"""The egress log the client mod writes (``RUN/egress/<node>.jsonl`` and
``RUN/egress/payloads/``): parse and validate its lines, load each reply's payload bytes
against the logged digests, and decode a metric/config record's value.

A line is one reply, or (a phase-2 *cohort* reply) one persona's part of it: ``cohort`` then
lists the request's personas, ``client_id`` names the persona whose records the line holds
(null: the records that belong to no persona of the request, and an error reason), and
``message_id`` / ``reply_sha256`` tie the lines of one reply together. ``payload`` names the
stored bytes (null when they were not kept) and ``client_check`` holds the egress mod's own
contract check and content scan of those bytes (null when it did not run).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any

from fedpkt.errors import FedpktError
from fedpkt.jsonl import read_lines
from fedpkt.privacy.audit.findings import Finding, FindingKind


@dataclass(frozen=True)
class EgressEntry:
    """One logged reply (one JSON line of ``<node>.jsonl``)."""

    log: str
    node: int
    client: str | None
    phase: str | None
    round: int | None
    message_type: str
    error: str | None
    records: list[dict[str, Any]]
    payload: str | None
    bytes: int
    sha256: str | None
    stage: str | None = None
    """The SecAgg+ stage the request asked for (``secagg_stage`` in the log), if any."""
    cohort: tuple[str, ...] | None = None
    """The personas a cohort request named (``client-ids``); None for a one-client request."""
    message_id: str | None = None
    client_check: dict[str, Any] | None = None
    """The egress mod's check of this line's bytes (see ``client_check``), if it ran."""

    def finding(self, kind: FindingKind, detail: str, **where: Any) -> Finding:
        return Finding(
            kind=kind,
            detail=detail,
            log=self.log,
            node=self.node,
            client=self.client,
            message_type=self.message_type,
            phase=self.phase,
            round=self.round,
            **where,
        )


_RECORD_KEYS = ("record", "kind", "key", "bytes", "sha256", "offset")


def _parse_entry(obj: Any, where: str) -> EgressEntry:
    """Validate one log line's object; anything unexpected is a one-line FedpktError."""
    if not isinstance(obj, dict):
        raise FedpktError(f"egress log {where} is not a JSON object")
    for key in ("node_id", "message_type", "records"):
        if key not in obj:
            raise FedpktError(f"egress log {where} lacks key '{key}'")
    records = obj["records"]
    if not isinstance(records, list):
        raise FedpktError(f"egress log {where} 'records' is not a list")
    for record in records:
        missing = [k for k in _RECORD_KEYS if not isinstance(record, dict) or k not in record]
        if missing:
            raise FedpktError(f"egress log {where} has a record without {', '.join(missing)}")
        if record["kind"] not in ("array", "metric", "config"):
            raise FedpktError(f"egress log {where} has a record of kind {record['kind']!r}")
        if record["kind"] == "array" and ("dtype" not in record or "shape" not in record):
            raise FedpktError(f"egress log {where} has an array record without dtype/shape")
    client = obj.get("client_id")
    round_num = obj.get("round")
    cohort = obj.get("cohort")
    if cohort is not None and not isinstance(cohort, list):
        raise FedpktError(f"egress log {where} 'cohort' is not a list")
    check = obj.get("client_check")
    if check is not None and not isinstance(check, dict):
        raise FedpktError(f"egress log {where} 'client_check' is not an object")
    return EgressEntry(
        log=where,
        node=int(obj["node_id"]),
        client=str(client) if client is not None else None,
        phase=str(obj["phase"]) if obj.get("phase") is not None else None,
        round=int(round_num) if isinstance(round_num, int | float) else None,
        message_type=str(obj["message_type"]),
        error=str(obj["error"]) if obj.get("error") is not None else None,
        records=records,
        payload=obj.get("payload"),
        bytes=int(obj.get("bytes", 0) or 0),
        sha256=obj.get("sha256"),
        stage=str(obj["secagg_stage"]) if obj.get("secagg_stage") is not None else None,
        cohort=tuple(str(c) for c in cohort) if cohort is not None else None,
        message_id=str(obj["message_id"]) if obj.get("message_id") else None,
        client_check=check,
    )


def parse_entry(obj: Any, where: str) -> EgressEntry:
    """One log line's object as an :class:`EgressEntry` (FedpktError when malformed)."""
    try:
        return _parse_entry(obj, where)
    except (TypeError, ValueError) as err:
        raise FedpktError(f"egress log {where} has a malformed field ({err})") from None


def read_egress(egress_dir: str | Path, torn: list[str] | None = None) -> list[EgressEntry]:
    """Every reply in ``egress_dir/*.jsonl``, in file then line order.

    Raises FedpktError when the directory or its log files are missing or a line is malformed.
    A torn last line (its process died while logging a reply, before sending it) is skipped;
    ``torn``, when given, collects those lines as ``<node>.jsonl:<line>``.
    """
    directory = Path(egress_dir)
    if not directory.is_dir():
        raise FedpktError(f"egress log '{directory}' is missing (expected a directory of .jsonl)")
    files = sorted(directory.glob("*.jsonl"))
    if not files:
        raise FedpktError(f"egress log '{directory}' holds no .jsonl file (expected one per node)")
    entries: list[EgressEntry] = []
    for file in files:
        lines = read_lines(file, "egress log")
        if lines.torn is not None and torn is not None:
            torn.append(f"{file.name}:{lines.torn}")
        entries += [parse_entry(obj, f"{file.name}:{number}") for number, obj in lines.rows]
    return entries


def load_payload(egress_dir: str | Path, entry: EgressEntry) -> bytes:
    """The payload bytes of ``entry``, verified against the digests the log recorded.

    A reply without content (an error reply) has an empty payload. A reply with content but no
    recorded payload, or bytes that do not match the log, cannot be re-read: FedpktError.
    """
    if not entry.records:
        return b""
    if not entry.payload:
        raise FedpktError(
            f"egress log {entry.log} kept no payload bytes and holds no check by the egress mod "
            "(client_check): nothing to audit it by; rerun with privacy.record_payloads='all'"
        )
    root = Path(egress_dir).resolve()
    file = (root / str(entry.payload)).resolve()
    if root not in file.parents or not file.is_file():
        raise FedpktError(
            f"egress log {entry.log} names payload '{entry.payload}', which is not a file "
            f"under '{root}'"
        )
    data = file.read_bytes()
    if len(data) != entry.bytes or sha256(data).hexdigest() != entry.sha256:
        raise FedpktError(
            f"payload '{entry.payload}' ({len(data)} bytes) does not match egress log "
            f"{entry.log} ({entry.bytes} bytes, sha256 {str(entry.sha256)[:12]}...): "
            "modified or truncated"
        )
    for record in entry.records:
        start, size = int(record["offset"]), int(record["bytes"])
        if start < 0 or start + size > len(data):
            raise FedpktError(
                f"egress log {entry.log} record '{record['key']}' spans bytes "
                f"[{start}, {start + size}) outside its {len(data)}-byte payload"
            )
        if sha256(data[start : start + size]).hexdigest() != record["sha256"]:
            raise FedpktError(
                f"egress log {entry.log} record '{record['key']}' does not match its payload "
                "bytes (sha256 differs): modified log or payload"
            )
    return data


def _record_value(entry: EgressEntry, record: dict[str, Any], payload: bytes) -> Any:
    """The value of a metric/config record, decoded from its canonical JSON ``{key: value}``."""
    start, size = int(record["offset"]), int(record["bytes"])
    try:
        obj = json.loads(payload[start : start + size].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise FedpktError(
            f"egress log {entry.log} record '{record['key']}' payload is not the JSON text the "
            "egress mod writes"
        ) from None
    if not isinstance(obj, dict) or list(obj) != [record["key"]]:
        raise FedpktError(
            f"egress log {entry.log} record '{record['key']}' payload holds another key"
        )
    return obj[record["key"]]
