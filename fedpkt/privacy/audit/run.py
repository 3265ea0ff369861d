"""Auditing a run directory: who each node speaks for, the searchable index of all clients'
data (:class:`DataIndex`), and :func:`audit_run`, which checks every reply against the
contract and scans it for its sender's data: itself, from the stored bytes, and from the
check the egress mod recorded where the reply was sent (``client_check``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from fedpkt.atomic import atomic_write_json, atomic_write_text
from fedpkt.data.partition import load_client, load_manifest
from fedpkt.errors import FedpktError
from fedpkt.local import PHASE2_METRICS
from fedpkt.privacy.audit.backbone import load_model_config, load_tokenizer
from fedpkt.privacy.audit.byte_search import ENCODINGS
from fedpkt.privacy.audit.client_check import recorded_findings
from fedpkt.privacy.audit.contract import HANDSHAKE, check_contract, contract_spec
from fedpkt.privacy.audit.egress_log import EgressEntry, _record_value, load_payload, read_egress
from fedpkt.privacy.audit.findings import AuditReport, Finding, FindingKind
from fedpkt.privacy.audit.fingerprints import (
    MIN_SENTENCE_WORDS,
    TEXT_NGRAM,
    TOKEN_WINDOW,
    Fingerprint,
    GenericSets,
    client_sequences,
    dialogue_keys,
)
from fedpkt.privacy.audit.record_checks import ContractSpec
from fedpkt.privacy.audit.scan import TEXT_ENCODINGS, scan_reply
from fedpkt.rundir import RunDir


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
        ids.update(c for c in entry.cohort or () if c in known)
        if entry.message_type == HANDSHAKE and entry.records and entry.payload:
            for record in entry.records:
                if record["kind"] == "config" and record["key"] == "client-ids":
                    payload = load_payload(egress_dir, entry)
                    value = _record_value(entry, record, payload)
                    if isinstance(value, list):
                        ids.update(str(v) for v in value if str(v) in known)
    return by_node


def _owners(entry: EgressEntry, by_node: dict[int, set[str]], known: set[str]) -> list[str]:
    """The clients whose data ``entry`` is searched for: every persona of a cohort request (a
    persona's part may leak another's data), else its sender, else its node's clients, else
    (nothing known about the node) every client."""
    cohort = sorted(set(entry.cohort or ()) & known)
    if cohort:
        return cohort
    if entry.client in known:
        return [str(entry.client)]
    return sorted(by_node.get(entry.node) or known)


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
        self._digests: dict[str, str] = {}

    @classmethod
    def for_run(cls, run: RunDir, tokenizer: Any = None, **kwargs: Any) -> DataIndex:
        """The index of a run's data root with its backbone's tokenizer (unless given)."""
        cfg = run.config()
        return cls(
            run.data_root(cfg), tokenizer or load_tokenizer(cfg), cfg.data.history_turns, **kwargs
        )

    def digest(self, client_id: str) -> str:
        """SHA-256 of what is searched for in this client's replies (``ClientSequences``)."""
        if client_id not in self._digests:
            self._digests[client_id] = self.sequences[client_id].digest()
        return self._digests[client_id]

    def fingerprint(self, client_id: str) -> Fingerprint:
        if client_id in self._fingerprints:
            return self._fingerprints[client_id]
        built = Fingerprint.build(self.sequences[client_id], self.generic)
        if self.keep_fingerprints:
            self._fingerprints[client_id] = built
        return built


CHECKED_BY = ("audit", "client", "client+audit")
"""Where a reply was checked: by the audit from its stored bytes, by the egress mod as it was
sent (its bytes not kept), or both."""


@dataclasses.dataclass
class _Line:
    """One log line as the audit holds it: the stored bytes (None: not kept) and the findings
    of the egress mod's check (None: none that can stand in for the audit's)."""

    entry: EgressEntry
    owners: list[str]
    payload: bytes | None
    recorded: tuple[list[Finding], list[Finding]] | None

    @property
    def checked_by(self) -> str:
        if self.payload is None:
            return "client"
        return "audit" if self.recorded is None else "client+audit"


def _read_line(
    entry: EgressEntry, owners: list[str], egress: Path, spec: ContractSpec, index: DataIndex
) -> _Line:
    """Load a line's stored bytes (verified) and its recorded check; FedpktError when the line
    can be checked neither way."""
    recorded, why = None, None
    if entry.client_check is not None:
        try:
            recorded = recorded_findings(entry, spec, index, owners)
        except FedpktError as err:
            why = str(err)
    if entry.payload or not entry.records or recorded is None:
        if why and not entry.payload and entry.records:
            raise FedpktError(f"{why}, and its payload bytes were not kept: it cannot be audited")
        return _Line(entry, owners, load_payload(egress, entry), recorded)
    return _Line(entry, owners, None, recorded)


def _merge(own: list[Finding], recorded: list[Finding] | None, line: _Line) -> list[Finding]:
    """The audit's findings and the egress mod's, each once, marked with who found it."""
    merged: dict[tuple[Any, ...], Finding] = {}
    for finding, by in [(f, "audit") for f in own] + [(f, "client") for f in recorded or []]:
        key = (finding.kind, finding.record, finding.key, finding.source, finding.detail)
        old = merged.get(key)
        if old is None:
            merged[key] = dataclasses.replace(finding, checked_by=by)
        elif old.checked_by != by:
            matches = max(old.matches, finding.matches)
            merged[key] = dataclasses.replace(old, checked_by="client+audit", matches=matches)
    return list(merged.values())


def audit_run(
    run_dir: str | Path, *, index: DataIndex | None = None, model_config: Any = None
) -> AuditReport:
    """Audit one run directory; raises FedpktError on bad input (nothing is written).

    Each line is checked against the contract and searched for its owners' data by the audit
    itself when its bytes were kept, and by the egress mod's recorded check (its generic
    windows dropped) when that check was made with the audit's rules, contract and data;
    a line with neither is bad input. ``index`` (the run's client data made searchable) and
    ``model_config`` (the backbone's, for θ's shapes) default to the run's own; pass them to
    audit many runs over the same data.
    """
    started = time.perf_counter()
    run = RunDir(Path(run_dir))
    if not run.root.is_dir():
        raise FedpktError(f"run directory '{run_dir}' does not exist (expected a fedpkt run)")
    cfg = run.config()
    torn: list[str] = []
    entries = read_egress(run.egress, torn)
    data_root = run.data_root(cfg)
    manifest = load_manifest(data_root)
    spec = contract_spec(cfg, model_config or load_model_config(cfg), manifest)
    known = set(spec.clients)
    if index is None:
        index = DataIndex.for_run(run)
    elif index.data_root.resolve() != data_root.resolve():
        raise FedpktError(
            f"audit index covers '{index.data_root}' but run '{run.root}' has its data in "
            f"'{data_root}'"
        )
    by_node = senders(entries, run.egress, known)
    lines = [_read_line(e, _owners(e, by_node, known), run.egress, spec, index) for e in entries]

    own: dict[int, list[Finding]] = {}
    by_type: dict[str, dict[str, int]] = {}
    checked: dict[str, list[str]] = {by: [] for by in CHECKED_BY}
    for number, line in enumerate(lines):
        entry = line.entry
        row = by_type.setdefault(entry.message_type, {"messages": 0, "bytes": 0})
        row["messages"] += 1
        row["bytes"] += len(line.payload) if line.payload is not None else entry.bytes
        checked[line.checked_by].append(entry.log)
        found = own.setdefault(number, [])
        if line.payload is not None:
            found += check_contract(entry, line.payload, spec)
        for client in [entry.client] if entry.client is not None else entry.cohort or ():
            if client not in known:
                found.append(
                    entry.finding(
                        "contract",
                        f"request named client '{client}', which is not in the manifest",
                    )
                )
    groups: dict[str, list[int]] = {}
    for number, line in enumerate(lines):
        for owner in line.owners:
            groups.setdefault(owner, []).append(number)
    decode = getattr(index.tokenizer, "decode", None)
    for client_id in sorted(groups):
        stored = [n for n in groups[client_id] if lines[n].payload is not None]
        if not stored:
            continue
        fingerprint = index.fingerprint(client_id)
        for n in stored:
            own[n] += scan_reply(lines[n].entry, lines[n].payload or b"", fingerprint, decode)
    findings: list[Finding] = []
    for number, line in enumerate(lines):
        recorded = line.recorded[0] + line.recorded[1] if line.recorded else None
        findings += _merge(own[number], recorded, line)

    return AuditReport(
        run=str(run.root),
        findings=findings,
        messages=len(entries),
        bytes=sum(row["bytes"] for row in by_type.values()),
        by_type=by_type,
        clients_scanned=sorted(groups),
        seconds=time.perf_counter() - started,
        torn=torn,
        rules={
            "text_ngram_words": TEXT_NGRAM,
            "token_window_ids": TOKEN_WINDOW,
            "generic_min_clients": index.generic.min_clients,
            "persona_and_canary_min_words": MIN_SENTENCE_WORDS,
            "token_encodings": [name for name, _ in ENCODINGS],
            "text_encodings": [name for name, _ in TEXT_ENCODINGS],
            "phase2_metrics": sorted(PHASE2_METRICS),
            "secagg": spec.secagg,
        },
        checked=checked,
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
