"""The egress audit on SecAgg+ runs (``privacy.secagg = true``) and the egress mod's SecAgg+ lines.

Stage replies are built as ``secaggplus_mod`` (Flower 1.42) builds them, from Flower's own
primitives: PEM EC public keys (setup), Fernet tokens of Shamir shares (share keys), int64
``.npy`` masked arrays in [0, 2^32) plus the FitRes records (masked vectors), node ids and
shares (unmask). The tiny synthetic corpus and θ_0 come from ``tests/test_audit.py``'s
``world`` fixture; the end-to-end test audits a real one-round SecAgg+ simulation.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.fernet import Fernet
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.common import Code, FitRes, Status, ndarray_to_bytes, ndarrays_to_parameters
from flwr.common.secure_aggregation.crypto.shamir import create_shares
from flwr.common.secure_aggregation.secaggplus_utils import share_keys_plaintext_concat
from flwr.compat.common import recorddict_compat as compat
from flwr.supercore.primitives.asymmetric import generate_key_pairs, public_key_to_bytes
from flwr.supercore.task_identity import TaskIdentity

from clients.egress import SECAGG_PHASE, EgressTarget, make_egress_mod
from fedpkt.privacy.audit import AuditReport, Finding, audit_run
from fedpkt.rundir import RunDir, create_run_dir
from sim.simulate import simulate
from tests.conftest import tiny_config
from tests.test_audit import NODES, EgressLog, _audit, _manifest_count, _train_ids, world

__all__ = ["world"]  # the shared module fixture: prepared tiny data, tokenizer, θ_0

SETUP, SHARE, MASKED, UNMASK = "setup", "share_keys", "collect_masked_vectors", "unmask"
PEERS = {"A-0000": [12], "A-0001": [11]}  # the two Part A nodes of NODES aggregate together


def _configs(values: dict[str, Any]) -> RecordDict:
    return RecordDict({"secaggplus_configs": ConfigRecord(values, False)})


def setup_reply() -> RecordDict:
    return _configs({"pk1": public_key_to_bytes(generate_key_pairs()[1]),
                     "pk2": public_key_to_bytes(generate_key_pairs()[1])})  # fmt: skip


def share_keys_reply(node: int, peers: list[int]) -> RecordDict:
    """One Fernet token per peer of (src, dst, seed share, key share), as ``_share_keys``."""
    seed_shares = create_shares(os.urandom(32), 2, len(peers) + 1)
    key_shares = create_shares(os.urandom(185), 2, len(peers) + 1)
    fernet = Fernet(Fernet.generate_key())
    ctxts = [
        fernet.encrypt(share_keys_plaintext_concat(node, peer, seed_shares[i], key_shares[i]))
        for i, peer in enumerate(peers)
    ]
    return _configs({"dsts": peers, "ctxts": ctxts})


def masked_arrays(theta: dict[str, np.ndarray], seed: int = 0) -> list[np.ndarray]:
    """The weight factor (1,) then θ's shapes in name order, uniform in [0, 2^32) (masked)."""
    rng = np.random.default_rng(seed)
    shapes = [(1,)] + [theta[name].shape for name in sorted(theta)]
    return [rng.integers(0, 1 << 32, size=shape, dtype=np.int64) for shape in shapes]


def masked_reply(
    masked: list[np.ndarray], metrics: dict[str, Any] | None = None, message: str = ""
) -> RecordDict:
    """FitRes content with its ArrayRecord emptied, plus the masked vector (``secaggplus_mod``)."""
    fitres = FitRes(
        status=Status(code=Code.OK, message=message),
        parameters=ndarrays_to_parameters([np.zeros(1, np.float32)]),
        num_examples=1.0,  # type: ignore[arg-type]  # the SecAgg+ weight (PPReptile: 1)
        metrics=metrics or {"num-examples": 20, "train-loss": 3.25},
    )
    content = compat.fitres_to_recorddict(fitres, keep_input=False)
    for record in content.array_records.values():
        record.clear()
    content.config_records["secaggplus_configs"] = ConfigRecord(
        {"masked_params": [ndarray_to_bytes(a) for a in masked]}, False
    )
    return content


def unmask_reply(node: int, peers: list[int]) -> RecordDict:
    shares = create_shares(os.urandom(32), 2, len(peers) + 1)
    return _configs({"nids": [node, *peers], "shares": shares})


def secagg_round(log: EgressLog, world: dict[str, Any], client: str, **stage_kw: Any) -> None:
    """One client's four honest SecAgg+ stage replies, logged as the egress mod logs them."""
    node, peers = NODES[client], PEERS[client]
    replies = {
        SETUP: setup_reply(),
        SHARE: share_keys_reply(node, peers),
        MASKED: masked_reply(masked_arrays(world["theta"], node)),
        UNMASK: unmask_reply(node, peers),
    }
    for stage, content in replies.items():
        log.reply(node, "train", content, client, SECAGG_PHASE, stage=stage, **stage_kw)


@pytest.fixture
def run(world: dict[str, Any], tmp_path: Path) -> RunDir:
    """A run directory whose config has privacy.secagg = true, over the shared tiny data."""
    cfg = tiny_config(data__canaries=2, data__prepared_dir=str(world["root"]), privacy__secagg=True)
    return create_run_dir(cfg, tmp_path / "run")


@pytest.fixture
def log(world: dict[str, Any], run: RunDir) -> EgressLog:
    """One honest handshake per node (A-0000, A-0001 in Part A; B-0000 in B)."""
    egress = EgressLog(run)
    for client in NODES:
        egress.handshake(client, client[0], _manifest_count(world, client))
    return egress


def _contract(report: AuditReport) -> list[Finding]:
    return [f for f in report.findings if f.kind == "contract"]


def _one_stage(log: EgressLog, client: str, stage: str, content: RecordDict) -> None:
    log.reply(NODES[client], "train", content, client, SECAGG_PHASE, stage=stage)


# ====================================================================== clean SecAgg+ rounds


def test_honest_secagg_round_gives_a_clean_verdict(
    world: dict[str, Any], run: RunDir, log: EgressLog
) -> None:
    """3 handshakes + 2 clients × 4 stages + 1 evaluate = 12 replies, no finding."""
    for client in PEERS:
        secagg_round(log, world, client)
    log.evaluate("A-0000")
    report = _audit(world, run)
    assert report.findings == []
    assert report.messages == 12
    assert report.rules["secagg"] is True


def test_stage_is_inferred_from_the_keys_when_the_log_lacks_it(
    world: dict[str, Any], run: RunDir, log: EgressLog
) -> None:
    """Logs written before the egress mod kept the stage (stage, client, phase null) audit
    clean too: each reply's key set names exactly one stage."""
    node, peers = NODES["A-0000"], PEERS["A-0000"]
    for content in (
        setup_reply(),
        share_keys_reply(node, peers),
        masked_reply(masked_arrays(world["theta"])),
        unmask_reply(node, peers),
    ):
        log.reply(node, "train", content)
    assert _audit(world, run).findings == []


def test_dp_epsilon_may_ride_in_the_fitres_metrics(
    world: dict[str, Any], run: RunDir, log: EgressLog
) -> None:
    metrics = {"num-examples": 20, "train-loss": 3.25, "epsilon": 1.5}
    _one_stage(log, "A-0000", MASKED, masked_reply(masked_arrays(world["theta"]), metrics))
    assert _audit(world, run).findings == []


# ====================================================================== contract breaches


def test_plain_w_i_reply_in_a_secagg_run_is_a_violation(
    world: dict[str, Any], run: RunDir, log: EgressLog
) -> None:
    """Under SecAgg+ the honest train reply is masked; W_i in clear breaks the contract."""
    log.phase1("A-0000", world["theta"])
    (finding,) = _contract(_audit(world, run))
    assert "W_i left unmasked" in finding.detail


def test_secagg_reply_in_a_plain_run_is_a_violation(world: dict[str, Any], tmp_path: Path) -> None:
    """Without privacy.secagg a train reply must be W_i + metrics: key material is foreign."""
    plain = create_run_dir(world["cfg"], tmp_path / "plain")
    log = EgressLog(plain)
    log.handshake("A-0000", "A", _manifest_count(world, "A-0000"))
    _one_stage(log, "A-0000", SETUP, setup_reply())
    details = [f.detail for f in _contract(_audit(world, plain))]
    assert any("'secaggplus_configs'" in d and "not part of a 'train' reply" in d for d in details)


def test_extra_key_beside_the_public_keys_breaks_the_contract(
    world: dict[str, Any], run: RunDir, log: EgressLog
) -> None:
    content = setup_reply()
    content.config_records["secaggplus_configs"]["note"] = "hello"
    _one_stage(log, "A-0000", SETUP, content)
    (finding,) = _contract(_audit(world, run))
    assert finding.key == "note" and "not allowed" in finding.detail


def test_reply_keys_of_another_stage_break_the_contract(
    world: dict[str, Any], run: RunDir, log: EgressLog
) -> None:
    """The request asked for setup; an unmask-shaped reply has the wrong keys (2 missing,
    2 foreign)."""
    _one_stage(log, "A-0000", SETUP, unmask_reply(11, [12]))
    findings = _contract(_audit(world, run))
    assert sorted(f.key for f in findings) == ["nids", "pk1", "pk2", "shares"]


def test_public_key_with_trailing_text_breaks_the_contract(
    world: dict[str, Any], run: RunDir, log: EgressLog
) -> None:
    """PEM parsers skip text around the block; the audit wants the exact canonical PEM."""
    content = setup_reply()
    record = content.config_records["secaggplus_configs"]
    record["pk1"] = bytes(record["pk1"]) + b"extra words\n"  # type: ignore[arg-type]
    _one_stage(log, "A-0000", SETUP, content)
    (finding,) = _contract(_audit(world, run))
    assert finding.key == "pk1" and "public key" in finding.detail


def test_ciphertext_that_is_not_a_fernet_token_breaks_the_contract(
    world: dict[str, Any], run: RunDir, log: EgressLog
) -> None:
    content = share_keys_reply(11, [12])
    content.config_records["secaggplus_configs"]["ctxts"] = [b"plain bytes, not encrypted"]
    _one_stage(log, "A-0000", SHARE, content)
    (finding,) = _contract(_audit(world, run))
    assert finding.key == "ctxts" and "Fernet" in finding.detail


def test_masked_vector_missing_an_array_breaks_the_contract(
    world: dict[str, Any], run: RunDir, log: EgressLog
) -> None:
    """θ_0 has n arrays, so the masked vector holds n + 1 (the weight factor first)."""
    masked = masked_arrays(world["theta"])[:-1]
    _one_stage(log, "A-0000", MASKED, masked_reply(masked))
    (finding,) = _contract(_audit(world, run))
    n = len(world["theta"])
    assert f"{n} masked arrays; expected {n + 1}" in finding.detail


def test_masked_array_of_the_wrong_shape_breaks_the_contract(
    world: dict[str, Any], run: RunDir, log: EgressLog
) -> None:
    masked = masked_arrays(world["theta"])
    masked[1] = masked[1].reshape(-1)[:-1]  # one entry short of θ's first array
    _one_stage(log, "A-0000", MASKED, masked_reply(masked))
    (finding,) = _contract(_audit(world, run))
    assert "masked array 1 is int64" in finding.detail


def test_float_masked_array_breaks_the_contract(
    world: dict[str, Any], run: RunDir, log: EgressLog
) -> None:
    """W_i itself (float32) in the masked vector's place is not a masked vector."""
    names = sorted(world["theta"])
    masked = [np.zeros(1, np.int64)] + [world["theta"][n].astype(np.float32) for n in names]
    _one_stage(log, "A-0000", MASKED, masked_reply(masked))
    details = [f.detail for f in _contract(_audit(world, run))]
    assert len(details) == len(names)
    assert all("is float32" in d for d in details)


def test_masked_values_above_the_modulus_break_the_contract(
    world: dict[str, Any], run: RunDir, log: EgressLog
) -> None:
    """Values are reduced mod 2^32: an entry of 2^32 + 5 uses bits a masked vector has not."""
    masked = masked_arrays(world["theta"])
    masked[2].reshape(-1)[0] = (1 << 32) + 5
    _one_stage(log, "A-0000", MASKED, masked_reply(masked))
    (finding,) = _contract(_audit(world, run))
    assert "masked array 2 has values outside [0, 2^32)" in finding.detail


def test_extra_fitres_metric_breaks_the_contract(
    world: dict[str, Any], run: RunDir, log: EgressLog
) -> None:
    metrics = {"num-examples": 20, "train-loss": 3.25, "grad-norm": 0.5}
    _one_stage(log, "A-0000", MASKED, masked_reply(masked_arrays(world["theta"]), metrics))
    (finding,) = _contract(_audit(world, run))
    assert finding.record == "fitres.metrics" and finding.key == "grad-norm"


def test_unmasked_array_beside_the_masked_vector_breaks_the_contract(
    world: dict[str, Any], run: RunDir, log: EgressLog
) -> None:
    """secaggplus_mod empties the FitRes ArrayRecord; an array left in it leaves unmasked."""
    content = masked_reply(masked_arrays(world["theta"]))
    name, theta = next(iter(world["theta"].items()))
    content.array_records["fitres.parameters"] = ArrayRecord(array_dict={name: Array(theta)})
    _one_stage(log, "A-0000", MASKED, content)
    (finding,) = _contract(_audit(world, run))
    assert finding.record == "fitres.parameters"
    assert "SecAgg+ 'collect_masked_vectors' reply" in finding.detail


def test_status_message_must_be_empty(world: dict[str, Any], run: RunDir, log: EgressLog) -> None:
    content = masked_reply(masked_arrays(world["theta"]), message="all good")
    _one_stage(log, "A-0000", MASKED, content)
    (finding,) = _contract(_audit(world, run))
    assert finding.record == "fitres.status" and finding.key == "message"


def test_share_of_the_wrong_size_breaks_the_contract(
    world: dict[str, Any], run: RunDir, log: EgressLog
) -> None:
    """A Shamir share is a 4-byte index plus 16-byte chunks: 52 bytes for a 32-byte seed;
    a 53-byte share is not one."""
    content = unmask_reply(11, [12])
    record = content.config_records["secaggplus_configs"]
    record["shares"] = [bytes(s) + b"x" for s in record["shares"]]  # type: ignore[union-attr]
    _one_stage(log, "A-0000", UNMASK, content)
    (finding,) = _contract(_audit(world, run))
    assert finding.key == "shares"


# ====================================================================== content scan


def test_token_ids_hidden_in_a_masked_array_are_found(
    world: dict[str, Any], run: RunDir, log: EgressLog
) -> None:
    """Ids < 2^32 pass the range check, so the shape-correct vector meets the contract; the
    content scan reads the bytes values and finds the client's training ids as int64."""
    masked = masked_arrays(world["theta"])
    ids = _train_ids(world, "A-0000")[:16]
    masked[1].reshape(-1)[: len(ids)] = ids
    _one_stage(log, "A-0000", MASKED, masked_reply(masked))
    report = _audit(world, run)
    assert _contract(report) == []
    assert {(f.kind, f.client, f.key) for f in report.findings} == {
        ("token-ids", "A-0000", "masked_params")
    }


def test_canary_in_the_status_message_is_found(
    world: dict[str, Any], run: RunDir, log: EgressLog
) -> None:
    """The reply has no client id (an old log line): the node's handshake names the sender."""
    texts = world["index"].sequences["A-0001"].texts
    canary = next(text for text, source in texts if source.kind == "canary")
    content = masked_reply(masked_arrays(world["theta"]), message=canary)
    log.reply(NODES["A-0001"], "train", content)
    report = _audit(world, run)
    found = [f for f in report.findings if f.kind == "canary"]
    assert [(f.key, f.source) for f in found] == [("message", "A-0001: canary 0")]


# ====================================================================== the egress mod


@pytest.fixture
def node_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replies are stamped with the task a ClientApp runs as; outside a run, fake one."""
    for attr, value in (("_run_id", 1), ("_node_id", 11), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, attr, value)


def _egress_lines(tmp_path: Path, requests: list[Message], served: list[str]) -> list[dict]:
    """Run requests through the egress mod around a handler that answers a handshake with
    ``served`` and any other message with an empty config; return the log lines."""
    mod = make_egress_mod(lambda _: EgressTarget(tmp_path / "egress"))
    context = Context(run_id=1, node_id=11, node_config={}, state=RecordDict(), run_config={})

    def handler(msg: Message, _: Context) -> Message:
        if msg.metadata.message_type == "query":
            content = RecordDict(
                {
                    "describe": ConfigRecord({"client-ids": served, "parts": ["A"] * len(served)}),
                    "counts": MetricRecord({"num-examples": [20] * len(served)}),
                }
            )
        else:
            content = RecordDict({"secaggplus_configs": ConfigRecord({"pk1": b"k"})})
        return Message(content, reply_to=msg)

    for request in requests:
        mod(request, context, handler)
    text = (tmp_path / "egress" / "11.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def _request(message_type: str, records: dict[str, ConfigRecord]) -> Message:
    return Message(RecordDict(records), dst_node_id=11, message_type=message_type)


HANDSHAKE_REQUEST = {"config": ConfigRecord({"phase": "handshake"})}
SETUP_REQUEST = {"secaggplus_configs": ConfigRecord({"stage": SETUP, "sample_num": 2})}


@pytest.mark.usefixtures("node_identity")
def test_egress_logs_a_secagg_stage_with_the_nodes_sole_client(tmp_path: Path) -> None:
    requests = [_request("query", HANDSHAKE_REQUEST), _request("train", SETUP_REQUEST)]
    _, setup = _egress_lines(tmp_path, requests, served=["A-0000"])
    assert (setup["client_id"], setup["phase"], setup["secagg_stage"]) == (
        "A-0000",
        SECAGG_PHASE,
        SETUP,
    )


@pytest.mark.usefixtures("node_identity")
def test_egress_leaves_the_client_null_when_the_node_serves_several(tmp_path: Path) -> None:
    requests = [_request("query", HANDSHAKE_REQUEST), _request("train", SETUP_REQUEST)]
    _, setup = _egress_lines(tmp_path, requests, served=["A-0000", "A-0001"])
    assert setup["client_id"] is None and setup["phase"] == SECAGG_PHASE


@pytest.mark.usefixtures("node_identity")
def test_egress_takes_client_and_round_from_the_masked_vector_request(tmp_path: Path) -> None:
    """The masked-vector request wraps fedpkt's config in ``fitins.config``: its client-id
    and server-round win over the node's sole client."""
    config = ConfigRecord({"client-id": "A-0001", "phase": "source", "server-round": 3})
    masked = {
        "secaggplus_configs": ConfigRecord({"stage": MASKED, "ctxts": [], "srcs": []}),
        "fitins.config": config,
    }
    requests = [_request("query", HANDSHAKE_REQUEST), _request("train", masked)]
    _, line = _egress_lines(tmp_path, requests, served=["A-0000"])
    assert (line["client_id"], line["round"], line["secagg_stage"]) == ("A-0001", 3, MASKED)


@pytest.mark.usefixtures("node_identity")
def test_egress_of_a_plain_message_is_unchanged(tmp_path: Path) -> None:
    """A plain request: client, phase and round from its ``config``; no SecAgg+ stage."""
    config = ConfigRecord({"client-id": "A-0000", "phase": "source", "server-round": 2})
    (line,) = _egress_lines(tmp_path, [_request("evaluate", {"config": config})], served=[])
    assert (line["client_id"], line["phase"], line["round"]) == ("A-0000", "source", 2)
    assert line["secagg_stage"] is None


# ====================================================================== a real SecAgg+ run


@pytest.mark.e2e
def test_real_secagg_run_audits_clean(tmp_path: Path) -> None:
    """One SecAgg+ round on the tiny corpus (3 Part A clients × 4 stages) with honest
    clients: the audit's verdict is clean, and every stage line names its client."""
    cfg = tiny_config(privacy__secagg=True, phase1__rounds=1, phase1__server_optimizer="sgd")
    run = simulate(cfg, tmp_path / "run", phases="source")
    report = audit_run(run.root)
    assert report.findings == [] and report.verdict == "clean"
    lines = [
        json.loads(line)
        for path in run.egress.glob("*.jsonl")
        for line in path.read_text().splitlines()
    ]
    stages = [e for e in lines if e["secagg_stage"] is not None]
    assert len(stages) == 3 * 4
    assert all(e["client_id"] and e["phase"] == SECAGG_PHASE for e in stages)
