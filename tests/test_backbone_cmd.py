"""``fedpkt backbone build|info`` (cli.backbone_cmd) on the tiny recipe in a private cache."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cli.backbone_cmd import app
from fedpkt.cache import CACHE_ENV
from fedpkt.model.backbone import clear_loaded_backbones
from fedpkt.model.embedded import embedded_path


@pytest.fixture()
def runner(tmp_path, monkeypatch) -> CliRunner:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    monkeypatch.setenv("COLUMNS", "200")  # rich tables unwrapped, so the assertions can read them
    yield CliRunner()
    clear_loaded_backbones()


def test_build_then_info_report_the_tiny_backbone(runner):
    built = runner.invoke(app, ["build", "--size", "tiny"])
    assert built.exit_code == 0, built.output
    path = embedded_path("tiny")
    assert (path / "config.json").is_file()
    assert str(path.name) in built.output.replace("\n", "")

    shown = runner.invoke(app, ["info", "--backbone", "embedded", "--size", "tiny"])
    assert shown.exit_code == 0, shown.output
    for label in ("fingerprint", "validation perplexity", "unigram baseline perplexity"):
        assert label in shown.output
    assert "gpt2 (GPT2LMHeadModel)" in shown.output
    assert "2 / 32" in shown.output  # layers / hidden of the tiny recipe


def test_the_prose_recipe_is_selectable_by_name(runner):
    """``--recipe prose`` builds issue 18's backbone into its own folder; ``info`` scores it on
    its held-out prose and on general dialogues, which it has never seen."""
    built = runner.invoke(app, ["build", "--size", "tiny", "--recipe", "prose"])
    assert built.exit_code == 0, built.output
    path = embedded_path("tiny", "prose")
    assert path.name.startswith("embedded-prose-tiny-") and path != embedded_path("tiny")
    assert "perplexity on dialogues" in built.output
    shown = runner.invoke(app, ["info", "--size", "tiny", "--recipe", "prose"])
    assert shown.exit_code == 0, shown.output
    assert str(path.name) in shown.output.replace("\n", "")
    assert "perplexity on general dialogues" in shown.output


def test_unknown_recipe_exits_2_with_one_line(runner):
    result = runner.invoke(app, ["build", "--size", "tiny", "--recipe", "poems"])
    assert result.exit_code == 2
    assert "recipe 'poems' is unknown" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_unknown_size_exits_2_with_one_line(runner):
    result = runner.invoke(app, ["build", "--size", "huge"])
    assert result.exit_code == 2
    assert "'huge' is unknown" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_info_on_a_missing_directory_exits_2(runner, tmp_path):
    result = runner.invoke(app, ["info", "--backbone", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
    assert "does not exist" in result.output
