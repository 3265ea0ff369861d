"""Lengths the backbone's position table cannot take (``fedpkt.model.positions``).

Both embedded backbones have 256 positions (GPT-2 ``n_positions``). A prefix of m tokens takes
positions 0..m-1, so a training row of ``data.max_length`` tokens needs m + max_length.
"""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, LlamaConfig
from typer.testing import CliRunner

from cli.main import app
from fedpkt.config import FedpktConfig
from fedpkt.data.schema import ClientData, Dialogue, Persona, Utterance
from fedpkt.errors import FedpktError
from fedpkt.local import LocalClient
from fedpkt.model.backbone import load_backbone
from fedpkt.model.positions import check_lengths, input_budget, position_limit
from fedpkt.model.prefix import forward_with_prefix
from fedpkt.train.loop import evaluate_loss
from tests.conftest import cli_sets, tiny_config

runner = CliRunner()
GPT2_256 = GPT2Config(n_positions=256, n_embd=16, n_layer=1, n_head=2)


def test_position_limit_reads_gpt2_and_llama_configs():
    assert position_limit(GPT2_256) == 256
    assert position_limit(LlamaConfig(max_position_embeddings=2048)) == 2048


def test_input_budget_is_max_length_cut_to_what_fits_behind_prefix_and_reply():
    """256 positions, m = 8: max_length 256 keeps 256 - 8 = 248; generation with 24 new tokens
    keeps 256 - 8 - 24 = 224; a max_length that fits is kept as it is."""
    assert input_budget(GPT2_256, 256, 8) == 248
    assert input_budget(GPT2_256, 256, 8, 24) == 224
    assert input_budget(GPT2_256, 128, 8, 24) == 128


@pytest.mark.parametrize(("max_length", "m"), [(256, 8), (256, 1), (250, 7), (4096, 8)])
def test_max_length_plus_prefix_beyond_the_table_is_refused_in_one_line(max_length, m):
    with pytest.raises(FedpktError) as err:
        check_lengths(GPT2_256, max_length=max_length, num_virtual_tokens=m, max_new_tokens=24)
    message = str(err.value)
    assert "\n" not in message
    assert message == (
        f"data.max_length ({max_length}) + prefix.num_virtual_tokens ({m}) = {max_length + m} "
        f"positions, but the backbone has 256; expected a sum of at most 256 "
        f"(e.g. data.max_length={256 - m})"
    )


@pytest.mark.parametrize(("max_length", "m", "new"), [(248, 8, 24), (128, 8, 247), (16, 1, 254)])
def test_lengths_that_fit_are_accepted(max_length, m, new):
    """248 + 8 = 256 fills the table exactly; 8 + 247 = 255 leaves one prompt token."""
    check_lengths(GPT2_256, max_length=max_length, num_virtual_tokens=m, max_new_tokens=new)


def test_prefix_plus_new_tokens_leaving_no_prompt_token_is_refused():
    with pytest.raises(FedpktError, match=r"\(8\) \+ generation.max_new_tokens \(248\) = 256 "):
        check_lengths(GPT2_256, max_length=16, num_virtual_tokens=8, max_new_tokens=248)


@pytest.mark.parametrize("command", ["simulate", "baselines", "launch"])
def test_commands_refuse_before_writing_anything(command, tmp_path):
    """The issue's case: 256 + 8 on the 256-position tiny backbone. Exit 2, one line, no run
    directory (every client used to fail with IndexError, and the run suggested --resume)."""
    run_dir = tmp_path / "run"
    sets = cli_sets(
        {
            "backbone.embedded_size": "tiny",
            "data.scale": "tiny",
            "data.max_length": 256,
            "prefix.num_virtual_tokens": 8,
        }
    )
    result = runner.invoke(app, [command, *sets, "--run-dir", str(run_dir)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [
        "error: data.max_length (256) + prefix.num_virtual_tokens (8) = 264 positions, but "
        "backbone 'embedded' (tiny) has 256; expected a sum of at most 256 (e.g. "
        "data.max_length=248)"
    ]
    assert not run_dir.exists()


def long_client() -> ClientData:
    """One persona whose every example is far longer than 256 tokens (40-word turns)."""
    words = " ".join(f"word{i}" for i in range(40))
    turns = [Utterance("partner" if i % 2 == 0 else "persona", words) for i in range(8)]
    dialogues = {
        split: [Dialogue(f"{split}-0", "p", list(turns))] for split in ("train", "valid", "test")
    }
    return ClientData(Persona("p", ["i am long."]), "B", dialogues, {"client_id": "B-0000"})


def test_training_and_evaluation_cut_inputs_to_fit_behind_the_prefix():
    """A config that bypasses the check (max_length 256, m = 8, library use): the client encodes
    within 248 tokens, so its loss is computed instead of an IndexError."""
    torch.set_num_threads(1)
    backbone = load_backbone("embedded", embedded_size="tiny", device="cpu", progress=False)
    cfg: FedpktConfig = tiny_config(data__max_length=256, prefix__num_virtual_tokens=8)
    client = LocalClient(long_client(), backbone, cfg)
    assert client.max_tokens == 248
    lengths = [len(e.input_ids) for e in client.encoded["train"]]
    assert max(lengths) == 248
    prefix = client.prefix_from(None, seed=0)
    loss = evaluate_loss(backbone.model, prefix, client.encoded["valid"], 2)
    assert loss == loss and loss > 0  # finite, computed


def test_an_overlong_batch_fails_in_one_line_not_with_index_error():
    backbone = load_backbone("embedded", embedded_size="tiny", device="cpu", progress=False)
    ids = torch.zeros((1, 250), dtype=torch.long)
    states = torch.zeros((1, 8, 2 * backbone.num_layers * backbone.hidden_size))
    with pytest.raises(FedpktError, match=r"input of 250 tokens behind a prefix of 8 needs 258"):
        forward_with_prefix(backbone.model, ids, torch.ones_like(ids), states)


def test_a_run_directory_is_not_created_for_such_settings(tmp_path):
    """``create_run_dir`` (simulate, launch, baselines, ``flwr run``'s ServerApp) checks first."""
    from fedpkt.rundir import create_run_dir

    cfg = tiny_config(data__max_length=256, prefix__num_virtual_tokens=8)
    with pytest.raises(FedpktError, match=r"= 264 positions, but backbone 'embedded' \(tiny\)"):
        create_run_dir(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
