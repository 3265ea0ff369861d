"""The contract: what each message type's reply may hold (handshake, phase-1 train and
evaluate, phase 2), built from the run's θ_0 and data manifest; anything else is a
``contract`` finding. Phase-1 train replies of a SecAgg+ run go to ``secagg``.

A phase-2 cohort reply is logged one line per persona (``fedpkt.privacy.cohort``), and each
line is checked on its own: persona p's line may hold MetricRecord ``metrics/p`` (scalars under
:data:`fedpkt.local.PHASE2_METRICS` names) and its entry of ConfigRecord ``failed`` (a one-line
reason), at least one of the two; the line of records that belong to no persona of the request
breaks the contract with each of them. A one-client phase-2 request (``client-id``, the form
before cohorts) may still be answered with one MetricRecord ``metrics``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedpkt.config import FedpktConfig
from fedpkt.local import PHASE2_METRICS
from fedpkt.privacy.audit.egress_log import EgressEntry, _record_value
from fedpkt.privacy.audit.findings import Finding
from fedpkt.privacy.audit.record_checks import (
    DP_METRICS,
    PHASE1_TRAIN_METRICS,
    ArraySpec,
    ContractSpec,
    _check_keys,
    _check_scalars,
    _npy_header,
    _only_records,
)
from fedpkt.privacy.audit.secagg import check_secagg
from fedpkt.privacy.cohort import FAILED, FAILED_REASON_CHARS, persona_metrics_record

PHASE1_EVAL_METRICS = frozenset({"num-examples", "val-loss"})
HANDSHAKE = "query"
PHASE1_TRAIN = "train"
PHASE1_EVAL = "evaluate"
PHASE2 = "train.personalize"


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


def _check_phase2_metrics(
    entry: EgressEntry, metrics: list[dict[str, Any]], payload: bytes
) -> list[Finding]:
    return _check_keys(entry, metrics, frozenset(), PHASE2_METRICS) + _check_scalars(
        entry, metrics, payload
    )


def _check_failed(
    entry: EgressEntry, failed: list[dict[str, Any]], payload: bytes
) -> list[Finding]:
    """Persona p's entry of ``failed``: a string of one line, at most FAILED_REASON_CHARS."""
    out = []
    for record in failed:
        value = _record_value(entry, record, payload)
        problem = None
        if not isinstance(value, str):
            problem = f"value is {type(value).__name__}; expected a one-line reason"
        elif "\n" in value or "\r" in value or len(value) > FAILED_REASON_CHARS:
            problem = f"reason is not one line of at most {FAILED_REASON_CHARS} characters"
        if problem:
            out.append(entry.finding("contract", problem, record=FAILED, key=record["key"]))
    return out


def _check_persona(entry: EgressEntry, payload: bytes) -> list[Finding]:
    """One persona's line of a phase-2 cohort reply: ``metrics/<id>`` and/or its ``failed``."""
    persona = str(entry.client)
    name = persona_metrics_record(persona)
    allowed = {("metric", name), ("config", FAILED)}
    label = f"'{PHASE2}' (persona {persona})"
    findings, groups = _only_records(entry, allowed, label, required=False)
    metrics = groups.get(("metric", name), [])
    failed = groups.get(("config", FAILED), [])
    findings += _check_phase2_metrics(entry, metrics, payload)
    findings += _check_failed(entry, failed, payload)
    if not metrics and not failed:
        findings.append(
            entry.finding(
                "contract",
                f"persona {persona} has neither MetricRecord '{name}' nor an entry in '{FAILED}'",
                record=name,
            )
        )
    return findings


def _check_cohort(entry: EgressEntry, payload: bytes) -> list[Finding]:
    """A line of a cohort reply: a persona's part, or the records no persona of it owns."""
    cohort = list(entry.cohort or ())
    if entry.message_type != PHASE2:
        return [
            entry.finding(
                "contract",
                f"a '{entry.message_type}' request names a cohort; only {PHASE2} does",
            )
        ]
    if entry.client is None:
        groups: dict[tuple[str, str], list[str]] = {}
        for record in entry.records:
            groups.setdefault((record["kind"], str(record["record"])), []).append(record["key"])
        return [
            entry.finding(
                "contract",
                f"{kind} record '{name}' (keys: {', '.join(map(str, keys))}) belongs to no "
                f"persona of the request (cohort: {', '.join(cohort)})",
                record=name,
                key=str(keys[0]),
            )
            for (kind, name), keys in groups.items()
        ]
    if entry.client not in cohort:
        return [
            entry.finding(
                "contract",
                f"line is attributed to {entry.client}, who is not in the request's cohort",
            )
        ]
    return _check_persona(entry, payload)


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
    if entry.cohort is not None:
        return _check_cohort(entry, payload)
    if kind == PHASE2:
        findings, groups = _only_records(entry, {("metric", "metrics")})
        return findings + _check_phase2_metrics(
            entry, groups.get(("metric", "metrics"), []), payload
        )
    return [
        entry.finding(
            "contract",
            f"message type '{kind}' is not one a fedpkt client answers "
            f"({HANDSHAKE}, {PHASE1_TRAIN}, {PHASE1_EVAL}, {PHASE2})",
        )
    ]
