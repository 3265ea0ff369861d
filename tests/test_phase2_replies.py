"""Phase-2 replies are untrusted input: the server checks each persona's metrics (issue 16 §5)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from flwr.app import Context, Message, MetricRecord
from flwr.clientapp.typing import ClientAppCallable

from fedpkt.errors import FedpktError
from fedpkt.local import PHASE2_METRICS, check_phase2_metrics
from sim.simulate import simulate
from tests.conftest import tiny_config
from wire import persona_metrics_record

GOOD = {
    "f1": 0.2,
    "f1_2gram": 0.1,
    "lcs_f1": 0.2,
    "c_score": 0.5,
    "test_loss": 1.1,
    "init_test_loss": 1.3,
    "n_test_responses": 14.0,
    "n_train_dialogues": 12.0,
    "epochs": 3.0,
    "best_epoch": 1.0,
    "seconds": 2.5,
}


def test_a_good_reply_passes_and_every_bad_class_is_named() -> None:
    assert check_phase2_metrics(GOOD, max_epochs=8) == GOOD
    bad = {
        "not finite": {**GOOD, "f1": math.nan},
        "outside": {**GOOD, "f1": 5.0},
        "not in the privacy contract": {**GOOD, "persona_text": 1.0},
        "lacks metrics": {k: v for k, v in GOOD.items() if k != "c_score"},
        "whole count": {**GOOD, "n_test_responses": 2.5},
    }
    for reason, metrics in bad.items():
        with pytest.raises(FedpktError, match=reason):
            check_phase2_metrics(metrics, max_epochs=8)
    with pytest.raises(FedpktError, match="epochs"):
        check_phase2_metrics({**GOOD, "epochs": 9.0}, max_epochs=8)
    assert set(GOOD) == PHASE2_METRICS - {"epsilon"}


def _tamper(faults: dict[str, tuple[str, float]]):
    """A test-only client mod that rewrites chosen personas' metrics after the ClientApp ran
    (what a faulty or malicious client could send)."""

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(msg, context)
        if reply.has_error() or msg.metadata.message_type != "train.personalize":
            return reply
        for client_id, (key, value) in faults.items():
            name = persona_metrics_record(client_id)
            if name in reply.content.metric_records:
                record = dict(reply.content.metric_records[name])
                reply.content[name] = MetricRecord({**record, key: value})
        return reply

    return mod


@pytest.mark.e2e
def test_bad_phase2_replies_fail_their_personas_and_the_run_finishes(tmp_path: Path) -> None:
    faults = {"B-0000": ("f1", math.nan), "C-0000": ("f1", 5.0), "B-0001": ("leak", 1.0)}
    cfg = tiny_config(phase2__init="random", phase2__cohort_size=2)
    run = simulate(cfg, tmp_path / "run", client_mods=[_tamper(faults)])
    failed = {e["client_id"]: e["reason"] for e in run.events("client_failed")}
    assert set(failed) == set(faults)
    assert all(reason.startswith("rejected reply") for reason in failed.values())
    good = {e["client_id"] for e in run.events("client")}
    assert good and not good & set(faults)
    report = (run.root / "report.md").read_text()
    assert "3 personas have no result" in report
    assert (run.root / "results.json").is_file()


def test_c_score_may_be_absent_only_when_c_is_not_measured() -> None:
    """eval.c_backend = "none": replies leave c_score out (a MetricRecord holds no null)."""
    without_c = {k: v for k, v in GOOD.items() if k != "c_score"}
    assert check_phase2_metrics(without_c, max_epochs=8, c_measured=False) == without_c
    assert check_phase2_metrics(GOOD, max_epochs=8, c_measured=False) == GOOD
    with pytest.raises(FedpktError, match=r"lacks metrics \['c_score'\]"):
        check_phase2_metrics(without_c, max_epochs=8)


@pytest.mark.e2e
def test_a_run_without_c_reports_it_not_measured_end_to_end(tmp_path: Path) -> None:
    """eval.c_backend = "none" through Flower: replies carry no c_score, the server accepts
    them, results.json has null, and `fedpkt compare` reads the run."""
    from typer.testing import CliRunner

    from cli.main import app

    cfg = tiny_config(eval__c_backend="none", phase2__init="random")
    run = simulate(cfg, tmp_path / "run")
    clients = run.events("client")
    assert clients and not run.events("client_failed")
    assert all("c_score" not in event for event in clients)
    rows = json.loads((run.root / "results.json").read_text())["rows"]
    assert [row["c_score"] for row in rows] == [None, None]
    result = CliRunner().invoke(app, ["compare", str(run.root), "--out", str(tmp_path / "cmp")])
    assert result.exit_code == 0, result.output
    assert "| n/a | n/a |" in (tmp_path / "cmp" / "compare.md").read_text()
