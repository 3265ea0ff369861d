"""The configuration contract: defaults < file < overrides; bad input is one line, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from fedpkt.config import (
    MAX_SEED,
    PRESET_DIR,
    config_keys,
    config_to_toml,
    load_config,
    load_config_text,
)
from fedpkt.errors import FedpktError

runner = CliRunner()


def test_defaults_then_file_then_overrides(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text("[phase1]\nrounds = 7\nclients_per_round = 3\n")
    cfg = load_config(file, ["phase1.rounds=9"])
    assert cfg.phase1.rounds == 9  # override beats file
    assert cfg.phase1.clients_per_round == 3  # file beats default
    assert cfg.phase1.inner_steps == 5  # default


def test_flag_values_beat_overrides() -> None:
    cfg = load_config(None, ["phase1.rounds=9"], {"phase1.rounds": 11})
    assert cfg.phase1.rounds == 11


def test_presets_load_and_round_trip() -> None:
    for name in ("embedded", "paper"):
        cfg = load_config(name)
        assert load_config_text(config_to_toml(cfg)) == cfg
    paper = load_config("paper")
    assert (paper.backbone.name, paper.prefix.projection_hidden) == ("gpt2-medium", 512)
    assert (paper.phase1.inner_lr, paper.phase1.strategy.outer_lr) == (1e-4, 3e-5)
    assert (paper.phase1.inner_batch_size, paper.phase1.clients_per_round) == (2, 4)
    assert (paper.phase1.temperature, paper.generation.num_beams) == (10.0, 5)
    assert (PRESET_DIR / "embedded.toml").is_file()


BAD_OVERRIDES = [
    (["phase1.inner_lr=-0.1"], "phase1.inner_lr"),
    (["phase1.temperature=0"], "phase1.temperature"),
    (["phase1.rounds=0"], "phase1.rounds"),
    (["phase1.strategy='fedsgd'"], "phase1.strategy"),
    (["phase1.strategy='base'", "phase1.outer_lr=0.1"], "phase1.outer_lr does nothing"),
    (["phase1.strategy.outer_lr=0.1", "phase1.strategy.name='base'"], "outer_lr does nothing"),
    (["phase1.strategy='fedprox'", "phase1.mu=-1.0"], "phase1.strategy.mu"),
    (["phase1.nonsense=1"], "phase1.nonsense"),
    (["bogus.key=1"], "bogus"),
    (["phase1.rounds='many'"], "phase1.rounds"),
    (["phase2.max_epochs=0"], "phase2.max_epochs"),
    (["phase1.min_clients=9", "phase1.clients_per_round=4"], "phase1.min_clients"),
    (["eval.c_backend='model'"], "eval.nli_model"),
    (["data.source='personachat'"], "data.path"),
    (["dp.delta=2"], "dp.delta"),
    (["phase1.rounds"], "section.key=value"),
    # Issue 16 §2: the right type, finite, in range.
    (["phase1.rounds=true"], "expected an integer"),
    (["phase1.rounds=1e3"], "expected an integer"),
    (["phase1.rounds='3'"], "expected an integer"),
    (["dp.enabled=1"], "expected true or false"),
    (["phase1.inner_lr=inf"], "expected a finite number"),
    (["prefix.init_std=inf"], "prefix.init_std"),
    (["phase1.client_timeout_s=inf"], "phase1.client_timeout_s"),
    (["generation.length_penalty=nan"], "expected a finite number"),
    (["generation.length_penalty=-inf"], "generation.length_penalty"),
    ([f"seed={MAX_SEED + 1}"], "seed"),
    (["seed=-1"], "seed"),
    (["prefix.projection_hidden=1000000000"], "prefix.projection_hidden"),
    (["backbone.device='banana'"], "backbone.device"),
    (["eval.nli_device='gpu'"], "eval.nli_device"),
    (["backbone.name=''"], "backbone.name"),
    (["phase1=3"], "expected a section"),
]


@pytest.mark.parametrize(("overrides", "named"), BAD_OVERRIDES)
def test_bad_values_give_one_line_naming_the_key(overrides: list[str], named: str) -> None:
    with pytest.raises(FedpktError) as err:
        load_config(None, overrides)
    message = str(err.value)
    assert "\n" not in message
    assert named in message


def test_every_numeric_key_has_a_documented_range() -> None:
    numeric = [doc for doc in config_keys() if doc.kind in ("integer", "number")]
    assert len(numeric) > 40
    unbounded = [doc.key for doc in numeric if not (doc.low and doc.high)]
    assert unbounded == []


def test_a_nan_config_value_is_refused_by_the_real_cli_before_anything_is_written(
    tmp_path: Path,
) -> None:
    # Before issue 16, a NaN length penalty ran to the end with exit code 0.
    args = ["simulate", "--set", "generation.length_penalty=nan"]
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == 2
    assert lines == [
        "error: config key 'generation.length_penalty' = nan: expected a finite number "
        "(not inf or nan)"
    ]
    assert list(tmp_path.iterdir()) == []


def test_malformed_toml_file_is_named(tmp_path: Path) -> None:
    file = tmp_path / "broken.toml"
    file.write_text("[phase1\nrounds = 3\n")
    with pytest.raises(FedpktError, match=r"broken\.toml"):
        load_config(file)


@pytest.mark.parametrize(
    "args",
    [
        ["config", "show", "--set", "phase1.inner_lr=-1"],
        ["config", "show", "--config", "does-not-exist.toml"],
        ["config", "show", "--set", "phase1.temperature=0"],
        ["config", "show", "--set", "unknown.key=3"],
        ["simulate", "--set", "phase1.rounds=-2"],
        ["simulate", "--rounds", "0"],
        ["simulate", "--strategy", "fedsgd"],
    ],
)
def test_cli_bad_input_exits_2_with_one_line_and_writes_nothing(
    args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert list(tmp_path.iterdir()) == []  # no run directory, nothing half-written


def test_config_show_prints_resolved_toml() -> None:
    result = runner.invoke(app, ["config", "show", "--set", "phase1.rounds=3"])
    assert result.exit_code == 0
    assert load_config_text(result.output).phase1.rounds == 3


def test_personachat_variant_is_a_data_setting():
    cfg = load_config("embedded", ["data.personachat_variant='both_revised'"])
    assert cfg.data.personachat_variant == "both_revised"
    assert load_config("embedded").data.personachat_variant == "self_original"
    with pytest.raises(FedpktError, match="personachat_variant"):
        load_config("embedded", ["data.personachat_variant='other_original'"])


def test_c_backend_none_lets_personachat_run_without_an_nli_model():
    cfg = load_config("paper", ["eval.c_backend='none'"])
    assert (cfg.eval.c_backend, cfg.data.source) == ("none", "personachat")
    with pytest.raises(FedpktError, match=r"'none' \(C not measured\) for PERSONA-CHAT"):
        load_config("paper", ["eval.c_backend='oracle'"])


def test_the_paper_preset_reads_the_parquet_conversion_of_its_dataset():
    data = load_config("paper").data
    assert (data.path, data.revision, data.data_dir) == (
        "bavard/personachat_truecased",
        "refs/convert/parquet",
        "full",
    )
