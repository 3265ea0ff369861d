"""Auditing a run directory: who each node speaks for, the searchable index of all clients'
data (:class:`DataIndex`), the backbone's tokenizer and config, and :func:`audit_run`,
which checks every reply against the contract and scans it for its sender's data.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from fedpkt.atomic import atomic_write_json, atomic_write_text
from fedpkt.config import FedpktConfig
from fedpkt.data.partition import load_client, load_manifest
from fedpkt.errors import FedpktError
from fedpkt.local import PHASE2_METRICS
from fedpkt.privacy.audit.byte_search import ENCODINGS
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
from fedpkt.privacy.audit.scan import scan_reply
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
