"""SecAgg+ replies: under ``privacy.secagg`` each phase-1 ``train`` reply must be exactly one
stage reply of Flower's ``secaggplus_mod`` (:data:`SECAGG_STAGES`), checked key by key and
value by value (PEM keys, Fernet tokens, masked int64 vectors, Shamir shares, FitRes).
"""

from __future__ import annotations

import ast
import base64
import binascii
from typing import Any

import numpy as np

from fedpkt.privacy.audit.egress_log import EgressEntry, _record_value
from fedpkt.privacy.audit.findings import Finding
from fedpkt.privacy.audit.record_checks import (
    DP_METRICS,
    PHASE1_TRAIN_METRICS,
    ContractSpec,
    _check_keys,
    _check_scalars,
    _is_number,
    _npy_header,
    _only_records,
)

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
    (see :data:`SECAGG_STAGES` and the package docstring); empty when it conforms."""
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
