"""``fedpkt baselines``: the paper's centralized Table 2 settings on the same Parts as simulate."""

from __future__ import annotations

from pathlib import Path

import typer

from cli.common import (
    ConfigOption,
    SetOption,
    console,
    exits_cleanly,
    resolve_config,
    results_table,
    task_progress,
)
from fedpkt.baseline_settings import SETTING_KEYS, select_settings


@exits_cleanly
def baselines_command(
    config: Path | None = ConfigOption,
    overrides: list[str] | None = SetOption,
    run_dir: Path | None = typer.Option(None, "--run-dir", help="Run directory (default: new)."),
    only: str | None = typer.Option(
        None,
        "--only",
        help=f"Comma-separated settings to run (default all): {','.join(SETTING_KEYS)}.",
    ),
) -> None:
    """Run the paper's eight settings centrally (fine-tuning baselines and PersonaPKT)."""
    cfg = resolve_config(config, overrides)
    settings = select_settings(only)  # fail on a bad --only before loading anything
    from fedpkt.runlock import hold_run_dir
    from sim.baselines import check_baselines, run_baselines  # heavy: after validation

    root = check_baselines(cfg, run_dir)  # one line, before any progress display or file
    with hold_run_dir(root), task_progress() as progress:
        overall = progress.add_task("settings", total=len(settings), info="")
        current: dict[str, int] = {}

        def on_event(event: dict) -> None:
            kind = event.get("event")
            if kind == "setting":
                current["task"] = progress.add_task(
                    event["method"], total=event["total"], info="training"
                )
            elif kind == "round" and "task" in current:
                info = f"round {event['round']} loss {event['train_loss']:.3f}"
                progress.update(current["task"], info=info)
            elif kind == "client" and "task" in current:
                info = f"{event['client_id']} F1 {100 * event['f1']:.1f}"
                progress.update(current["task"], advance=1, info=info)
            elif kind == "setting_done":
                progress.update(overall, advance=1, info=event["method"])

        run = run_baselines(cfg, root, only=only, on_event=on_event)
    console.print(f"run directory: [bold]{run.root}[/]")
    console.print(results_table(run.root))
