"""Phase-2 cohort replies in the egress log and in ``fedpkt audit``.

A cohort request names several personas (``client-ids``); its reply holds ``metrics/<id>`` per
persona and, for personas that failed, ``failed`` {id: reason}. Each reply here is a real Flower
Message passed through the real egress mod (``tests/egress_fixtures.py``); the crafted leaky
ones are the negative controls. Node 13 serves B-0000 and B-0001 of the tiny corpus.

The leak tests run twice: with the payload bytes kept (the audit re-scans them) and with none
kept (the audit judges from the egress mod's own check), and must give the same findings.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from clients.egress import describe_content
from fedpkt.privacy.audit import AuditReport
from fedpkt.rundir import RunDir, create_run_dir
from tests.egress_fixtures import Node, node_identity
from tests.test_audit import PHASE2_REPLY, _audit, _client, _longest_line, _manifest_count, world
from wire import FAILED, persona_metrics_record

__all__ = ["node_identity", "world"]  # shared fixtures

COHORT = ["B-0000", "B-0001"]
REQUEST = {"client-ids": COHORT, "seeds": [7, 8], "phase": "personalize", "server-round": 0}
pytestmark = pytest.mark.usefixtures("node_identity")


@pytest.fixture
def run(world: dict[str, Any], tmp_path: Any) -> RunDir:
    return create_run_dir(world["cfg"], tmp_path / "run")


@pytest.fixture(params=["all", "none"])
def node(request: pytest.FixtureRequest, world: dict[str, Any], run: RunDir) -> Node:
    """Node 13 after its handshake; keeps every payload ("all") or none it checked ("none")."""
    node = Node(run, world["cfg"], 13, payloads=request.param, data_root=world["root"])
    node.handshake(COHORT, ["B", "B"], [_manifest_count(world, c) for c in COHORT])
    return node


def _metrics(**extra: Any) -> dict[str, Any]:
    """Both personas' honest metric records, plus ``extra`` records."""
    return {persona_metrics_record(c): MetricRecord(PHASE2_REPLY) for c in COHORT} | extra


def _personalize(node: Node, records: dict[str, Any]) -> list[dict[str, Any]]:
    return node.send("train.personalize", REQUEST, RecordDict(records))


def _found_by(node: Node) -> str:
    """Who finds a leak: the egress mod alone when it kept no bytes, else both."""
    return "client" if node.payloads == "none" else "client+audit"


# ====================================================================== the log lines


def test_a_cohort_reply_is_one_line_per_persona_holding_its_own_records(node: Node) -> None:
    """Two personas -> two lines; each holds only metrics/<its id>, with offsets into its own
    bytes; both lines name the cohort and the reply they came from."""
    reply = RecordDict(_metrics())
    _, whole = describe_content(reply)
    lines = node.send("train.personalize", REQUEST, reply)
    assert [line["client_id"] for line in lines] == COHORT
    for line, persona in zip(lines, COHORT, strict=True):
        assert {r["record"] for r in line["records"]} == {persona_metrics_record(persona)}
        assert line["records"][0]["offset"] == 0
        assert line["cohort"] == COHORT
        assert line["message_type"] == "train.personalize"
    assert len({line["message_id"] for line in lines}) == 1
    assert {line["reply_sha256"] for line in lines} == {hashlib.sha256(whole).hexdigest()}
    assert sum(line["bytes"] for line in lines) == len(whole)


def test_lines_of_one_reply_regroup_into_its_bytes(world: dict[str, Any], run: RunDir) -> None:
    """Concatenating the lines' stored bytes in log order gives the reply's payload back."""
    node = Node(run, world["cfg"], 13, payloads="all", data_root=world["root"])
    reply = RecordDict(_metrics(**{FAILED: ConfigRecord({"B-0001": "diverged"})}))
    lines = _personalize(node, dict(reply.items()))
    joined = b"".join((run.egress / line["payload"]).read_bytes() for line in lines)
    assert hashlib.sha256(joined).hexdigest() == lines[0]["reply_sha256"]


def test_a_failed_persona_gets_its_failed_entry(node: Node) -> None:
    """B-0001 failed: its line holds its key of ``failed`` and nothing else."""
    records = {
        persona_metrics_record("B-0000"): MetricRecord(PHASE2_REPLY),
        FAILED: ConfigRecord({"B-0001": "out of memory"}),
    }
    lines = _personalize(node, records)
    assert [(r["record"], r["key"]) for r in lines[1]["records"]] == [(FAILED, "B-0001")]


def test_records_of_no_persona_go_to_an_unattributed_line(node: Node) -> None:
    """metrics/B-0002 (not in the request), a failed entry for C-0000 and a plain ``metrics``
    record belong to nobody: one more line, client_id null, holding exactly those."""
    extra = {
        persona_metrics_record("B-0002"): MetricRecord({"f1": 0.5}),
        "metrics": MetricRecord({"f1": 0.5}),
        FAILED: ConfigRecord({"C-0000": "oops"}),
    }
    lines = _personalize(node, _metrics(**extra))
    assert [line["client_id"] for line in lines] == [*COHORT, None]
    assert sorted((r["record"], r["key"]) for r in lines[2]["records"]) == [
        (FAILED, "C-0000"),
        ("metrics", "f1"),
        ("metrics/B-0002", "f1"),
    ]


def test_one_client_requests_are_logged_as_before(world: dict[str, Any], run: RunDir) -> None:
    """A phase-1 request names one ``client-id``: one line, that client, no cohort."""
    node = Node(run, world["cfg"], 11, data_root=world["root"])
    reply = RecordDict({"metrics": MetricRecord({"num-examples": 6, "val-loss": 3.5})})
    config = {"client-id": "A-0000", "phase": "source", "server-round": 2}
    (line,) = node.send("evaluate", config, reply)
    assert (line["client_id"], line["round"], line.get("cohort")) == ("A-0000", 2, None)


# ====================================================================== the audit


def test_a_clean_cohort_reply_audits_clean(world: dict[str, Any], run: RunDir, node: Node) -> None:
    """Both personas' metrics, or one persona's metrics and the other's failure: no finding."""
    _personalize(node, _metrics())
    _personalize(
        node,
        {
            persona_metrics_record("B-0001"): MetricRecord(PHASE2_REPLY),
            FAILED: ConfigRecord({"B-0000": "RuntimeError: CUDA out of memory"}),
        },
    )
    report = _audit(world, run)
    assert report.findings == []
    assert report.messages == 1 + 2 + 2  # handshake, then one line per persona per reply
    counts = {by: len(lines) for by, lines in report.checked.items()}
    # The handshake carries no run config, so only the audit checks it (from its kept bytes).
    assert counts["audit"] == 1 and counts[_found_by(node)] == 4


def test_a_personas_own_text_in_its_failure_reason_is_found(
    world: dict[str, Any], run: RunDir, node: Node
) -> None:
    """B-0001's longest line as its failure reason: the one channel a string may use. No
    contract finding; a text finding for B-0001, located at failed/B-0001."""
    line = _longest_line(world, "B-0001")
    _personalize(node, {**_metrics(), FAILED: ConfigRecord({"B-0001": line})})
    findings = _audit(world, run).findings
    assert findings and {(f.kind, f.client, f.record, f.key) for f in findings} == {
        ("text", "B-0001", FAILED, "B-0001")
    }
    assert all(f.source and f.source.startswith("B-0001: train dialogue") for f in findings)
    assert {f.checked_by for f in findings} == {_found_by(node)}


def test_another_personas_data_in_a_personas_part_is_found(
    world: dict[str, Any], run: RunDir, node: Node
) -> None:
    """A record attributed to the wrong persona: B-0001's failure reason quotes B-0000's
    persona. Each persona's part is searched for every persona of the cohort, so the finding
    names the line's persona (B-0001) and the data's owner (B-0000)."""
    sentence = _client(world, "B-0000").persona.sentences[0]
    _personalize(node, {**_metrics(), FAILED: ConfigRecord({"B-0001": sentence})})
    findings = _audit(world, run).findings
    assert [(f.kind, f.client, f.key, f.source) for f in findings] == [
        ("text", "B-0001", "B-0001", "B-0000: persona sentence 0")
    ]
    assert findings[0].checked_by == _found_by(node)


def test_a_record_for_a_persona_outside_the_request_breaks_the_contract(
    world: dict[str, Any], run: RunDir, node: Node
) -> None:
    """metrics/B-0002 in a reply to {B-0000, B-0001}: unattributed, so a contract finding; its
    bytes are still searched (for the cohort's data)."""
    _personalize(node, _metrics(**{persona_metrics_record("B-0002"): MetricRecord({"f1": 0.1})}))
    findings = _audit(world, run).findings
    assert [(f.kind, f.client, f.record) for f in findings] == [
        ("contract", None, "metrics/B-0002")
    ]
    assert "belongs to no persona of the request" in findings[0].detail


def test_an_unattributed_record_leaking_a_personas_text_is_found_as_both(
    world: dict[str, Any], run: RunDir, node: Node
) -> None:
    """An extra ConfigRecord with B-0000's persona sentence: a contract finding (nobody owns
    the record) and a text finding (searched for the cohort's data)."""
    sentence = _client(world, "B-0000").persona.sentences[0]
    _personalize(node, _metrics(note=ConfigRecord({"about": sentence})))
    findings = _audit(world, run).findings
    assert sorted((f.kind, f.client, f.record, f.source) for f in findings) == [
        ("contract", None, "note", None),
        ("text", None, "note", "B-0000: persona sentence 0"),
    ]


def test_a_failed_entry_for_an_unknown_id_breaks_the_contract(
    world: dict[str, Any], run: RunDir, node: Node
) -> None:
    _personalize(node, {**_metrics(), FAILED: ConfigRecord({"Z-9999": "gone"})})
    findings = _audit(world, run).findings
    assert [(f.kind, f.client, f.record, f.key) for f in findings] == [
        ("contract", None, FAILED, "Z-9999")
    ]


def test_a_persona_left_out_of_the_reply_breaks_the_contract(
    world: dict[str, Any], run: RunDir, node: Node
) -> None:
    """B-0001 has neither metrics nor a failure: its (empty) line is a finding."""
    _personalize(node, {persona_metrics_record("B-0000"): MetricRecord(PHASE2_REPLY)})
    findings = _audit(world, run).findings
    assert [(f.kind, f.client) for f in findings] == [("contract", "B-0001")]
    assert "neither" in findings[0].detail


def test_persona_metrics_are_checked_per_persona(
    world: dict[str, Any], run: RunDir, node: Node
) -> None:
    """B-0000's metrics with an extra name and B-0001's prefix as an array under its name:
    each is a contract finding on its own persona's line."""
    prefix = ArrayRecord(array_dict={"p": Array(np.ones((4, 8), dtype=np.float32))})
    records = {
        persona_metrics_record("B-0000"): MetricRecord({**PHASE2_REPLY, "generated_0": 1.0}),
        persona_metrics_record("B-0001"): prefix,
    }
    _personalize(node, records)
    report: AuditReport = _audit(world, run)
    assert [(f.client, f.record, f.key) for f in report.findings] == [
        ("B-0000", "metrics/B-0000", "generated_0"),
        ("B-0001", "metrics/B-0001", "p"),
        ("B-0001", "metrics/B-0001", None),  # and so it has neither metrics nor a failure
    ]
    assert "array record 'metrics/B-0001'" in report.findings[1].detail


def test_a_multi_line_failure_reason_breaks_the_contract(
    world: dict[str, Any], run: RunDir, node: Node
) -> None:
    _personalize(node, {**_metrics(), FAILED: ConfigRecord({"B-0000": "a\nb"})})
    findings = _audit(world, run).findings
    assert [(f.kind, f.client, f.key) for f in findings] == [("contract", "B-0000", "B-0000")]


def test_a_canary_in_a_cohort_error_reason_is_found(
    world: dict[str, Any], run: RunDir, node: Node
) -> None:
    """An error reply has no records: one line for the whole cohort, searched for every
    persona's data. A Part A client's canary is not B's data, so use a B persona sentence."""
    sentence = _client(world, "B-0001").persona.sentences[1]
    lines = node.send("train.personalize", REQUEST, f"failed on '{sentence}'")
    assert [(line["client_id"], line["error"] is not None) for line in lines] == [(None, True)]
    findings = _audit(world, run).findings
    assert [(f.kind, f.client, f.key, f.source) for f in findings] == [
        ("text", None, "error reason", "B-0001: persona sentence 1")
    ]
