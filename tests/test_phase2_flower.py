"""Phase 2 end to end through Flower: personalization pays off, vaults, scalar-only replies."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedpkt.config import load_config
from fedpkt.local import PHASE2_METRICS
from fedpkt.model.backbone import load_backbone
from fedpkt.personal import PERSONALIZED_ENTRY
from fedpkt.privacy.vault import Vault
from fedpkt.report import read_results
from fedpkt.rundir import RunDir
from sim.simulate import simulate

pytestmark = pytest.mark.e2e


def _part_mean(run: RunDir, part: str, key: str) -> float:
    rows = [r for r in run.events("client") if r["part"] == part]
    assert rows, f"no Part {part} client reported"
    return float(np.mean([r[key] for r in rows]))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, RunDir]:
    """The embedded default run itself (README command 1, `fedpkt simulate` with no flags) and
    its `--init random` control on the same data and seeds: about 4 min on 2 cores."""
    root = tmp_path_factory.mktemp("phase2")
    pkt = simulate(load_config("embedded"), root / "pkt")
    rand = simulate(load_config("embedded", ["phase2.init='random'"]), root / "rand")
    return {"pkt": pkt, "rand": rand}


def _mean(run: RunDir, key: str) -> float:
    rows = run.events("client")
    assert rows, "no phase-2 client reported"
    return float(np.mean([r[key] for r in rows]))


def test_personalized_prefix_lowers_part_b_test_loss_below_the_source_prefix(
    runs: dict[str, RunDir],
) -> None:
    pkt = runs["pkt"]
    assert _part_mean(pkt, "B", "test_loss") < _part_mean(pkt, "B", "init_test_loss")


def test_persona_pkt_beats_random_init_on_part_c_f1(runs: dict[str, RunDir]) -> None:
    """The source prefix's knowledge makes better replies than a random start where it should
    matter most, the few-shot Part C personas (mean F1 20.58 vs 17.51 when measured; it held
    on 5 of 5 seeds in bench/source_vs_random.py). On Part B, the embedded backbone does not
    show the effect reliably (18.61 vs 20.09 on this backbone build; 2 of 5 seeds): the
    backbone-fidelity issue is about that."""
    assert _part_mean(runs["pkt"], "C", "f1") > _part_mean(runs["rand"], "C", "f1")


def test_persona_pkt_replies_are_persona_consistent_on_part_b(runs: dict[str, RunDir]) -> None:
    """Mean C > 0: the replies entail the persona's facts more often than they contradict them."""
    assert _part_mean(runs["pkt"], "B", "c_score") > 0.0


def test_source_init_reaches_a_lower_test_loss_than_random_init(runs: dict[str, RunDir]) -> None:
    """The knowledge transfer itself: same clients, same budget, better start, better end."""
    assert _mean(runs["pkt"], "test_loss") < _mean(runs["rand"], "test_loss")


def test_random_init_run_skips_phase_1(runs: dict[str, RunDir]) -> None:
    """A random-init run trains no source prefix (no rounds, no source file, one skip event)
    and its results rows say what it is."""
    rand = runs["rand"]
    assert rand.events("round") == []
    assert [e["reason"] for e in rand.events("phase1_skipped")] == ["phase2.init='random'"]
    assert not rand.source_prefix.is_file()
    assert len(rand.events("client")) == len(runs["pkt"].events("client"))
    methods = {row.method for row in read_results(rand.root).rows}
    assert methods == {"Rand init + Prefix-tuning (federated)"}


def test_phase2_metrics_are_in_range(runs: dict[str, RunDir]) -> None:
    for row in runs["pkt"].events("client"):
        for key in ("f1", "f1_2gram", "lcs_f1"):
            assert 0.0 <= row[key] <= 1.0
        assert -5.0 <= row["c_score"] <= 5.0  # at most 5 persona facts


def test_results_json_has_one_row_per_part(runs: dict[str, RunDir]) -> None:
    results = read_results(runs["pkt"].root)
    assert {row.part for row in results.rows} == {"B", "C"}
    for name in ("report.md", "results.csv", "plots/phase1_loss.png", "plots/fewshot.png"):
        assert (runs["pkt"].root / name).is_file(), name


def test_phase2_replies_hold_only_allowed_metric_scalars(runs: dict[str, RunDir]) -> None:
    entries = [
        json.loads(line)
        for file in runs["pkt"].egress.glob("*.jsonl")
        for line in file.read_text().splitlines()
    ]
    phase2 = [e for e in entries if e["phase"] == "personalize"]
    assert phase2, "no phase-2 reply was logged"
    for entry in phase2:
        assert entry["error"] is None
        for record in entry["records"]:
            assert record["kind"] == "metric", record
            assert record["key"] in PHASE2_METRICS, record["key"]
            assert isinstance(record["value"], float)


def test_every_personalized_prefix_is_in_its_own_vault(runs: dict[str, RunDir]) -> None:
    run = runs["pkt"]
    cfg = run.config()
    backbone = load_backbone(cfg.backbone.name, embedded_size=cfg.backbone.embedded_size)
    clients = {r["client_id"] for r in run.events("client")}
    for client_id in clients:
        vault = Vault(run.vaults / client_id, client_id)
        prefix = vault.load(PERSONALIZED_ENTRY, backbone_fingerprint=backbone.fingerprint)["prefix"]
        assert prefix.shape[0] == cfg.prefix.num_virtual_tokens
        assert (vault.path(PERSONALIZED_ENTRY).stat().st_mode & 0o077) == 0
