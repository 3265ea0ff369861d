"""The egress audit on hand-made egress logs: contract, content search, canaries, bad input.

Each log line is built exactly as ``clients/egress.py`` writes it (``describe_content`` on a
real ``flwr.app.RecordDict``), for the tiny synthetic corpus (14 clients, 2 canaries per Part A
client) and the tiny embedded backbone's tokenizer.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from typer.testing import CliRunner

from cli.main import app as cli_app
from clients.egress import describe_content
from fedpkt.config import DataConfig, FedpktConfig
from fedpkt.data.encoding import encode_examples
from fedpkt.data.examples import examples_from_dialogues
from fedpkt.data.partition import load_client, prepare_partitions
from fedpkt.data.schema import ClientData
from fedpkt.errors import FedpktError
from fedpkt.privacy.audit import (
    AuditReport,
    ByteScanner,
    DataIndex,
    Finding,
    ascii_runs,
    audit_run,
    generic_min_clients,
    id_windows,
    load_model_config,
    load_tokenizer,
    text_runs,
    words_of,
    write_audit,
)
from fedpkt.rundir import RunDir, create_run_dir
from fedpkt.source import initial_theta
from tests.conftest import tiny_config

PHASE2_REPLY = {
    "f1": 0.21,
    "f1_2gram": 0.05,
    "lcs_f1": 0.18,
    "c_score": 0.3,
    "test_loss": 2.5,
    "init_test_loss": 3.1,
    "n_test_responses": 6.0,
    "n_train_dialogues": 4.0,
    "epochs": 3.0,
    "best_epoch": 2.0,
    "seconds": 1.25,
}
NODES = {"A-0000": 11, "A-0001": 12, "B-0000": 13}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Prepared tiny partitions (shared), the run config pointing at them, tokenizer, θ_0."""
    root = tmp_path_factory.mktemp("audit-data") / "data"
    prepare_partitions(root, DataConfig(scale="tiny", canaries=2), 0)
    cfg = tiny_config(data__canaries=2, data__prepared_dir=str(root))
    model_config = load_model_config(cfg)
    theta, _ = initial_theta(cfg, model_config)
    tokenizer = load_tokenizer(cfg)
    index = DataIndex(root, tokenizer, cfg.data.history_turns, keep_fingerprints=True)
    return {
        "cfg": cfg,
        "root": root,
        "tokenizer": tokenizer,
        "index": index,
        "model_config": model_config,
        "theta": theta,
    }


class EgressLog:
    """Writes egress lines and payload files in the egress mod's exact format."""

    def __init__(self, run: RunDir) -> None:
        self.dir = run.egress
        self.count = 0

    def reply(
        self,
        node: int,
        message_type: str,
        content: RecordDict | None,
        client: str | None = None,
        phase: str | None = None,
        round_num: int | None = None,
        error: str | None = None,
        stage: str | None = None,
    ) -> None:
        """One reply line; ``stage`` is the SecAgg+ stage the request asked for (if any)."""
        self.count += 1
        entry: dict[str, Any] = {
            "time": time.time(),
            "run_id": 1,
            "node_id": node,
            "client_id": client,
            "phase": phase,
            "round": round_num,
            "message_type": message_type,
            "secagg_stage": stage,
            "error": error,
            "records": [],
            "payload": None,
        }
        if content is not None:
            records, payload = describe_content(content)
            name = f"payloads/{node}-{self.count}.bin"
            (self.dir / "payloads").mkdir(parents=True, exist_ok=True)
            (self.dir / name).write_bytes(payload)
            entry.update(
                records=records,
                bytes=len(payload),
                sha256=hashlib.sha256(payload).hexdigest(),
                payload=name,
            )
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / f"{node}.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, sort_keys=True, default=repr) + "\n")

    # -- the honest replies of clients/app.py ----------------------------------------------
    def handshake(self, client: str, part: str, count: int) -> None:
        content = RecordDict(
            {
                "describe": ConfigRecord({"client-ids": [client], "parts": [part]}),
                "counts": MetricRecord({"num-examples": [count]}),
            }
        )
        self.reply(NODES[client], "query", content, phase="handshake")

    def phase1(self, client: str, arrays: dict[str, np.ndarray], **extra: Any) -> RecordDict:
        content = RecordDict(
            {
                "arrays": ArrayRecord(array_dict={k: Array(v) for k, v in arrays.items()}),
                "metrics": MetricRecord({"num-examples": 20, "train-loss": 3.25}),
                **extra,
            }
        )
        self.reply(NODES[client], "train", content, client, "source", 1)
        return content

    def evaluate(self, client: str) -> None:
        content = RecordDict({"metrics": MetricRecord({"num-examples": 6, "val-loss": 3.5})})
        self.reply(NODES[client], "evaluate", content, client, "source", 1)

    def phase2(self, client: str, metrics: dict[str, Any], **extra: Any) -> None:
        content = RecordDict({"metrics": MetricRecord(metrics), **extra})
        self.reply(NODES[client], "train.personalize", content, client, "personalize", 0)


def _manifest_count(world: dict[str, Any], client: str) -> int:
    data = load_client(world["root"], client)
    return sum(u.speaker == "persona" for d in data.splits["train"] for u in d.turns)


@pytest.fixture
def run(world: dict[str, Any], tmp_path: Path) -> RunDir:
    return create_run_dir(world["cfg"], tmp_path / "run")


@pytest.fixture
def log(world: dict[str, Any], run: RunDir) -> EgressLog:
    """A log holding one honest handshake per node (A-0000, A-0001 in Part A; B-0000 in B)."""
    egress = EgressLog(run)
    for client in NODES:
        egress.handshake(client, client[0], _manifest_count(world, client))
    return egress


def _audit(world: dict[str, Any], run: RunDir) -> AuditReport:
    return audit_run(run.root, index=world["index"], model_config=world["model_config"])


def _kinds(findings: list[Finding]) -> list[str]:
    return sorted({f.kind for f in findings})


def _content(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.kind != "contract"]


def _client(world: dict[str, Any], client: str) -> ClientData:
    return load_client(world["root"], client)


def _train_ids(world: dict[str, Any], client: str) -> list[int]:
    """The token ids of the client's last training example holding no canary (those are found
    as canaries), as the client encodes it."""
    data = _client(world, client)
    cfg: FedpktConfig = world["cfg"]
    canaries = [c["text"] for c in data.meta.get("canaries", [])]
    examples = [
        ex
        for ex in examples_from_dialogues(data.splits["train"], cfg.data.history_turns)
        if not any(c in u.text for c in canaries for u in [*ex.history, ex.response])
    ]
    encoded = encode_examples(examples, world["tokenizer"], cfg.data.max_length)
    return list(encoded[-1].input_ids)


def _longest_line(world: dict[str, Any], client: str) -> str:
    """The client's longest training utterance that holds no canary (those are found as such)."""
    data = _client(world, client)
    canaries = [c["text"] for c in data.meta.get("canaries", [])]
    lines = [u.text for d in data.splits["train"] for u in d.turns]
    return max((t for t in lines if not any(c in t for c in canaries)), key=len)


# ================================================================ clean runs


def test_honest_replies_give_a_clean_verdict(
    world: dict[str, Any], run: RunDir, log: EgressLog
) -> None:
    """3 handshakes + phase-1 train + evaluate + phase 2 = 6 replies, no finding."""
    log.phase1("A-0000", world["theta"])
    log.evaluate("A-0001")
    log.phase2("B-0000", PHASE2_REPLY)
    report = _audit(world, run)
    assert report.findings == []
    assert report.verdict == "clean"
    assert report.messages == 6
    payloads = sum(p.stat().st_size for p in (run.egress / "payloads").iterdir())
    assert report.bytes == payloads
    assert report.clients_scanned == ["A-0000", "A-0001", "B-0000"]


def test_zero_filled_prefix_arrays_do_not_match_token_ids(
    world: dict[str, Any], run: RunDir, log: EgressLog
) -> None:
    """Constant bytes never match: windows with < 3 distinct ids are not searched for."""
    log.phase1("A-0000", {k: np.zeros_like(v) for k, v in world["theta"].items()})
    assert _audit(world, run).findings == []


def _windows(text: str) -> set[str]:
    words = words_of(text)
    return {" ".join(words[i : i + 8]) for i in range(len(words) - 7)}


def test_generic_chit_chat_is_not_reported(
    world: dict[str, Any], run: RunDir, log: EgressLog
) -> None:
    """An 8-word phrase found in the data of >= 3 of the 14 clients identifies nobody."""
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
    assert shared, "the tiny corpus has templated chit-chat"
    log.phase1("A-0000", world["theta"], note=ConfigRecord({"line": shared[0]}))
    report = _audit(world, run)
    assert _content(report.findings) == []
    assert _kinds(report.findings) == ["contract"]  # the extra record itself still breaks it


# ================================================================ the contract


def test_extra_array_breaks_the_phase1_contract(
    world: dict[str, Any], run: RunDir, log: EgressLog
) -> None:
    arrays = {**world["theta"], "extra": np.ones(3, dtype=np.float32)}
    log.phase1("A-0000", arrays)
    findings = _audit(world, run).findings
    assert [(f.kind, f.key) for f in findings] == [("contract", "extra")]


def test_missing_prefix_array_breaks_the_contract(
    world: dict[str, Any], run: RunDir, log: EgressLog
) -> None:
    arrays = dict(world["theta"])
    dropped = sorted(arrays)[0]
    del arrays[dropped]
    log.phase1("A-0000", arrays)
    findings = _audit(world, run).findings
    assert [(f.kind, f.key) for f in findings] == [("contract", dropped)]


def test_wrong_shape_and_dtype_break_the_contract(
    world: dict[str, Any], run: RunDir, log: EgressLog
) -> None:
    """Tiny backbone: kv_hidden d = 32, m = 4, so the embedding must be float32 (4, 32)."""
    arrays = dict(world["theta"])
    assert arrays["encoder.embedding.weight"].shape == (4, 32)
    arrays["encoder.embedding.weight"] = np.zeros((5, 32), dtype=np.float32)
    arrays["encoder.transform.0.bias"] = arrays["encoder.transform.0.bias"].astype(np.float64)
    log.phase1("A-0000", arrays)
    findings = _audit(world, run).findings
    assert sorted(f.key for f in findings) == [
        "encoder.embedding.weight",
        "encoder.transform.0.bias",
    ]
    assert any("float32[5, 32]" in f.detail and "float32[4, 32]" in f.detail for f in findings)


def test_array_bytes_must_be_the_declared_array(
    world: dict[str, Any], run: RunDir, log: EgressLog
) -> None:
    """An Array that declares float32 (4, 32) but carries other bytes is caught."""
    arrays = {k: Array(v) for k, v in world["theta"].items()}
    arrays["encoder.embedding.weight"] = Array(
        dtype="float32", shape=(4, 32), stype="numpy.ndarray", data=b"\x00" * 600
    )
    content = RecordDict(
        {
            "arrays": ArrayRecord(array_dict=arrays),
            "metrics": MetricRecord({"num-examples": 20, "train-loss": 3.25}),
        }
    )
    log.reply(NODES["A-0000"], "train", content, "A-0000", "source", 1)
    findings = _audit(world, run).findings
    assert [(f.kind, f.key) for f in findings] == [("contract", "encoder.embedding.weight")]
    assert "not a float32[4, 32] numpy array" in findings[0].detail


def test_extra_phase1_metric_breaks_the_contract(
    world: dict[str, Any], run: RunDir, log: EgressLog
) -> None:
    content = RecordDict(
        {
            "arrays": ArrayRecord(array_dict={k: Array(v) for k, v in world["theta"].items()}),
            "metrics": MetricRecord({"num-examples": 20, "train-loss": 3.25, "grad-norm": 1.0}),
        }
    )
    log.reply(NODES["A-0000"], "train", content, "A-0000", "source", 1)
    findings = _audit(world, run).findings
    assert [(f.kind, f.key) for f in findings] == [("contract", "grad-norm")]


def test_phase1_reply_may_report_its_dp_epsilon(
    world: dict[str, Any], run: RunDir, log: EgressLog
) -> None:
    """Under DP-SGD the train reply adds ``epsilon``: allowed, nothing else is."""
    content = RecordDict(
        {
            "arrays": ArrayRecord(array_dict={k: Array(v) for k, v in world["theta"].items()}),
            "metrics": MetricRecord({"num-examples": 20, "train-loss": 3.25, "epsilon": 0.8}),
        }
    )
    log.reply(NODES["A-0000"], "train", content, "A-0000", "source", 1)
    assert _audit(world, run).findings == []


def test_phase2_metric_outside_the_allowed_names(
    world: dict[str, Any], run: RunDir, log: EgressLog
) -> None:
    log.phase2("B-0000", {**PHASE2_REPLY, "generated_0": 1.0})
    findings = _audit(world, run).findings
    assert [(f.kind, f.key) for f in findings] == [("contract", "generated_0")]


def test_phase2_metric_must_be_a_scalar(world: dict[str, Any], run: RunDir, log: EgressLog) -> None:
    log.phase2("B-0000", {**PHASE2_REPLY, "f1": [0.1, 0.2]})
    findings = _audit(world, run).findings
    assert [(f.kind, f.key) for f in findings] == [("contract", "f1")]
    assert "expected a number" in findings[0].detail


def test_phase2_reply_may_not_carry_arrays(
    world: dict[str, Any], run: RunDir, log: EgressLog
) -> None:
    prefix = ArrayRecord(array_dict={"prefix": Array(np.ones((4, 128), dtype=np.float32))})
    log.phase2("B-0000", PHASE2_REPLY, arrays=prefix)
    findings = _audit(world, run).findings
    assert [(f.kind, f.record) for f in findings] == [("contract", "arrays")]


def test_handshake_count_must_match_the_manifest(world: dict[str, Any], run: RunDir) -> None:
    egress = EgressLog(run)
    true_count = _manifest_count(world, "A-0000")
    egress.handshake("A-0000", "A", true_count + 1)
    findings = _audit(world, run).findings
    assert [(f.kind, f.key) for f in findings] == [("contract", "num-examples")]
    assert f"with {true_count}" in findings[0].detail


def test_handshake_naming_an_unknown_client(world: dict[str, Any], run: RunDir) -> None:
    egress = EgressLog(run)
    content = RecordDict(
        {
            "describe": ConfigRecord({"client-ids": ["Z-9999"], "parts": ["A"]}),
            "counts": MetricRecord({"num-examples": [3]}),
        }
    )
    egress.reply(NODES["A-0000"], "query", content, phase="handshake")
    findings = _audit(world, run).findings
    assert [(f.kind, f.key) for f in findings] == [("contract", "client-ids")]


def test_unknown_message_type_breaks_the_contract(
    world: dict[str, Any], run: RunDir, log: EgressLog
) -> None:
    log.reply(
        NODES["A-0000"], "train.upload", RecordDict({"m": MetricRecord({"x": 1.0})}), "A-0000"
    )
    findings = _audit(world, run).findings
    assert [f.kind for f in findings] == ["contract"]
    assert "train.upload" in findings[0].detail


# ================================================================ content: text


def test_dialogue_line_in_a_config_record_is_found(
    world: dict[str, Any], run: RunDir, log: EgressLog
) -> None:
    line = _longest_line(world, "A-0000")
    log.phase1("A-0000", world["theta"], leak=ConfigRecord({"note": line}))
    findings = _content(_audit(world, run).findings)
    assert findings and {f.kind for f in findings} == {"text"}
    assert all(f.record == "leak" and f.key == "note" for f in findings)
    assert all(f.source and f.source.startswith("A-0000: train dialogue") for f in findings)


def test_dialogue_line_in_a_metric_name_is_found(
    world: dict[str, Any], run: RunDir, log: EgressLog
) -> None:
    line = _longest_line(world, "A-0001")
    content = RecordDict(
        {
            "arrays": ArrayRecord(array_dict={k: Array(v) for k, v in world["theta"].items()}),
            "metrics": MetricRecord({"num-examples": 20, "train-loss": 3.25, line: 1.0}),
        }
    )
    log.reply(NODES["A-0001"], "train", content, "A-0001", "source", 1)
    findings = _audit(world, run).findings
    assert {f.kind for f in _content(findings)} == {"text"}
    assert {f.key for f in findings} == {line}


def test_persona_sentence_in_a_phase2_reply_is_found(
    world: dict[str, Any], run: RunDir, log: EgressLog
) -> None:
    """Persona sentences are private whatever their length (>= 3 words): 'i speak korean.'-like."""
    sentence = _client(world, "B-0000").persona.sentences[0]
    log.phase2("B-0000", PHASE2_REPLY, extra=ConfigRecord({"about": sentence}))
    findings = _content(_audit(world, run).findings)
    assert [(f.kind, f.source) for f in findings] == [("text", "B-0000: persona sentence 0")]


def test_text_hidden_in_array_bytes_is_found(
    world: dict[str, Any], run: RunDir, log: EgressLog
) -> None:
    """Raw bytes are read as printable-ASCII runs: UTF-8 text in a uint8 array is visible."""
    line = _longest_line(world, "A-0000").encode("utf-8")
    arrays = {**world["theta"], "aux": np.frombuffer(b"\x01\xff" + line, dtype=np.uint8)}
    log.phase1("A-0000", arrays)
    findings = _content(_audit(world, run).findings)
    assert findings and {(f.kind, f.key, f.encoding) for f in findings} == {
        ("text", "aux", "utf-8 text")
    }


WIDE = ["utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"]
BOMS = {
    "utf-16-le": codecs.BOM_UTF16_LE,
    "utf-16-be": codecs.BOM_UTF16_BE,
    "utf-32-le": codecs.BOM_UTF32_LE,
    "utf-32-be": codecs.BOM_UTF32_BE,
}


@pytest.mark.parametrize("bom", [False, True], ids=["no-bom", "bom"])
@pytest.mark.parametrize("encoding", WIDE)
def test_text_in_utf16_or_utf32_array_bytes_is_found(
    world: dict[str, Any], run: RunDir, log: EgressLog, encoding: str, bom: bool
) -> None:
    """A training line written as UTF-16/32 (either byte order, with or without its BOM) in a
    uint8 array is found, and named by its encoding."""
    text = _longest_line(world, "A-0000").encode(encoding)
    blob = b"\x01\xff" + (BOMS[encoding] if bom else b"") + text
    log.phase1("A-0000", {**world["theta"], "aux": np.frombuffer(blob, dtype=np.uint8)})
    findings = _content(_audit(world, run).findings)
    assert findings and {(f.kind, f.key, f.encoding) for f in findings} == {
        ("text", "aux", f"{encoding} text")
    }


def test_persona_sentence_as_a_utf16_bytes_value_is_found(
    world: dict[str, Any], run: RunDir, log: EgressLog
) -> None:
    """Bytes values of config records are read in every text encoding too."""
    sentence = _client(world, "B-0000").persona.sentences[0]
    blob = BOMS["utf-16-be"] + sentence.encode("utf-16-be")
    log.phase2("B-0000", PHASE2_REPLY, extra=ConfigRecord({"blob": blob}))
    findings = _content(_audit(world, run).findings)
    assert [(f.kind, f.source, f.encoding) for f in findings] == [
        ("text", "B-0000: persona sentence 0", "utf-16-be text")
    ]


def test_foreign_text_in_every_encoding_beside_noise_is_clean(
    world: dict[str, Any], run: RunDir, log: EgressLog
) -> None:
    """Clean control: a sentence in no client's data, in all five encodings (with and without
    BOM), between 256 KiB of random float32 bytes, gives no content finding, although every
    encoding's text was read out of the bytes."""
    sentence = "seven quiet wizards judge the brown fox that jumps over lazy dogs at noon"
    noise = np.random.default_rng(0).standard_normal(1 << 16).astype(np.float32).tobytes()
    parts = [noise, sentence.encode("utf-8")]
    for encoding in WIDE:
        parts += [
            noise,
            sentence.encode(encoding),
            noise,
            BOMS[encoding] + sentence.encode(encoding),
        ]
    blob = b"".join([*parts, noise])
    assert {encoding for *_, encoding in text_runs(blob)} >= {"utf-8", *WIDE}
    log.phase1("A-0000", {**world["theta"], "aux": np.frombuffer(blob, dtype=np.uint8)})
    findings = _audit(world, run).findings
    assert [(f.kind, f.key) for f in findings] == [("contract", "aux")]  # the extra array only


def test_text_runs_name_the_encoding_of_wide_text() -> None:
    """'i speak korean' (14 characters) as UTF-16-BE after its BOM: one run at byte 2 of 2-byte
    characters; as UTF-32-LE: one run at byte 0 of 4-byte characters (not also as another
    byte order one byte further on)."""
    be = codecs.BOM_UTF16_BE + "i speak korean".encode("utf-16-be")
    assert text_runs(be) == [(2, 2, "i speak korean", "utf-16-be")]
    le32 = "i speak korean".encode("utf-32-le")
    assert text_runs(le32) == [(0, 4, "i speak korean", "utf-32-le")]


def test_another_clients_handshake_is_searched_for_its_own_data(
    world: dict[str, Any], run: RunDir
) -> None:
    """A handshake names no client in its request; its node's announced client is the owner."""
    egress = EgressLog(run)
    line = _longest_line(world, "A-0001")
    content = RecordDict(
        {
            "describe": ConfigRecord({"client-ids": ["A-0001"], "parts": ["A"], "x": line}),
            "counts": MetricRecord({"num-examples": [_manifest_count(world, "A-0001")]}),
        }
    )
    egress.reply(NODES["A-0001"], "query", content, phase="handshake")
    findings = _audit(world, run).findings
    assert {f.kind for f in _content(findings)} == {"text"}
    assert all(f.source.startswith("A-0001:") for f in _content(findings))  # type: ignore[union-attr]


# ================================================================ content: token ids


@pytest.mark.parametrize(
    "dtype,name",
    [
        ("<i2", "int16-le"),
        (">i2", "int16-be"),
        ("<i4", "int32-le"),
        (">i4", "int32-be"),
        ("<i8", "int64-le"),
        (">i8", "int64-be"),
        ("<f2", "float16-le"),
        (">f4", "float32-be"),
        ("<f8", "float64-le"),
    ],
)
def test_token_ids_in_an_extra_array_are_found(
    world: dict[str, Any], run: RunDir, log: EgressLog, dtype: str, name: str
) -> None:
    ids = np.asarray(_train_ids(world, "A-0000"), dtype=dtype)
    log.phase1("A-0000", {**world["theta"], "aux": ids})
    findings = _content(_audit(world, run).findings)
    assert findings and {(f.kind, f.key) for f in findings} == {("token-ids", "aux")}
    assert {f.encoding for f in findings} == {name}


def test_token_ids_at_an_odd_byte_offset_are_found(
    world: dict[str, Any], run: RunDir, log: EgressLog
) -> None:
    """Every byte offset is searched: 3 junk bytes, then int32-le ids, inside a uint8 array."""
    blob = b"\x07\x08\x09" + np.asarray(_train_ids(world, "A-0000"), dtype="<i4").tobytes()
    log.phase1("A-0000", {**world["theta"], "aux": np.frombuffer(blob, dtype=np.uint8)})
    findings = _content(_audit(world, run).findings)
    assert findings and {f.encoding for f in findings} == {"int32-le"}


def test_token_ids_as_a_json_list_are_found(
    world: dict[str, Any], run: RunDir, log: EgressLog
) -> None:
    ids = _train_ids(world, "A-0001")
    content = RecordDict(
        {
            "metrics": MetricRecord({"num-examples": 6, "val-loss": 3.5}),
            "aux": MetricRecord({"ids": ids}),
        }
    )
    log.reply(NODES["A-0001"], "evaluate", content, "A-0001", "source", 1)
    findings = _content(_audit(world, run).findings)
    assert findings and {(f.kind, f.encoding) for f in findings} == {("token-ids", "json integers")}


def test_token_ids_as_a_bytes_config_value_are_found(
    world: dict[str, Any], run: RunDir, log: EgressLog
) -> None:
    blob = np.asarray(_train_ids(world, "A-0000"), dtype="<i4").tobytes()
    log.phase1("A-0000", world["theta"], aux=ConfigRecord({"blob": blob}))
    findings = _content(_audit(world, run).findings)
    assert findings and {f.encoding for f in findings} == {"int32-le (bytes value)"}


# ================================================================ content: canaries


def test_canary_in_an_error_reason_is_found(
    world: dict[str, Any], run: RunDir, log: EgressLog
) -> None:
    canary = _client(world, "A-0000").meta["canaries"][1]["text"]
    log.reply(NODES["A-0000"], "train", None, "A-0000", "source", 1, error=f"crashed on '{canary}'")
    findings = _audit(world, run).findings
    assert [(f.kind, f.key, f.source) for f in findings] == [
        ("canary", "error reason", "A-0000: canary 1")
    ]


def test_canary_token_ids_are_found(world: dict[str, Any], run: RunDir, log: EgressLog) -> None:
    canary = _client(world, "A-0001").meta["canaries"][0]["text"]
    ids = world["tokenizer"](f" {canary}", add_special_tokens=False)["input_ids"]
    assert len(ids) >= 8
    log.phase1("A-0001", {**world["theta"], "aux": np.asarray(ids, dtype=np.int64)})
    findings = _content(_audit(world, run).findings)
    assert {(f.kind, f.encoding) for f in findings} == {("canary", "int64-le")}


# ================================================================ bad input


def test_missing_run_directory_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(FedpktError, match="does not exist"):
        audit_run(tmp_path / "nope")


def test_directory_without_config_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(FedpktError, match="not a fedpkt run directory"):
        audit_run(tmp_path)


def test_missing_egress_log_is_bad_input(world: dict[str, Any], run: RunDir) -> None:
    with pytest.raises(FedpktError, match=r"egress log .* is missing"):
        _audit(world, run)


def test_malformed_line_is_named(world: dict[str, Any], run: RunDir, log: EgressLog) -> None:
    with open(run.egress / "11.jsonl", "a", encoding="utf-8") as handle:
        handle.write("{not json\n")
    with pytest.raises(FedpktError, match=r"11\.jsonl' line 2 is not valid JSON"):
        _audit(world, run)


def test_tampered_payload_is_bad_input(world: dict[str, Any], run: RunDir, log: EgressLog) -> None:
    payload = next((run.egress / "payloads").iterdir())
    payload.write_bytes(payload.read_bytes()[:-1] + b"X")
    with pytest.raises(FedpktError, match="does not match egress log"):
        _audit(world, run)


def test_unrecorded_payload_cannot_be_audited(
    world: dict[str, Any], run: RunDir, log: EgressLog
) -> None:
    file = run.egress / "11.jsonl"
    entry = json.loads(file.read_text())
    entry["payload"] = None
    file.write_text(json.dumps(entry) + "\n")
    with pytest.raises(FedpktError, match="record_payloads"):
        _audit(world, run)


# ================================================================ outputs and CLI


def test_audit_files_hold_verdict_and_findings(
    world: dict[str, Any], run: RunDir, log: EgressLog
) -> None:
    log.phase2("B-0000", {**PHASE2_REPLY, "generated_0": 1.0})
    report = _audit(world, run)
    json_path, md_path = write_audit(run.root, report)
    written = json.loads(json_path.read_text())
    assert written["verdict"] == "violation"
    assert written["messages"] == 4
    assert written["bytes"] == report.bytes
    assert [f["key"] for f in written["findings"]] == ["generated_0"]
    assert md_path.read_text().startswith("# Egress audit: VIOLATION")


def _cli(args: list[str]) -> Any:
    return CliRunner().invoke(cli_app, ["audit", *args])


def test_cli_exit_code_0_when_clean(world: dict[str, Any], run: RunDir, log: EgressLog) -> None:
    result = _cli([str(run.root)])
    assert result.exit_code == 0, result.output
    assert json.loads((run.root / "audit.json").read_text())["verdict"] == "clean"
    assert (run.root / "audit.md").is_file()


def test_cli_exit_code_1_on_violation(world: dict[str, Any], run: RunDir, log: EgressLog) -> None:
    log.phase2("B-0000", PHASE2_REPLY, extra=ConfigRecord({"x": _longest_line(world, "B-0000")}))
    result = _cli([str(run.root)])
    assert result.exit_code == 1, result.output
    assert json.loads((run.root / "audit.json").read_text())["verdict"] == "violation"


def test_cli_exit_code_2_on_bad_input(tmp_path: Path) -> None:
    result = _cli([str(tmp_path)])
    assert result.exit_code == 2
    assert "not a fedpkt run directory" in result.output
    assert not (tmp_path / "audit.json").exists()


# ================================================================ building blocks


def test_byte_scanner_finds_a_window_at_any_offset() -> None:
    """Window 1..8 as big-endian int32 after one junk byte: start offset 1, window 0."""
    scanner = ByteScanner(np.arange(1, 9, dtype=np.int64).reshape(1, 8))
    payload = b"\xaa" + np.arange(1, 9, dtype=">i4").tobytes() + b"\x00" * 5
    assert scanner.scan(payload) == [(1, 0, "int32-be")]


def test_byte_scanner_ignores_a_near_miss() -> None:
    """Seven of eight ids right is no match."""
    scanner = ByteScanner(np.arange(1, 9, dtype=np.int64).reshape(1, 8))
    payload = np.array([1, 2, 3, 4, 5, 6, 7, 9], dtype="<i4").tobytes()
    assert scanner.scan(payload) == []


def test_generic_threshold_is_a_tenth_of_clients_at_least_three() -> None:
    """max(3, ceil(0.1 n)): 14 -> 3, 60 -> 6, 1293 -> 130."""
    assert [generic_min_clients(n) for n in (14, 60, 1293)] == [3, 6, 130]


def test_ascii_runs_keep_text_of_eight_or_more_printable_bytes() -> None:
    """Offsets are byte offsets; the 2-byte run 'xy' is too short to hold a sentence."""
    assert ascii_runs(b"\x00i speak korean\x01xy\xff") == [(1, "i speak korean")]


def test_id_windows_of_several_sequences() -> None:
    """[1..10] has 3 windows of 8; [5, 6] has none: rows 1-8, 2-9, 3-10, all from sequence 0."""
    windows, owner = id_windows([np.arange(1, 11), np.array([5, 6])], 8)
    assert windows.tolist() == [list(range(1, 9)), list(range(2, 10)), list(range(3, 11))]
    assert owner.tolist() == [0, 0, 0]


def test_index_of_other_data_is_refused(world: dict[str, Any], tmp_path: Path) -> None:
    cfg = tiny_config(data__canaries=2)
    other = create_run_dir(cfg, tmp_path / "other")
    prepare_partitions(other.data, DataConfig(scale="tiny", canaries=2), 0)
    EgressLog(other).handshake("A-0000", "A", _manifest_count(world, "A-0000"))
    with pytest.raises(FedpktError, match="audit index covers"):
        audit_run(other.root, index=world["index"], model_config=world["model_config"])


def test_words_ignore_case_and_punctuation() -> None:
    assert words_of("Hello, World! i'm ok.") == ["hello", "world", "i", "m", "ok"]
