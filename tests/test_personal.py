"""`fedpkt chat` and `fedpkt export` on a finished run: the prefix is decrypted only locally."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from typer.testing import CliRunner

from cli.main import app
from fedpkt.model.prefix import forward_with_prefix
from fedpkt.personal import open_personal_prefix
from fedpkt.rundir import RunDir
from sim.simulate import simulate
from tests.conftest import tiny_config

pytestmark = pytest.mark.e2e
runner = CliRunner()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    cfg = tiny_config(
        phase1__rounds=1, phase2__max_epochs=1, phase2__max_clients=2, data__canaries=1
    )
    return simulate(cfg, tmp_path_factory.mktemp("personal") / "run")


def _persona(run: RunDir) -> str:
    return sorted(r["client_id"] for r in run.events("client"))[0]


def test_export_writes_a_peft_adapter_that_reproduces_the_logits(
    run: RunDir, tmp_path: Path
) -> None:
    persona = _persona(run)
    out = tmp_path / "adapter"
    result = runner.invoke(app, ["export", str(run.root), "--persona", persona, "--out", str(out)])
    assert result.exit_code == 0, result.output
    personal = open_personal_prefix(run.root, persona)
    model = personal.backbone.model
    ids = personal.backbone.tokenizer("A: hi, how are you?\nB:", return_tensors="pt")
    ours = forward_with_prefix(
        model, ids["input_ids"], ids["attention_mask"], personal.folded.unsqueeze(0)
    ).logits
    peft_model = PeftModel.from_pretrained(model, str(out))
    with torch.no_grad():
        theirs = peft_model(**ids).logits
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)


def test_chat_answers_keeps_history_and_resets(run: RunDir) -> None:
    persona = _persona(run)
    lines = "hi! what do you do for a living?\ndo you have pets?\n/reset\nhello\n/quit\n"
    result = runner.invoke(app, ["chat", str(run.root), "--persona", persona], input=lines)
    assert result.exit_code == 0, result.output
    replies = [line for line in result.output.splitlines() if f"{persona}> " in line]
    assert len(replies) == 3
    assert all(line.split(f"{persona}> ", 1)[1].strip() for line in replies)
    assert "(history cleared)" in result.output


def test_unknown_persona_is_a_one_line_error(run: RunDir) -> None:
    result = runner.invoke(app, ["chat", str(run.root), "--persona", "Z-9999"], input="/quit\n")
    assert result.exit_code == 2
    assert result.output.strip().startswith("error:") and "Z-9999" in result.output


def test_canary_exposure_is_measured_and_reported(run: RunDir) -> None:
    """One canary per Part A client (8), each ranked under the source prefix."""
    rows = json.loads((run.root / "exposure.json").read_text())
    assert len(rows) == 8
    assert all(0.0 <= row["exposure"] <= 8 * math.log2(10) + 1e-9 for row in rows)
    assert "## Canary exposure of the source prefix" in (run.root / "report.md").read_text()
