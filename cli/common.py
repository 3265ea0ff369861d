"""Shared CLI plumbing: config resolution from flags and the one-line error exit."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedpkt.config import FedpktConfig, load_config
from fedpkt.errors import FedpktError, os_error

DEFAULT_PRESET = "embedded"
console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])

ConfigOption = typer.Option(
    None,
    "--config",
    "-c",
    help="TOML config file, or a preset name (fedpkt/configs/: embedded, paper); default: "
    "embedded.",
)
SetOption = typer.Option(
    None, "--set", "-s", help="Override one key: section.key=value (repeatable)."
)


def exits_cleanly(func: F) -> F:
    """Turn FedpktError into a one-line message and exit code 2 (no traceback, nothing written).

    Operating-system errors are input too (a read-only directory, a full disk, a permission,
    a FIFO where a file should be): one line naming the path and the error, exit code 2.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (FedpktError, OSError) as err:
            if isinstance(err, OSError):
                err = os_error(err)
            err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None

    return wrapper  # type: ignore[return-value]


def resolve_config(
    config: Path | None,
    overrides: list[str] | None,
    flags: dict[str, Any] | None = None,
    *,
    resume_dir: Path | None = None,
) -> FedpktConfig:
    """preset/file < ``--set`` overrides < dedicated flags (dotted keys; None = unset).

    Without ``--config`` the embedded preset applies: the default run is the embedded one,
    except when resuming (``resume_dir``: the ``--run-dir`` of ``--resume``), where the run's
    own ``config.toml`` is the base, so that ``--resume`` alone continues the run as it was
    and ``--set`` changes only the keys it names.
    """
    values = {key: value for key, value in (flags or {}).items() if value is not None}
    base: Path | str = config or DEFAULT_PRESET
    if config is None and resume_dir is not None and (resume_dir / "config.toml").is_file():
        base = resume_dir / "config.toml"
    return load_config(base, overrides, values)


def results_table(run_dir: Path) -> Table:
    """The run's results.json rows as a rich table (F1s x100, as in the paper).

    Fits 80 columns without cutting a method name: two-line headers keep the figures narrow,
    and the method column wraps at spaces (never narrower than its longest word). C that was
    not measured (``eval.c_backend = "none"``) shows "n/a".
    """
    from fedpkt.report import NOT_MEASURED, format_pct, read_results

    rows = read_results(run_dir).rows
    longest_word = max((len(w) for r in rows for w in r.method.split()), default=6)
    table = Table(title=f"results ({run_dir})")
    table.add_column("method", min_width=min(longest_word, 24), overflow="fold")
    for column in ("part", "F1", "2-gram\nF1", "LCS\nF1", "C", "per-\nsonas", "stored"):
        table.add_column(column, justify="right", no_wrap=True)
    for row in rows:
        table.add_row(
            row.method,
            row.part,
            f"{100 * row.f1:.2f}",
            f"{100 * row.f1_2gram:.2f}",
            f"{100 * row.lcs_f1:.2f}",
            NOT_MEASURED if row.c_score is None else f"{row.c_score:.3f}",
            str(row.n_personas),
            format_pct(row.stored_params_pct),
        )
    return table


def task_progress() -> Progress:
    """The one progress layout of long CLI jobs: name, bar, done/total, an ``info`` field
    (each task must set it), elapsed time."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
    )


@contextlib.contextmanager
def run_progress(rounds: int) -> Iterator[tuple[Progress, Callable[[dict], None]]]:
    """A progress display for a federated run and the event callback that drives it.

    The callback takes the events the server logs to ``metrics.jsonl``: a ``round`` advances
    phase 1 (``phase1_skipped`` empties it), ``phase2_start`` sets phase 2's total (and the
    personas a resumed run kept), a ``client`` advances phase 2, a ``client_failed`` is printed.
    """
    progress = task_progress()
    with progress:
        rounds_task = progress.add_task("phase 1 rounds", total=rounds, info="")
        clients_task = progress.add_task("phase 2 clients", total=None, info="")

        def on_event(event: dict) -> None:
            kind = event.get("event")
            if kind == "round":
                val = event.get("val_loss")
                info = f"train {event['train_loss']:.3f}" + (f" val {val:.3f}" if val else "")
                if event.get("failures"):
                    info += f" ({event['failures']} clients left out)"
                progress.update(rounds_task, completed=event["round"], info=info)
            elif kind == "phase2_start":
                progress.update(clients_task, total=event["personas"], completed=event["kept"])
            elif kind == "client":
                progress.update(clients_task, advance=1, info=f"{event['client_id']}")
            elif kind == "phase1_skipped":
                progress.update(rounds_task, total=0, info=f"skipped: {event['reason']}")
            elif kind == "client_failed":
                progress.console.print(f"[yellow]client {event['client_id']} failed[/]")

        yield progress, on_event


@dataclass
class StopState:
    """What a command fills in as it goes, for the line a SIGINT/SIGTERM prints: its run
    directory (once checked) and its progress display (once shown)."""

    root: Path | None = None
    progress: Progress | None = None


@contextlib.contextmanager
def stops_cleanly(resume_hint: Callable[[Path], str]) -> Iterator[StopState]:
    """SIGINT or SIGTERM stop the command within seconds (``sim.stopping``): every process it
    started killed, one line saying what the run directory kept and ``resume_hint(root)``,
    exit code 130 or 143. Yields the state the command fills in."""
    from fedpkt.rundir import FINISHED, kept_summary
    from fedpkt.runlock import remove_if_untouched
    from sim.stopping import interrupted_by, stop_on_signals

    state = StopState()

    def describe(signum: int) -> str:
        name = interrupted_by(signum)
        kept = kept_summary(state.root) if state.root is not None else None
        if state.root is None or kept is None:
            if state.root is not None:
                remove_if_untouched(state.root)
            return f"stopped by {name} before anything was written"
        if kept == FINISHED:
            return f"stopped by {name} after the run finished: '{state.root}' holds its results"
        return f"stopped by {name}: '{state.root}' keeps {kept}; {resume_hint(state.root)}"

    def before_exit() -> None:  # a terminal's live display: end it cleanly (cursor back)
        if state.progress is not None and state.progress.console.is_terminal:
            state.progress.stop()

    with stop_on_signals(describe, before_exit):
        yield state
