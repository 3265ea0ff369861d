"""Phase 1 through Flower's real Simulation Engine: learning, resume, failures, one code path."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Context, Message
from flwr.clientapp.typing import ClientAppCallable
from safetensors.numpy import load_file

from fedpkt.centralized import open_clients, train_source_centralized
from fedpkt.model.backbone import load_backbone
from fedpkt.rundir import RunDir
from sim.simulate import simulate
from tests.conftest import TINY, cli_sets, tiny_config

pytestmark = pytest.mark.e2e


def _theta(run: RunDir) -> dict[str, np.ndarray]:
    return load_file(str(run.source_prefix))


def test_federated_validation_loss_falls_over_rounds(tmp_path: Path) -> None:
    """The embedded default backbone and corpus (>= 20 Part A clients): val loss falls."""
    cfg = tiny_config(
        backbone__embedded_size="default",
        data__scale="default",
        prefix__num_virtual_tokens=8,
        prefix__projection_hidden=128,
        phase1__rounds=4,
        phase1__clients_per_round=4,
    )
    run = simulate(cfg, tmp_path / "run", phases="source")
    rounds = run.events("round")
    assert [r["round"] for r in rounds] == [1, 2, 3, 4]
    part_a = [c for c in (run.data / "clients").iterdir() if c.name.startswith("A")]
    assert len(part_a) >= 20
    assert rounds[-1]["val_loss"] < rounds[0]["val_loss"]
    assert all(r["failures"] == 0 for r in rounds)
    assert (run.checkpoints / "round-0004.json").is_file()


def test_federated_equals_centralized_same_seeds(tmp_path: Path) -> None:
    """One code path: Flower and the in-process loop give the same source prefix."""
    cfg = tiny_config(phase1__rounds=2)
    run = simulate(cfg, tmp_path / "fed", phases="source")
    backbone = load_backbone("embedded", embedded_size="tiny")
    clients = open_clients(cfg, run.data, backbone, "A")
    central = train_source_centralized(cfg, clients, backbone)
    federated = _theta(run)
    assert set(central) == set(federated)
    for name in central:
        np.testing.assert_allclose(federated[name], central[name], rtol=1e-5, atol=1e-6)


def test_killed_run_resumes_to_the_same_prefix(tmp_path: Path) -> None:
    """Kill a real `fedpkt simulate` after round 2 of 4, resume, compare with an unbroken run."""
    cfg = tiny_config(phase1__rounds=4, phase1__eval_clients=2)
    whole = simulate(cfg, tmp_path / "whole", phases="source")

    broken = tmp_path / "broken"
    cmd = [sys.executable, "-m", "cli.main", "simulate", "--phase", "source"]
    cmd += [
        "--run-dir",
        str(broken),
        *cli_sets({**TINY, "phase1.rounds": 4, "phase1.eval_clients": 2}),
    ]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (broken / "checkpoints" / "round-0002.json").is_file():
        assert proc.poll() is None, "run ended before it could be killed"
        assert time.time() < deadline, "no round-2 checkpoint in time"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (broken / "checkpoints" / "source.safetensors").exists()

    resumed = simulate(cfg, broken, phases="source", resume=True)
    final, expected = _theta(resumed), _theta(whole)
    for name in expected:
        assert np.array_equal(final[name], expected[name]), name  # bit-identical on CPU


def _faulty_mod(faults: dict[str, str]):
    """A test-only client mod that breaks the replies of chosen clients in chosen ways."""

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        config = msg.content.config_records.get("config", {})
        fault = faults.get(str(config.get("client-id")))
        if fault == "crash" and config.get("phase") == "source":
            raise RuntimeError("simulated client crash")
        reply = call_next(msg, context)
        if msg.metadata.message_type != "train" or fault is None or reply.has_error():
            return reply
        if fault == "count":  # a weight for the base strategy far above its data
            reply.content["metrics"]["num-examples"] = 10**12
            return reply
        arrays: ArrayRecord = reply.content["arrays"]
        name = next(iter(arrays.keys()))
        value = arrays[name].numpy()
        if fault == "nan":
            value = np.full_like(value, np.nan)
        elif fault == "shape":
            value = value.reshape(-1)[:-1].copy()
        elif fault == "dtype":
            value = value.astype(np.float64)
        arrays[name] = Array(value)
        return reply

    return mod


def test_bad_replies_are_left_out_and_the_round_succeeds(tmp_path: Path) -> None:
    faults = {"A-0000": "crash", "A-0001": "nan", "A-0002": "shape", "A-0003": "dtype"}
    faults["A-0004"] = "count"
    cfg = tiny_config(phase1__rounds=2, phase1__clients_per_round=8, phase1__min_clients=2)
    run = simulate(cfg, tmp_path / "run", phases="source", client_mods=[_faulty_mod(faults)])
    rounds = run.events("round")
    assert len(rounds) == 2
    for event in rounds:
        reasons = {f["client_id"]: f["reason"] for f in event["failure_reasons"]}
        assert set(reasons) == set(faults), reasons
        assert "crash" in reasons["A-0000"]
        assert "NaN" in reasons["A-0001"]
        assert "shape" in reasons["A-0002"]
        assert "dtype" in reasons["A-0003"]
        assert "num-examples=1000000000000; expected at most" in reasons["A-0004"]
        assert event["failures"] == 5
    assert run.source_prefix.is_file()
