"""The contract: what each message type's reply may hold (handshake, phase-1 train and
evaluate, phase 2), built from the run's θ_0 and data manifest; anything else is a
``contract`` finding. Phase-1 train replies of a SecAgg+ run go to ``secagg``.
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
