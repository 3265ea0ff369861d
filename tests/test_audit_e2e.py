"""The audit on real Flower simulations: a clean run passes, deliberately leaky clients are caught.

The leaky clients are test-only mods given to ``simulate(client_mods=...)``; they run inside the
egress mod, so what they add is exactly what the log records. Each mod is one leak kind, each
in its own record, and each test checks its own leak by where the finding points:
(1) a dialogue line in a ConfigRecord, (2) token ids in an extra array, (3) text in a metric
name, (4) a persona sentence in a phase-2 reply.

The clean run keeps payload bytes as by default (``privacy.record_payloads = "sampled"``: round
1 and small replies), so the audit checks some lines itself and takes the egress mod's check for
the rest; the leaky runs keep none it checked (``"none"``), so every leak is caught where it
was sent.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message
from flwr.clientapp.typing import ClientAppCallable, Mod
from typer.testing import CliRunner

from cli.main import app as cli_app
from fedpkt.data.encoding import encode_examples
from fedpkt.data.examples import examples_from_dialogues
from fedpkt.data.partition import load_client
from fedpkt.data.schema import ClientData
from fedpkt.model.backbone import load_backbone
from fedpkt.privacy.audit import AuditReport, Finding, audit_run, read_egress
from fedpkt.rundir import RunDir
from sim.simulate import simulate
from tests.conftest import tiny_config

pytestmark = pytest.mark.e2e

RUN = {"phase1__rounds": 2, "data__canaries": 2}


def _client_of(msg: Message, message_type: str) -> str | None:
    """The client a request of ``message_type`` is for (a cohort's first), else None."""
    if msg.metadata.message_type != message_type:
        return None
    config = msg.content.config_records["config"]
    return str(config["client-id"] if "client-id" in config else config["client-ids"][0])


def _longest_line(data: ClientData) -> str:
    """The longest training utterance without a planted canary."""
    canaries = [c["text"] for c in data.meta.get("canaries", [])]
    lines = [u.text for d in data.splits["train"] for u in d.turns]
    return max((t for t in lines if not any(c in t for c in canaries)), key=len)


def leak_line_in_config(data_root: Path) -> Mod:
    """Leak (1): the client's longest training line in an extra ConfigRecord."""

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(msg, context)
        client = _client_of(msg, "train")
        if client and not reply.has_error():
            line = _longest_line(load_client(data_root, client))
            reply.content["leak-config"] = ConfigRecord({"note": line})
        return reply

    return mod


def leak_token_ids(data_root: Path) -> Mod:
    """Leak (2): the ids of its first training example, int32, in an extra ArrayRecord."""

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(msg, context)
        client = _client_of(msg, "train")
        if client and not reply.has_error():
            data = load_client(data_root, client)
            tokenizer = load_backbone("embedded", embedded_size="tiny").tokenizer
            examples = examples_from_dialogues(data.splits["train"], 3)
            ids = encode_examples(examples[:1], tokenizer, 128)[0].input_ids
            array = Array(np.asarray(ids, dtype=np.int32))
            reply.content["leak-array"] = ArrayRecord(array_dict={"cache": array})
        return reply

    return mod


def leak_text_in_metric_name(data_root: Path) -> Mod:
    """Leak (3): a training line as the NAME of an extra metric in the reply's metrics."""

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(msg, context)
        client = _client_of(msg, "train")
        if client and not reply.has_error():
            data = load_client(data_root, client)
            lines = [
                u.text for d in data.splits["train"] for u in d.turns if u.speaker == "partner"
            ]
            reply.content["metrics"][max(lines, key=len)] = 1.0
        return reply

    return mod


def leak_persona_sentence(data_root: Path) -> Mod:
    """Leak (4): the first persona sentence in an extra ConfigRecord of the phase-2 reply."""

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(msg, context)
        client = _client_of(msg, "train.personalize")
        if client and not reply.has_error():
            sentence = load_client(data_root, client).persona.sentences[0]
            reply.content["leak-persona"] = ConfigRecord({"about": sentence})
        return reply

    return mod


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    """One honest run, phases 1 and 2 (shared by every test that needs a clean log)."""
    return simulate(tiny_config(**RUN), tmp_path_factory.mktemp("audit-clean") / "run")


@pytest.fixture(scope="module")
def leaky_source(tmp_path_factory: pytest.TempPathFactory) -> AuditReport:
    """Phase 1 only, one round, every sampled client running leaks (1), (2) and (3)."""
    root = tmp_path_factory.mktemp("audit-leaky") / "run"
    data = root / "data"
    mods = [leak_line_in_config(data), leak_token_ids(data), leak_text_in_metric_name(data)]
    cfg = tiny_config(**{**RUN, "phase1__rounds": 1, "privacy__record_payloads": "none"})
    run = simulate(cfg, root, phases="source", client_mods=mods)
    return audit_run(run.root)


@pytest.fixture(scope="module")
def leaky_personalize(clean: RunDir, tmp_path_factory: pytest.TempPathFactory) -> AuditReport:
    """Phase 2 only (one client, one epoch) from the clean run's source prefix, with leak (4)."""
    root = tmp_path_factory.mktemp("audit-leaky-p2") / "run"
    shutil.copytree(clean.data, root / "data", ignore=shutil.ignore_patterns("vaults"))
    (root / "checkpoints").mkdir()
    shutil.copy(clean.source_prefix, root / "checkpoints" / clean.source_prefix.name)
    cfg = tiny_config(
        **RUN, phase2__max_clients=1, phase2__max_epochs=1, privacy__record_payloads="none"
    )
    mods = [leak_persona_sentence(root / "data")]
    run = simulate(cfg, root, phases="personalize", client_mods=mods)
    return audit_run(run.root)


def _at(report: AuditReport, record: str) -> list[Finding]:
    return [f for f in report.findings if f.record == record and f.kind != "contract"]


def test_clean_run_has_zero_findings(clean: RunDir) -> None:
    report = audit_run(clean.root)
    assert report.findings == []
    assert report.verdict == "clean"
    entries = read_egress(clean.egress)
    assert report.messages == len(entries)
    assert report.bytes == sum(e.bytes for e in entries)


def test_clean_run_is_checked_by_the_audit_and_where_it_was_sent(clean: RunDir) -> None:
    """Round 2's W_i (tiny θ: 21.6 KB, over the 16 KiB kept under "sampled") are checked only
    by the egress mod; round 1 by both; handshakes (no run config) only by the audit."""
    report = audit_run(clean.root)
    entries = {e.log: e for e in read_egress(clean.egress)}
    client_only = [entries[log] for log in report.checked["client"]]
    assert client_only and {(e.message_type, e.round) for e in client_only} == {("train", 2)}
    assert report.checked["client+audit"]
    assert {entries[log].message_type for log in report.checked["audit"]} == {"query"}


def test_clean_run_covers_every_reply_type(clean: RunDir) -> None:
    """Handshake, phase-1 train and evaluate, and phase 2 were all in the audited log."""
    report = audit_run(clean.root)
    assert set(report.by_type) == {"query", "train", "evaluate", "train.personalize"}


def test_cli_on_the_clean_run_exits_0_and_writes_the_verdict(clean: RunDir) -> None:
    result = CliRunner().invoke(cli_app, ["audit", str(clean.root)])
    assert result.exit_code == 0, result.output
    assert (clean.root / "audit.json").is_file() and (clean.root / "audit.md").is_file()


def test_dialogue_line_in_a_config_record_is_caught(leaky_source: AuditReport) -> None:
    found = _at(leaky_source, "leak-config")
    assert found and {f.kind for f in found} == {"text"}
    assert all(f.source and "dialogue" in f.source for f in found)


def test_token_ids_in_an_extra_array_are_caught(leaky_source: AuditReport) -> None:
    found = _at(leaky_source, "leak-array")
    assert found and {(f.kind, f.key, f.encoding) for f in found} == {
        ("token-ids", "cache", "int32-le")
    }


def test_text_in_a_metric_name_is_caught(leaky_source: AuditReport) -> None:
    found = [f for f in _at(leaky_source, "metrics") if f.key not in ("num-examples", "train-loss")]
    assert found and {f.kind for f in found} == {"text"}


def test_leaks_are_caught_where_they_were_sent(leaky_source: AuditReport) -> None:
    """No W_i bytes were kept: the egress mod's own check found every leak."""
    train = [f for f in leaky_source.findings if f.message_type == "train"]
    assert train and {f.checked_by for f in train} == {"client"}
    assert leaky_source.checked["client"] and not leaky_source.checked["client+audit"]


def test_every_leaking_client_is_named(leaky_source: AuditReport) -> None:
    """Each sampled client leaked in each of its train replies; each is caught by name."""
    senders = {f.client for f in leaky_source.findings if f.message_type == "train"}
    assert len(senders) == 3  # phase1.clients_per_round = 3
    for client in senders:
        records = {f.record for f in leaky_source.findings if f.client == client}
        assert {"leak-config", "leak-array", "metrics"} <= records


def test_persona_sentence_in_a_phase2_reply_is_caught(leaky_personalize: AuditReport) -> None:
    found = _at(leaky_personalize, "leak-persona")
    assert [(f.kind, f.message_type) for f in found] == [("text", "train.personalize")]
    assert found[0].source and found[0].source.endswith("persona sentence 0")


def test_leaky_run_exits_1_from_the_cli(leaky_personalize: AuditReport) -> None:
    result = CliRunner().invoke(cli_app, ["audit", leaky_personalize.run])
    assert result.exit_code == 1, result.output
    assert "VIOLATION" in result.output
