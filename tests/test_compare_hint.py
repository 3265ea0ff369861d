"""`fedpkt simulate` ends with the commands that set the run beside its twin and the baselines."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import typer.main

from cli.main import app
from cli.simulate_cmd import compare_hint


@pytest.mark.parametrize(("init", "other"), [("source", "random"), ("random", "source")])
def test_the_hint_names_the_runs_config_the_other_init_and_three_runs(init, other) -> None:
    lines = compare_hint(Path("runs/my run"), init).splitlines()
    commands = [shlex.split(line) for line in lines[1:]]
    assert commands[0] == [
        "fedpkt", "simulate", "--config", "runs/my run/config.toml", "--init", other,
        "--run-dir", f"runs/my run-{other}",
    ]  # fmt: skip
    assert commands[1][:2] == ["fedpkt", "baselines"]
    assert commands[2] == [
        "fedpkt", "compare", "runs/my run", f"runs/my run-{other}", "runs/my run-baselines",
        "--out", "runs/my run-compare",
    ]  # fmt: skip


def test_every_hinted_command_parses_with_the_real_cli() -> None:
    """The hint must stay in step with the commands' options: click parses each line."""
    group = typer.main.get_command(app)
    for line in compare_hint(Path("/tmp/r"), "source").splitlines()[1:]:
        _, name, *args = shlex.split(line)
        command = group.get_command(None, name)  # type: ignore[arg-type]
        command.make_context(name, args)  # raises click.UsageError on an unknown option
