"""``fedpkt audit``: did anything but the privacy contract leave a client?

The audit reads a run's egress log (``RUN/egress/<node>.jsonl`` plus the payload bytes in
``RUN/egress/payloads/``, written by the client mod in ``clients/egress.py``) and answers two
questions separately.

1. **Contract** (the shape of every reply). A handshake (``query``) reply holds ConfigRecord
   ``describe`` {client-ids, parts} and MetricRecord ``counts`` {num-examples}, all agreeing with
   the data manifest. A phase-1 ``train`` reply holds ArrayRecord ``arrays`` with exactly the
   prefix arrays of θ_0 for this run (names, float32, shapes: ``fedpkt.source.initial_theta`` on
   the run's config and backbone config; the array bytes must be the numpy file of that shape)
   and MetricRecord ``metrics`` {num-examples, train-loss}. A phase-1 ``evaluate`` reply holds
   MetricRecord ``metrics`` {num-examples, val-loss}. A phase-2 ``train.personalize`` reply holds
   MetricRecord ``metrics`` with numeric scalars under :data:`PHASE2_METRICS` names only.
   Anything else (an extra record, key, array or message type) is a ``contract`` finding.

   Under SecAgg+ (``privacy.secagg = true``) every phase-1 ``train`` reply is instead one stage
   of Flower 1.42's ``secaggplus_mod``, all in ConfigRecord ``secaggplus_configs``
   (:data:`SECAGG_STAGES`): *setup* {pk1, pk2} (two PEM elliptic-curve public keys), *share
   keys* {dsts, ctxts} (peer node ids and as many equal-length Fernet tokens), *masked vectors*
   {masked_params} (int64 numpy arrays: the weight factor (1,) then θ's shapes in name order,
   values in [0, 2^32)) plus the FitRes records ``fitres.metrics`` (the phase-1 metrics),
   ``fitres.num_examples`` {num_examples} (the SecAgg+ weight) and ``fitres.status`` {code 0,
   empty message}, and *unmask* {nids, shares} (node ids and as many Shamir shares of 4 + 16·k
   bytes). A plain W_i reply in such a run is a finding: under SecAgg+ W_i never leaves in clear.

2. **Content** (the bytes). Every payload — array bytes, metric and config keys and values,
   error reasons — is searched for the sending client's own data:

   - *text*: lower-cased word sequences (``\\w+``). Dialogue text counts as 8-word windows
     (:data:`TEXT_NGRAM`), taken from each utterance, from each dialogue rendered as the model
     sees it, and from its turns joined by spaces. A window that occurs in the data of at least
     ``max(3, 10% of clients)`` clients (:func:`generic_min_clients`) is generic chit-chat
     ("good question, i never thought about it. what about you?"): it identifies nobody, so it
     is not searched for. Persona sentences and canaries are private by definition and are
     searched for whole (at least :data:`MIN_SENTENCE_WORDS` words and
     :data:`MIN_SENTENCE_CHARS` characters, so that random bytes cannot spell one), never
     filtered. Raw bytes are read as runs of printable ASCII (JSON escapes non-ASCII, so metric
     and config text is ASCII on the wire; those records are also JSON-decoded and scanned).
   - *token ids*: every 8-id window (:data:`TOKEN_WINDOW`) of the client's token sequences from
     the run's backbone tokenizer (its encoded training examples, whole rendered dialogues,
     single utterances, persona sentences, canaries), with the same generic filter on dialogue
     windows and without windows of fewer than 3 distinct ids (those match constant arrays),
     searched as 16-, 32- and 64-bit integers and as float16/32/64 values, in both byte
     orders, at every byte offset; and as runs of integers inside JSON values (lists of
     numbers, digit runs).
   - *canaries*: planted sentences (``data.canaries``) are searched as text and as token ids;
     a hit is a ``canary`` finding.

The byte search is one numpy pass per byte alignment: each pattern is keyed by 8 of its bytes,
a 2^22-entry table rejects almost every position, and the rare survivors are compared in
full. Auditing the embedded run takes seconds.

Out of reach by design: values hidden in float mantissas or spread over many metric keys
(steganography), non-ASCII text inside raw arrays beyond its ASCII words, and dialogue lines
shorter than 8 words that are not persona sentences. Those leaks need a covert encoding; the
contract check bounds the channel they could use.

The audit needs the clients' data (it runs where the run directory's ``data/`` is) and the
recorded payloads (``privacy.record_payloads=true``, the default); without them it stops with
exit code 2 rather than call an unchecked run clean.
"""

from __future__ import annotations

import ast
import base64
import binascii
import io
import json
import math
import re
import time
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fedpkt.atomic import atomic_write_json, atomic_write_text
from fedpkt.config import FedpktConfig
from fedpkt.data.encoding import render_dialogue, render_history, render_target
from fedpkt.data.examples import examples_from_dialogues
from fedpkt.data.partition import load_client, load_manifest
from fedpkt.data.schema import ClientData
from fedpkt.errors import FedpktError
from fedpkt.local import PHASE2_METRICS
from fedpkt.rundir import RunDir

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
EXCERPT_CHARS = 80

PHASE1_TRAIN_METRICS = frozenset({"num-examples", "train-loss"})
DP_METRICS = frozenset({"epsilon"})
"""Optional in a phase-1 train reply: the client's privacy budget spent so far (DP-SGD)."""
PHASE1_EVAL_METRICS = frozenset({"num-examples", "val-loss"})
SECAGG_CONFIGS = "secaggplus_configs"
SECAGG_STAGES: dict[str, frozenset[str]] = {
    "setup": frozenset({"pk1", "pk2"}),
    "share_keys": frozenset({"dsts", "ctxts"}),
    "collect_masked_vectors": frozenset({"masked_params"}),
    "unmask": frozenset({"nids", "shares"}),
}
"""The keys of ``secaggplus_configs`` in each SecAgg+ stage reply (``secaggplus_mod``)."""
SECAGG_FITRES = frozenset(
    {("config", "fitres.metrics"), ("metric", "fitres.num_examples"), ("config", "fitres.status")}
)
"""The legacy FitRes records that ride along with the masked vector (its array record is
emptied by ``secaggplus_mod``, so it logs nothing)."""
SECAGG_MOD_RANGE = 1 << 32
"""Masked values lie in [0, modulus): ``SecAggPlusWorkflow``'s default modulus_range, which
``server/secure.py`` keeps. It bounds each int64 entry to 32 bits of masked data."""
_FERNET_OVERHEAD = 57  # version 1 + timestamp 8 + IV 16 + HMAC 32 bytes around the ciphertext
HANDSHAKE = "query"
PHASE1_TRAIN = "train"
PHASE1_EVAL = "evaluate"
PHASE2 = "train.personalize"

FindingKind = Literal["contract", "text", "token-ids", "canary"]
SourceKind = Literal["dialogue", "persona", "canary"]
_PRIORITY = {"dialogue": 0, "persona": 1, "canary": 2}
_WORD = re.compile(r"\w+")
_PRINTABLE = np.zeros(256, dtype=bool)
_PRINTABLE[0x20:0x7F] = True
_PRINTABLE[[0x09, 0x0A, 0x0D]] = True
_DIGITS = re.compile(r"\d+")


def generic_min_clients(num_clients: int) -> int:
    """How many clients must share a window for it to count as generic chit-chat.

    ``max(3, ceil(10% of clients))``: a window in at least a tenth of all personas' data is
    k-anonymous for a large k and says nothing about the sender. The floor of 3 keeps text that
    two clients share (PERSONA-CHAT lists each conversation under both speakers) identifying.
    E.g. 14 clients -> 3, 60 -> 6, 1293 -> 130.
    """
    return max(GENERIC_FLOOR, math.ceil(GENERIC_SHARE * num_clients))


# ============================================================================ findings, report


@dataclass(frozen=True)
class Finding:
    """One breach of the contract, or one piece of a client's data found in what it sent.

    ``log`` is ``<node>.jsonl:<line>``; ``record``/``key`` locate the bytes in the reply;
    ``source`` says which of the client's data matched (content findings), ``encoding`` how it
    was written (``utf-8 text``, ``int32-le``, ``json integers`` ...), ``matches`` how many
    distinct windows of that source matched in that record, ``excerpt`` the first of them.
    """

    kind: FindingKind
    detail: str
    log: str
    node: int | None
    client: str | None
    message_type: str
    phase: str | None
    round: int | None
    record: str | None = None
    key: str | None = None
    source: str | None = None
    encoding: str | None = None
    excerpt: str | None = None
    matches: int = 1

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class AuditReport:
    """The verdict and everything that supports it (``audit.json`` is :meth:`to_json`)."""

    run: str
    findings: list[Finding]
    messages: int
    bytes: int
    by_type: dict[str, dict[str, int]]
    clients_scanned: list[str]
    seconds: float = 0.0
    rules: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> Literal["clean", "violation"]:
        return "violation" if self.findings else "clean"

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "findings": [f.to_json() for f in self.findings],
            "messages": self.messages,
            "bytes": self.bytes,
            "run": self.run,
            "by_message_type": self.by_type,
            "clients_scanned": self.clients_scanned,
            "rules": self.rules,
            "seconds": round(self.seconds, 3),
        }

    def to_markdown(self) -> str:
        """A human summary: verdict, what was checked, and one table row per finding."""
        lines = [
            f"# Egress audit: {self.verdict.upper()}",
            "",
            f"Run `{self.run}`: {self.messages} replies, {self.bytes} payload bytes, "
            f"{len(self.clients_scanned)} clients' data searched, {len(self.findings)} findings.",
            "",
            "| message type | replies | bytes |",
            "|---|---:|---:|",
        ]
        for name, row in sorted(self.by_type.items()):
            lines.append(f"| `{name}` | {row['messages']} | {row['bytes']} |")
        lines += ["", "## Findings", ""]
        if not self.findings:
            lines.append("None: every reply matched the contract and no payload held the sender's")
            lines.append("text, token ids or canaries.")
        else:
            lines.append("| kind | client | message | record / key | detail | log |")
            lines.append("|---|---|---|---|---|---|")
            for f in self.findings:
                where = f"{f.record or ''}/{f.key or ''}".strip("/")
                detail = f.detail.replace("|", "\\|")
                lines.append(
                    f"| {f.kind} | {f.client or '-'} | `{f.message_type}` | `{where}` | "
                    f"{detail} | {f.log} |"
                )
        lines += ["", "## Rules", ""]
        for key, value in self.rules.items():
            lines.append(f"- {key}: {value}")
        return "\n".join(lines) + "\n"


# ============================================================================ the egress log


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
    )


def read_egress(egress_dir: str | Path) -> list[EgressEntry]:
    """Every reply in ``egress_dir/*.jsonl``, in file then line order.

    Raises FedpktError when the directory or its log files are missing or a line is malformed.
    """
    directory = Path(egress_dir)
    if not directory.is_dir():
        raise FedpktError(f"egress log '{directory}' is missing (expected a directory of .jsonl)")
    files = sorted(directory.glob("*.jsonl"))
    if not files:
        raise FedpktError(f"egress log '{directory}' holds no .jsonl file (expected one per node)")
    entries: list[EgressEntry] = []
    for file in files:
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise FedpktError(f"egress log '{file}' is unreadable: {err}") from None
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{file.name}:{number}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise FedpktError(f"egress log {where} is not valid JSON ({err.msg})") from None
            try:
                entries.append(_parse_entry(obj, where))
            except (TypeError, ValueError) as err:
                raise FedpktError(f"egress log {where} has a malformed field ({err})") from None
    return entries


def load_payload(egress_dir: str | Path, entry: EgressEntry) -> bytes:
    """The payload bytes of ``entry``, verified against the digests the log recorded.

    A reply without content (an error reply) has an empty payload. A reply with content but no
    recorded payload, or bytes that do not match the log, cannot be audited: FedpktError.
    """
    if not entry.records:
        return b""
    if not entry.payload:
        raise FedpktError(
            f"egress log {entry.log} has no recorded payload (privacy.record_payloads=false?); "
            "the content audit needs payloads: rerun with privacy.record_payloads=true"
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


# ============================================================================ the contract


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


def contract_spec(cfg: FedpktConfig, model_config: Any, manifest: dict[str, Any]) -> ContractSpec:
    """The run's contract: θ_0's names/dtypes/shapes and the manifest's (part, n_i) per client."""
    from fedpkt.source import initial_theta

    theta, _ = initial_theta(cfg, model_config)
    arrays = {k: ArraySpec(str(v.dtype), tuple(int(d) for d in v.shape)) for k, v in theta.items()}
    clients = {
        str(e["client_id"]): (str(e["part"]), int(e["num_train_examples"]))
        for e in manifest["clients"]
    }
    return ContractSpec(arrays=arrays, clients=clients, secagg=cfg.privacy.secagg)


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
    entry: EgressEntry, allowed: set[tuple[str, str]], label: str | None = None
) -> tuple[list[Finding], dict[tuple[str, str], list[dict[str, Any]]]]:
    """Group records by (kind, name); a group not in ``allowed``, or an allowed one missing
    from a reply that is not an error, is a finding. ``label`` names the reply in findings
    (default: its message type)."""
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
        if (kind, name) not in groups and not entry.error:
            findings.append(
                entry.finding("contract", f"{kind} record '{name}' is missing", record=name)
            )
    return findings, groups


def _check_arrays(
    entry: EgressEntry, records: list[dict[str, Any]], payload: bytes, spec: ContractSpec
) -> list[Finding]:
    out = _check_keys(entry, records, frozenset(spec.arrays))
    for record in records:
        expected = spec.arrays.get(record["key"])
        if expected is None:
            continue
        shape = tuple(int(d) for d in record["shape"])
        where = {"record": record["record"], "key": record["key"]}
        if record["dtype"] != expected.dtype or shape != expected.shape:
            out.append(
                entry.finding(
                    "contract",
                    f"array is {record['dtype']}{list(shape)}; expected "
                    f"{expected.dtype}{list(expected.shape)}",
                    **where,
                )
            )
            continue
        start, size = int(record["offset"]), int(record["bytes"])
        header = _npy_header(payload[start : start + size])
        data_bytes = int(np.prod(expected.shape)) * np.dtype(expected.dtype).itemsize
        if (
            header is None
            or header[:2] != (expected.dtype, expected.shape)
            or (size != header[2] + data_bytes)
        ):
            out.append(
                entry.finding(
                    "contract",
                    f"array bytes ({size}) are not a {expected.dtype}{list(expected.shape)} "
                    "numpy array",
                    **where,
                )
            )
    return out


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


def _check_handshake(
    entry: EgressEntry,
    groups: dict[tuple[str, str], list[dict[str, Any]]],
    payload: bytes,
    spec: ContractSpec,
) -> list[Finding]:
    describe = groups.get(("config", "describe"), [])
    counts = groups.get(("metric", "counts"), [])
    out = _check_keys(entry, describe, frozenset({"client-ids", "parts"}))
    out += _check_keys(entry, counts, frozenset({"num-examples"}))
    if out:
        return out
    values = {r["key"]: _record_value(entry, r, payload) for r in describe + counts}
    ids, parts, nums = values["client-ids"], values["parts"], values["num-examples"]
    lists = [v for v in (ids, parts, nums) if isinstance(v, list)]
    if len(lists) != 3 or len({len(v) for v in lists}) != 1:
        return [
            entry.finding(
                "contract",
                "client-ids, parts and num-examples are not three lists of one length",
                record="describe",
                key="client-ids",
            )
        ]
    for cid, part, num in zip(ids, parts, nums, strict=True):
        known = spec.clients.get(str(cid)) if isinstance(cid, str) else None
        if known is None:
            out.append(
                entry.finding(
                    "contract",
                    f"client-ids names {str(cid)[:40]!r}, which is not a client of the manifest",
                    record="describe",
                    key="client-ids",
                )
            )
        elif (part, num) != known:
            out.append(
                entry.finding(
                    "contract",
                    f"client {cid} is announced as part {part!r} with {num!r} examples; the "
                    f"manifest says part {known[0]!r} with {known[1]}",
                    record="counts",
                    key="num-examples",
                )
            )
    return out


def check_contract(entry: EgressEntry, payload: bytes, spec: ContractSpec) -> list[Finding]:
    """Every way ``entry`` departs from what its message type may carry (empty: conforms)."""
    kind = entry.message_type
    if entry.error and not entry.records:
        return []  # an error reply carries only its reason, which the content scan reads
    if kind == HANDSHAKE:
        findings, groups = _only_records(entry, {("config", "describe"), ("metric", "counts")})
        return findings + _check_handshake(entry, groups, payload, spec)
    if kind == PHASE1_TRAIN and spec.secagg:
        return check_secagg(entry, payload, spec)
    if kind == PHASE1_TRAIN:
        findings, groups = _only_records(entry, {("array", "arrays"), ("metric", "metrics")})
        arrays = groups.get(("array", "arrays"), [])
        metrics = groups.get(("metric", "metrics"), [])
        if arrays:
            findings += _check_arrays(entry, arrays, payload, spec)
        if metrics:
            findings += _check_keys(entry, metrics, PHASE1_TRAIN_METRICS, DP_METRICS)
            findings += _check_scalars(entry, metrics, payload, integer=("num-examples",))
        return findings
    if kind == PHASE1_EVAL:
        findings, groups = _only_records(entry, {("metric", "metrics")})
        metrics = groups.get(("metric", "metrics"), [])
        if metrics:
            findings += _check_keys(entry, metrics, PHASE1_EVAL_METRICS)
            findings += _check_scalars(entry, metrics, payload, integer=("num-examples",))
        return findings
    if kind == PHASE2:
        findings, groups = _only_records(entry, {("metric", "metrics")})
        metrics = groups.get(("metric", "metrics"), [])
        if metrics:
            findings += _check_keys(entry, metrics, frozenset(), PHASE2_METRICS)
            findings += _check_scalars(entry, metrics, payload)
        return findings
    return [
        entry.finding(
            "contract",
            f"message type '{kind}' is not one a fedpkt client answers "
            f"({HANDSHAKE}, {PHASE1_TRAIN}, {PHASE1_EVAL}, {PHASE2})",
        )
    ]


# ============================================================================ SecAgg+ replies


def _bytes_value(value: Any) -> bytes | None:
    """A bytes value as the egress log holds it (its Python repr ``b'...'``), else None."""
    if not isinstance(value, str) or value[:2] not in ("b'", 'b"'):
        return None
    try:
        blob = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return None
    return blob if isinstance(blob, bytes) else None


def _bytes_list(value: Any) -> list[bytes] | None:
    if not isinstance(value, list):
        return None
    blobs = [b for b in (_bytes_value(v) for v in value) if b is not None]
    return blobs if len(blobs) == len(value) else None


def _int_list(value: Any) -> list[int] | None:
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        return None
    return value


def secagg_stage_of(entry: EgressEntry, keys: set[str]) -> str | None:
    """The stage a SecAgg+ reply answers: the logged request stage, else the one stage whose
    keys the reply's ``secaggplus_configs`` shares (logs written before the stage was kept)."""
    if entry.stage in SECAGG_STAGES:
        return entry.stage
    matches = [stage for stage, expected in SECAGG_STAGES.items() if expected & keys]
    return matches[0] if len(matches) == 1 else None


def _is_public_key_pem(blob: bytes) -> bool:
    """An elliptic-curve public key in exactly the PEM form ``secaggplus_mod`` writes: the
    re-serialized key must equal the bytes, so nothing can ride before or after the block."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_pem_public_key(blob)
    except (ValueError, TypeError):
        return False
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return False
    canonical = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return canonical == blob


def _fernet_size(token: bytes) -> int | None:
    """The decoded size of a canonical Fernet token (version byte 0x80, 16-byte-block
    ciphertext), else None."""
    try:
        raw = base64.urlsafe_b64decode(token)
    except (ValueError, binascii.Error):
        return None
    if base64.urlsafe_b64encode(raw) != token or not raw or raw[0] != 0x80:
        return None
    body = len(raw) - _FERNET_OVERHEAD
    return len(raw) if body >= 16 and body % 16 == 0 else None


def _setup_problems(values: dict[str, Any], entry: EgressEntry) -> list[tuple[str, str]]:
    out = []
    keys = {}
    for name in ("pk1", "pk2"):
        blob = _bytes_value(values[name])
        if blob is None or not _is_public_key_pem(blob):
            out.append((name, "value is not one PEM elliptic-curve public key"))
        keys[name] = blob
    if not out and keys["pk1"] == keys["pk2"]:
        out.append(("pk2", "pk2 equals pk1"))
    return out


def _share_keys_problems(values: dict[str, Any], entry: EgressEntry) -> list[tuple[str, str]]:
    dsts, ctxts = _int_list(values["dsts"]), _bytes_list(values["ctxts"])
    if dsts is None:
        return [("dsts", "value is not a list of node ids")]
    if ctxts is None:
        return [("ctxts", "value is not a list of bytes")]
    out = []
    if not dsts or len(dsts) != len(ctxts):
        out.append(("ctxts", f"{len(ctxts)} ciphertexts for {len(dsts)} destinations"))
    if len(set(dsts)) != len(dsts) or entry.node in dsts or min(dsts, default=0) < 0:
        out.append(("dsts", "destinations repeat, are negative or include the sender's node"))
    sizes = [_fernet_size(c) for c in ctxts]
    if None in sizes:
        out.append(("ctxts", "a ciphertext is not a Fernet token"))
    elif len(set(sizes)) > 1:
        out.append(("ctxts", f"ciphertexts differ in size ({sorted(set(sizes))} bytes)"))
    return out


def _masked_problems(
    values: dict[str, Any], entry: EgressEntry, spec: ContractSpec
) -> list[tuple[str, str]]:
    """The masked vector: the weight factor (1,) then θ's arrays in name order, int64 in
    [0, SECAGG_MOD_RANGE), each exactly one numpy ``.npy`` array."""
    blobs = _bytes_list(values["masked_params"])
    if blobs is None:
        return [("masked_params", "value is not a list of bytes")]
    shapes = [(1,)] + [spec.arrays[name].shape for name in sorted(spec.arrays)]
    if len(blobs) != len(shapes):
        return [
            (
                "masked_params",
                f"{len(blobs)} masked arrays; expected {len(shapes)} (the weight factor and "
                f"θ's {len(spec.arrays)} arrays)",
            )
        ]
    out = []
    for number, (blob, shape) in enumerate(zip(blobs, shapes, strict=True)):
        header = _npy_header(blob)
        size = int(np.prod(shape)) * 8
        if header is None or header[:2] != ("int64", shape) or len(blob) != header[2] + size:
            got = f"{header[0]}{list(header[1])}" if header else f"{len(blob)} non-.npy bytes"
            out.append(
                (
                    "masked_params",
                    f"masked array {number} is {got}; expected an int64{list(shape)} .npy array",
                )
            )
            continue
        data = np.frombuffer(blob, dtype="<i8", offset=header[2])
        if len(data) and (data.min() < 0 or data.max() >= SECAGG_MOD_RANGE):
            out.append(
                (
                    "masked_params",
                    f"masked array {number} has values outside [0, 2^32): not a masked vector",
                )
            )
    return out


def _unmask_problems(values: dict[str, Any], entry: EgressEntry) -> list[tuple[str, str]]:
    nids, shares = _int_list(values["nids"]), _bytes_list(values["shares"])
    if nids is None:
        return [("nids", "value is not a list of node ids")]
    if shares is None:
        return [("shares", "value is not a list of bytes")]
    out = []
    if len(nids) != len(shares):
        out.append(("shares", f"{len(shares)} shares for {len(nids)} node ids"))
    if len(set(nids)) != len(nids) or min(nids, default=0) < 0:
        out.append(("nids", "node ids repeat or are negative"))
    if any(len(s) < 20 or (len(s) - 4) % 16 for s in shares):
        out.append(("shares", "a share is not a 4-byte index and 16-byte Shamir chunks"))
    return out


def _check_fitres(
    entry: EgressEntry,
    groups: dict[tuple[str, str], list[dict[str, Any]]],
    payload: bytes,
) -> list[Finding]:
    """The FitRes records of the masked-vector reply: phase-1 metrics, weight, OK status."""
    out: list[Finding] = []
    metrics = groups.get(("config", "fitres.metrics"), [])
    if metrics:
        out += _check_keys(entry, metrics, PHASE1_TRAIN_METRICS, DP_METRICS)
        out += _check_scalars(entry, metrics, payload, integer=("num-examples",))
    weight = groups.get(("metric", "fitres.num_examples"), [])
    if weight:
        out += _check_keys(entry, weight, frozenset({"num_examples"}))
        out += _check_scalars(entry, weight, payload)
        for record in weight:
            value = _record_value(entry, record, payload)
            if _is_number(value) and not value >= 0:
                out.append(
                    entry.finding(
                        "contract",
                        f"SecAgg+ weight {value!r} is negative",
                        record=record["record"],
                        key=record["key"],
                    )
                )
    status = groups.get(("config", "fitres.status"), [])
    if status:
        out += _check_keys(entry, status, frozenset({"code", "message"}))
        for record in status:
            value = _record_value(entry, record, payload)
            expected = {"code": 0, "message": ""}.get(record["key"])
            if record["key"] in ("code", "message") and (
                value != expected or isinstance(value, bool)
            ):
                out.append(
                    entry.finding(
                        "contract",
                        f"status {record['key']} is {str(value)[:40]!r}; expected {expected!r}",
                        record=record["record"],
                        key=record["key"],
                    )
                )
    return out


def check_secagg(entry: EgressEntry, payload: bytes, spec: ContractSpec) -> list[Finding]:
    """A phase-1 ``train`` reply of a SecAgg+ run: exactly one stage reply of ``secaggplus_mod``
    (see :data:`SECAGG_STAGES` and the module docstring); empty when it conforms."""
    configs = [r for r in entry.records if (r["kind"], r["record"]) == ("config", SECAGG_CONFIGS)]
    if not configs:
        names = sorted({str(r["record"]) for r in entry.records})
        return [
            entry.finding(
                "contract",
                f"phase 1 ran with SecAgg+ (privacy.secagg) but this train reply has no "
                f"'{SECAGG_CONFIGS}' record (records: {', '.join(names)}): W_i left unmasked",
                record=names[0] if names else None,
            )
        ]
    stage = secagg_stage_of(entry, {str(r["key"]) for r in configs})
    if stage is None:
        keys = ", ".join(str(r["key"]) for r in configs)
        return [
            entry.finding(
                "contract",
                f"'{SECAGG_CONFIGS}' keys ({keys}) are not those of one SecAgg+ stage "
                f"(requested stage: {entry.stage})",
                record=SECAGG_CONFIGS,
                key=str(configs[0]["key"]),
            )
        ]
    allowed = {("config", SECAGG_CONFIGS)}
    if stage == "collect_masked_vectors":
        allowed |= SECAGG_FITRES
    findings, groups = _only_records(entry, allowed, f"SecAgg+ '{stage}'")
    findings += _check_keys(entry, configs, SECAGG_STAGES[stage])
    if any(f.record == SECAGG_CONFIGS for f in findings):
        return findings  # wrong keys: the stage's value checks need exactly its keys
    values = {str(r["key"]): _record_value(entry, r, payload) for r in configs}
    if stage == "setup":
        problems = _setup_problems(values, entry)
    elif stage == "share_keys":
        problems = _share_keys_problems(values, entry)
    elif stage == "collect_masked_vectors":
        problems = _masked_problems(values, entry, spec)
        findings += _check_fitres(entry, groups, payload)
    else:
        problems = _unmask_problems(values, entry)
    findings += [
        entry.finding("contract", f"SecAgg+ {stage}: {detail}", record=SECAGG_CONFIGS, key=key)
        for key, detail in problems
    ]
    return findings


# ============================================================================ client fingerprints


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


def _text_hash(window: str) -> int:
    return hash(window) & 0xFFFFFFFFFFFFFFFF


def dialogue_keys(seqs: ClientSequences) -> tuple[np.ndarray, np.ndarray]:
    """Unique hashes of this client's dialogue text windows and dialogue token windows."""
    text = {
        _text_hash(w)
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


def _contains(sorted_values: np.ndarray, values: np.ndarray) -> np.ndarray:
    if len(sorted_values) == 0 or len(values) == 0:
        return np.zeros(len(values), dtype=bool)
    idx = np.searchsorted(sorted_values, values)
    idx[idx == len(sorted_values)] = 0
    return sorted_values[idx] == values


# ============================================================================ byte-level search

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


# ============================================================================ fingerprints


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
                hashes = np.fromiter((_text_hash(w) for w in windows), np.uint64, len(windows))
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


# ============================================================================ scanning a reply


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


# ============================================================================ the run


def senders(
    entries: Sequence[EgressEntry], egress_dir: Path, known: set[str]
) -> dict[int, set[str]]:
    """Which clients each node speaks for: the clients named in its requests and handshakes.

    Only ids present in the manifest count, so a reply cannot steer the audit away from its
    own data by announcing a made-up id.
    """
    by_node: dict[int, set[str]] = {}
    for entry in entries:
        ids = by_node.setdefault(entry.node, set())
        if entry.client in known:
            ids.add(str(entry.client))
        if entry.message_type == HANDSHAKE and entry.records:
            for record in entry.records:
                if record["kind"] == "config" and record["key"] == "client-ids":
                    payload = load_payload(egress_dir, entry)
                    value = _record_value(entry, record, payload)
                    if isinstance(value, list):
                        ids.update(str(v) for v in value if str(v) in known)
    return by_node


def _owners(entry: EgressEntry, by_node: dict[int, set[str]], known: set[str]) -> list[str]:
    """The clients whose data ``entry`` is searched for: its sender, else its node's clients,
    else (nothing known about the node) every client."""
    if entry.client in known:
        return [str(entry.client)]
    return sorted(by_node.get(entry.node) or known)


def load_tokenizer(cfg: FedpktConfig) -> Any:
    """The run's backbone tokenizer (only the tokenizer: the audit needs no weights)."""
    from transformers import AutoTokenizer

    from fedpkt.model.backbone import backbone_path

    path = backbone_path(
        cfg.backbone.name, embedded_size=cfg.backbone.embedded_size, progress=False
    )
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FedpktError(
            f"backbone '{cfg.backbone.name}' has no usable tokenizer ({first})"
        ) from None
    # Whole dialogues are longer than the model's context; they are only searched for, never
    # fed to the model, so the length warning would be noise.
    tokenizer.model_max_length = 1 << 62
    return tokenizer


def load_model_config(cfg: FedpktConfig) -> Any:
    """The backbone's config (for θ's shapes): what the server itself builds θ_0 from."""
    from fedpkt.model.backbone_info import backbone_config

    try:
        return backbone_config(cfg.backbone.name, embedded_size=cfg.backbone.embedded_size)
    except (OSError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FedpktError(
            f"backbone '{cfg.backbone.name}' has an unreadable config ({first})"
        ) from None


class DataIndex:
    """The searchable form of every client's data under one data root, built once.

    Holds each client's texts and token sequences (compact int64 arrays) and the generic-window
    sets counted over all of them. ``fingerprint`` builds one client's search tables; with
    ``keep_fingerprints`` they are cached (tests and repeated audits over the same data), else
    built per use so that memory stays flat however many clients a run has.
    """

    def __init__(
        self,
        data_root: str | Path,
        tokenizer: Any,
        history_turns: int,
        *,
        keep_fingerprints: bool = False,
    ) -> None:
        self.data_root = Path(data_root)
        self.tokenizer = tokenizer
        manifest = load_manifest(self.data_root)
        self.client_ids = [str(e["client_id"]) for e in manifest["clients"]]
        self.sequences = {
            cid: client_sequences(load_client(self.data_root, cid), tokenizer, history_turns)
            for cid in self.client_ids
        }
        self.generic = GenericSets.count(
            (dialogue_keys(seqs) for seqs in self.sequences.values()), len(self.client_ids)
        )
        self.keep_fingerprints = keep_fingerprints
        self._fingerprints: dict[str, Fingerprint] = {}

    @classmethod
    def for_run(cls, run: RunDir, tokenizer: Any = None, **kwargs: Any) -> DataIndex:
        """The index of a run's data root with its backbone's tokenizer (unless given)."""
        cfg = run.config()
        return cls(
            run.data_root(cfg), tokenizer or load_tokenizer(cfg), cfg.data.history_turns, **kwargs
        )

    def fingerprint(self, client_id: str) -> Fingerprint:
        if client_id in self._fingerprints:
            return self._fingerprints[client_id]
        built = Fingerprint.build(self.sequences[client_id], self.generic)
        if self.keep_fingerprints:
            self._fingerprints[client_id] = built
        return built


def audit_run(
    run_dir: str | Path, *, index: DataIndex | None = None, model_config: Any = None
) -> AuditReport:
    """Audit one run directory; raises FedpktError on bad input (nothing is written).

    ``index`` (the run's client data made searchable) and ``model_config`` (the backbone's, for
    θ's shapes) default to the run's own; pass them to audit many runs over the same data.
    """
    started = time.perf_counter()
    run = RunDir(Path(run_dir))
    if not run.root.is_dir():
        raise FedpktError(f"run directory '{run_dir}' does not exist (expected a fedpkt run)")
    cfg = run.config()
    entries = read_egress(run.egress)
    data_root = run.data_root(cfg)
    manifest = load_manifest(data_root)
    spec = contract_spec(cfg, model_config or load_model_config(cfg), manifest)
    known = set(spec.clients)

    findings: list[Finding] = []
    by_type: dict[str, dict[str, int]] = {}
    for entry in entries:
        payload = load_payload(run.egress, entry)
        row = by_type.setdefault(entry.message_type, {"messages": 0, "bytes": 0})
        row["messages"] += 1
        row["bytes"] += len(payload)
        findings += check_contract(entry, payload, spec)
        if entry.client is not None and entry.client not in known:
            findings.append(
                entry.finding(
                    "contract",
                    f"request named client '{entry.client}', which is not in the manifest",
                )
            )

    if index is None:
        index = DataIndex.for_run(run)
    elif index.data_root.resolve() != data_root.resolve():
        raise FedpktError(
            f"audit index covers '{index.data_root}' but run '{run.root}' has its data in "
            f"'{data_root}'"
        )
    by_node = senders(entries, run.egress, known)
    groups: dict[str, list[EgressEntry]] = {}
    for entry in entries:
        for owner in _owners(entry, by_node, known):
            groups.setdefault(owner, []).append(entry)
    decode = getattr(index.tokenizer, "decode", None)
    for client_id in sorted(groups):
        fingerprint = index.fingerprint(client_id)
        for entry in groups[client_id]:
            findings += scan_reply(entry, load_payload(run.egress, entry), fingerprint, decode)

    return AuditReport(
        run=str(run.root),
        findings=findings,
        messages=len(entries),
        bytes=sum(row["bytes"] for row in by_type.values()),
        by_type=by_type,
        clients_scanned=sorted(groups),
        seconds=time.perf_counter() - started,
        rules={
            "text_ngram_words": TEXT_NGRAM,
            "token_window_ids": TOKEN_WINDOW,
            "generic_min_clients": index.generic.min_clients,
            "persona_and_canary_min_words": MIN_SENTENCE_WORDS,
            "token_encodings": [name for name, _ in ENCODINGS],
            "phase2_metrics": sorted(PHASE2_METRICS),
            "secagg": spec.secagg,
        },
    )


def write_audit(run_dir: str | Path, report: AuditReport) -> tuple[Path, Path]:
    """Write ``RUN/audit.json`` and ``RUN/audit.md`` (atomically); returns both paths."""
    root = Path(run_dir)
    json_path = atomic_write_json(root / "audit.json", report.to_json())
    md_path = atomic_write_text(root / "audit.md", report.to_markdown())
    return json_path, md_path


def iter_findings(report: AuditReport, kind: FindingKind) -> Iterator[Finding]:
    """The report's findings of one kind (the CLI and tests use this filter)."""
    return (f for f in report.findings if f.kind == kind)
