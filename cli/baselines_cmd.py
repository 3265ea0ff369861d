"""``fedpkt baselines``: the paper's centralized Table 2 settings on the same Parts as simulate."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import typer
from rich.progress import Progress

from cli.common import (
    ConfigOption,
    SetOption,
    console,
    exits_cleanly,
    resolve_config,
    results_table,
    stops_cleanly,
    task_progress,
)
from fedpkt.baseline_settings import ALL_SETTING_KEYS, SETTING_KEYS, select_settings


@exits_cleanly
def baselines_command(
    config: Path | None = ConfigOption,
    overrides: list[str] | None = SetOption,
    run_dir: Path | None = typer.Option(None, "--run-dir", help="Run directory (default: new)."),
    only: str | None = typer.Option(
        None,
        "--only",
        help=f"Comma-separated settings to run (default the paper's eight: "
        f"{','.join(SETTING_KEYS)}); also {','.join(ALL_SETTING_KEYS[len(SETTING_KEYS) :])}.",
    ),
) -> None:
    """Run the paper's eight settings centrally (fine-tuning baselines and PersonaPKT)."""
    cfg = resolve_config(config, overrides)
    settings = select_settings(only)  # fail on a bad --only before loading anything

    def hint(root: Path) -> str:
        from fedpkt.rundir import RunDir

        finished = {e.get("setting") for e in RunDir(root).events("setting_done", tolerant=True)}
        rest = ",".join(s.key for s in settings if s.key not in finished)
        return f"run the rest with `fedpkt baselines --run-dir {root} --only {rest}`"

    with stops_cleanly(hint) as stop:
        from fedpkt.runlock import hold_run_dir
        from sim.baselines import check_baselines, run_baselines  # heavy: after validation

        root = check_baselines(cfg, run_dir)  # one line, before any progress display or file
        with hold_run_dir(root), task_progress() as progress:
            stop.root, stop.progress = root, progress
            on_event = _progress_events(progress, len(settings))
            run = run_baselines(cfg, root, only=only, on_event=on_event)
        console.print(f"run directory: [bold]{run.root}[/]")
        console.print(results_table(run.root))


def _progress_events(progress: Progress, settings: int) -> Callable[[dict], None]:
    """The callback that drives the baselines' progress display from their events."""
    overall = progress.add_task("settings", total=settings, info="")
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

    return on_event
