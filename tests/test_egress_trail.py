"""An audit trail that scales: the egress mod checks each reply where it is sent, so the log
need not keep every payload's bytes (``privacy.record_payloads``).

Every negative control of ``tests/test_audit.py`` is replayed here through the real egress mod
twice: once keeping the bytes (``all``: the audit re-checks them) and once keeping none it
checked (``none``: the audit has only the mod's recorded check). Both must give the same
findings, and the second must have found them where the reply was sent.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from clients.egress import SMALL_PAYLOAD_BYTES, PayloadMode, keep_payload, payload_mode
from fedpkt.errors import FedpktError
from fedpkt.privacy.audit import Finding, write_audit
from fedpkt.rundir import RunDir, create_run_dir
from tests.egress_fixtures import Node, node_identity
from tests.test_audit import (
    _audit,
    _client,
    _longest_line,
    _manifest_count,
    _train_ids,
    _windows,
    world,
)

__all__ = ["node_identity", "world"]  # shared fixtures

pytestmark = pytest.mark.usefixtures("node_identity")
SOURCE = {"client-id": "A-0000", "phase": "source", "server-round": 2}


def _theta(world: dict[str, Any], **extra: np.ndarray) -> ArrayRecord:
    return ArrayRecord(array_dict={k: Array(v) for k, v in {**world["theta"], **extra}.items()})


def _train_reply(world: dict[str, Any], arrays: ArrayRecord | None = None, **extra: Any) -> Any:
    metrics = MetricRecord({"num-examples": 20, "train-loss": 3.25})
    return RecordDict({"arrays": arrays or _theta(world), "metrics": metrics, **extra})


def _uint8(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=np.uint8)


def _negative_controls(world: dict[str, Any]) -> dict[str, tuple[str, RecordDict | str]]:
    """The leaks of tests/test_audit.py as (message type, reply from A-0000)."""
    line = _longest_line(world, "A-0000")
    ids = _train_ids(world, "A-0000")
    canaries = _client(world, "A-0000").meta["canaries"]
    canary_ids = world["tokenizer"](f" {canaries[0]['text']}", add_special_tokens=False)
    bad_bytes = Array(dtype="float32", shape=(4, 32), stype="numpy.ndarray", data=b"\0" * 600)
    return {
        "line in a config record": ("train", _train_reply(world, leak=ConfigRecord({"n": line}))),
        "line as a metric name": (
            "train",
            RecordDict(
                {
                    "arrays": _theta(world),
                    "metrics": MetricRecord({"num-examples": 20, "train-loss": 3.2, line: 1.0}),
                }
            ),
        ),
        "utf-8 line in array bytes": (
            "train",
            _train_reply(world, _theta(world, aux=_uint8(b"\x01\xff" + line.encode()))),
        ),
        "utf-16-le line in array bytes": (
            "train",
            _train_reply(world, _theta(world, aux=_uint8(b"\x01\xff" + line.encode("utf-16")))),
        ),
        "utf-32-be line in array bytes": (
            "train",
            _train_reply(world, _theta(world, aux=_uint8(b"\x01" + line.encode("utf-32-be")))),
        ),
        "int16-le ids in an array": (
            "train",
            _train_reply(world, _theta(world, aux=np.asarray(ids, dtype="<i2"))),
        ),
        "float32-be ids in an array": (
            "train",
            _train_reply(world, _theta(world, aux=np.asarray(ids, dtype=">f4"))),
        ),
        "int32-le ids at an odd offset": (
            "train",
            _train_reply(
                world, _theta(world, aux=_uint8(b"\x07\x08\x09" + np.int32(ids).tobytes()))
            ),
        ),
        "ids as a json list": (
            "evaluate",
            RecordDict(
                {
                    "metrics": MetricRecord({"num-examples": 6, "val-loss": 3.5}),
                    "aux": MetricRecord({"ids": ids}),
                }
            ),
        ),
        "ids as a bytes value": (
            "train",
            _train_reply(world, aux=ConfigRecord({"blob": np.int32(ids).tobytes()})),
        ),
        "canary token ids": (
            "train",
            _train_reply(world, _theta(world, aux=np.asarray(canary_ids["input_ids"]))),
        ),
        "canary in an error reason": ("train", f"crashed on '{canaries[1]['text']}'"),
        "array bytes that are not the declared array": (
            "train",
            _train_reply(
                world,
                ArrayRecord(
                    array_dict={
                        **{k: Array(v) for k, v in world["theta"].items()},
                        "encoder.embedding.weight": bad_bytes,
                    }
                ),
            ),
        ),
        "extra phase-1 metric": (
            "train",
            RecordDict(
                {
                    "arrays": _theta(world),
                    "metrics": MetricRecord({"num-examples": 20, "train-loss": 3.2, "x": 1.0}),
                }
            ),
        ),
    }


CONTROLS = [
    "line in a config record",
    "line as a metric name",
    "utf-8 line in array bytes",
    "utf-16-le line in array bytes",
    "utf-32-be line in array bytes",
    "int16-le ids in an array",
    "float32-be ids in an array",
    "int32-le ids at an odd offset",
    "ids as a json list",
    "ids as a bytes value",
    "canary token ids",
    "canary in an error reason",
    "array bytes that are not the declared array",
    "extra phase-1 metric",
]


def _replay(
    world: dict[str, Any], root: Path, payloads: PayloadMode, message_type: str, reply: Any
) -> tuple[RunDir, list[dict[str, Any]]]:
    run = create_run_dir(world["cfg"], root / payloads)
    node = Node(run, world["cfg"], 11, payloads=payloads, data_root=world["root"])
    node.handshake(["A-0000"], ["A"], [_manifest_count(world, "A-0000")])
    return run, node.send(message_type, SOURCE, reply)


def _seen(findings: list[Finding]) -> list[tuple[Any, ...]]:
    """A finding as both checks must agree on it (without who found it)."""
    return sorted(
        (f.kind, f.client, f.record, f.key, f.source, f.encoding, f.matches, f.excerpt, f.detail)
        for f in findings
    )


@pytest.mark.parametrize("control", CONTROLS)
def test_every_negative_control_is_caught_without_kept_bytes(
    world: dict[str, Any], tmp_path: Path, control: str
) -> None:
    """The same findings from the kept bytes (audit and mod agree: client+audit) as from the
    mod's check alone (client), for every leak kind the audit tests use."""
    message_type, reply = _negative_controls(world)[control]
    kept_run, _ = _replay(world, tmp_path, "all", message_type, reply)
    lean_run, lines = _replay(world, tmp_path, "none", message_type, reply)
    kept, lean = _audit(world, kept_run).findings, _audit(world, lean_run).findings
    assert lean and _seen(lean) == _seen(kept)
    assert {f.checked_by for f in kept} == {"client+audit"}
    # An error reason is written in the line itself, so the audit reads it in either case.
    assert {f.checked_by for f in lean} == {"client+audit" if isinstance(reply, str) else "client"}
    assert lines[0]["payload"] is None and lines[0]["client_check"] is not None


def test_generic_chit_chat_the_client_found_is_dropped_by_the_audit(
    world: dict[str, Any], tmp_path: Path
) -> None:
    """The mod cannot know which windows are generic (that takes every client's data), so it
    records the match; the audit drops it: only the extra record's contract finding stays."""
    clients = [f"{p}-{i:04d}" for p, n in (("A", 8), ("B", 3), ("C", 3)) for i in range(n)]
    phrases = {
        c: {
            w
            for s in _client(world, c).splits.values()
            for d in s
            for u in d.turns
            for w in _windows(u.text)
        }
        for c in clients
    }
    shared = sorted(w for w in phrases["A-0000"] if sum(w in phrases[c] for c in clients) >= 3)
    reply = _train_reply(world, note=ConfigRecord({"line": shared[0]}))
    run, lines = _replay(world, tmp_path, "none", "train", reply)
    assert lines[0]["client_check"]["hits"]["A-0000"]  # found where it was sent
    findings = _audit(world, run).findings
    assert [(f.kind, f.record) for f in findings] == [("contract", "note")]


# ====================================================================== which bytes are kept


@pytest.mark.parametrize(
    "mode,size,round_num,checked,kept",
    [
        ("all", 10**6, 5, True, True),
        ("none", 10**6, 1, True, False),
        ("none", 100, 5, False, True),  # not checked by the mod: always kept
        ("sampled", 10**6, 1, True, True),  # round 1
        ("sampled", 10**6, 2, True, False),
        ("sampled", SMALL_PAYLOAD_BYTES, 2, True, True),  # small
        ("sampled", SMALL_PAYLOAD_BYTES + 1, 0, True, False),
    ],
)
def test_keep_payload(mode: Any, size: int, round_num: int, checked: bool, kept: bool) -> None:
    assert keep_payload(mode, size, round_num, checked) is kept


def test_payload_modes_accept_the_old_booleans() -> None:
    assert [payload_mode(v) for v in (True, False, "true", "false", "sampled")] == [
        "all",
        "none",
        "all",
        "none",
        "sampled",
    ]
    with pytest.raises(FedpktError, match="expected one of all, sampled, none"):
        payload_mode("some")


def test_sampled_keeps_round_one_and_small_lines(world: dict[str, Any], tmp_path: Path) -> None:
    """Tiny θ is 21.6 KB (> 16 KiB): its round-1 reply is kept, its round-2 reply is not; a
    metrics-only reply and the handshake are kept in any round."""
    run = create_run_dir(world["cfg"], tmp_path / "run")
    node = Node(run, world["cfg"], 11, payloads="sampled", data_root=world["root"])
    node.handshake(["A-0000"], ["A"], [_manifest_count(world, "A-0000")])
    evaluate = RecordDict({"metrics": MetricRecord({"num-examples": 6, "val-loss": 3.5})})
    (one,) = node.send("train", {**SOURCE, "server-round": 1}, _train_reply(world))
    (two,) = node.send("train", SOURCE, _train_reply(world))
    (small,) = node.send("evaluate", SOURCE, evaluate)
    assert two["bytes"] > SMALL_PAYLOAD_BYTES
    assert [line["payload"] is not None for line in (node.lines()[0], one, two, small)] == [
        True,
        True,
        False,
        True,
    ]
    report = _audit(world, run)
    assert report.findings == []
    assert {by: len(logs) for by, logs in report.checked.items()} == {
        "audit": 1,
        "client": 1,
        "client+audit": 2,
    }


def test_identical_payloads_are_stored_once(world: dict[str, Any], tmp_path: Path) -> None:
    run = create_run_dir(world["cfg"], tmp_path / "run")
    node = Node(run, world["cfg"], 11, payloads="all", data_root=world["root"])
    reply = RecordDict({"metrics": MetricRecord({"num-examples": 6, "val-loss": 3.5})})
    lines = node.send("evaluate", SOURCE, reply) + node.send("evaluate", SOURCE, reply)
    assert lines[0]["payload"] == lines[1]["payload"] == f"payloads/{lines[0]['sha256']}.bin"
    assert len(list((run.egress / "payloads").iterdir())) == 1


def test_a_reply_the_mod_cannot_check_keeps_its_bytes(
    world: dict[str, Any], tmp_path: Path
) -> None:
    """A request for a client with no data on this node: the check fails, the reply still
    leaves, and its bytes are kept even under ``none``; the audit flags the unknown client."""
    run = create_run_dir(world["cfg"], tmp_path / "run")
    node = Node(run, world["cfg"], 11, payloads="none", data_root=world["root"])
    (line,) = node.send("train", {**SOURCE, "client-id": "Z-9999"}, _train_reply(world))
    assert line["client_check"] is None and "Z-9999" in line["client_check_error"]
    assert line["payload"] is not None
    findings = _audit(world, run).findings
    assert [f.kind for f in findings] == ["contract"] and "Z-9999" in findings[0].detail


# ====================================================================== trusting a recorded check


def _rewrite_check(run: RunDir, node_id: int, change: Any) -> None:
    """Apply ``change`` to the client_check of every checked line of one node's log."""
    file = run.egress / f"{node_id}.jsonl"
    lines = [json.loads(text) for text in file.read_text().splitlines()]
    for line in lines:
        if line.get("client_check"):
            change(line["client_check"])
    file.write_text("".join(json.dumps(line) + "\n" for line in lines))


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("data", {"A-0000": "0" * 64}, "not checked against client A-0000's data"),
        ("rules", {"text_ngram_words": 6}, "other scan rules"),
        ("contract_spec", "0" * 64, "another contract"),
    ],
)
def test_a_check_made_another_way_cannot_stand_in_for_missing_bytes(
    world: dict[str, Any], tmp_path: Path, field: str, value: Any, message: str
) -> None:
    """Other data, other rules or another contract: without the bytes, no verdict (exit 2)."""
    run, _ = _replay(world, tmp_path, "none", "train", _train_reply(world))
    _rewrite_check(run, 11, lambda check: check.update({field: value}))
    with pytest.raises(FedpktError, match=message):
        _audit(world, run)


def test_with_the_bytes_kept_the_audit_ignores_a_check_made_another_way(
    world: dict[str, Any], tmp_path: Path
) -> None:
    """The same altered check beside kept bytes: the audit checks the bytes itself."""
    line = _longest_line(world, "A-0000")
    run, _ = _replay(
        world, tmp_path, "all", "train", _train_reply(world, x=ConfigRecord({"n": line}))
    )
    _rewrite_check(run, 11, lambda check: check.update({"rules": {}}))
    report = _audit(world, run)
    assert {f.checked_by for f in report.findings} == {"audit"}
    assert {f.kind for f in report.findings} == {"contract", "text"}
    assert len(report.checked["audit"]) == 2  # handshake and the train reply


def test_audit_files_say_where_lines_were_checked(world: dict[str, Any], tmp_path: Path) -> None:
    run, _ = _replay(world, tmp_path, "none", "train", _train_reply(world))
    json_path, md_path = write_audit(run.root, _audit(world, run))
    written = json.loads(json_path.read_text())
    assert written["checked"] == {"audit": 1, "client": 1, "client+audit": 0}
    assert written["checked_lines"]["client"] == ["11.jsonl:2"]
    assert "by the egress mod as they were sent, bytes not kept: 1" in md_path.read_text()
