"""``fedpkt simulate``: the full federated PersonaPKT run on one machine."""

from __future__ import annotations

import shlex
from pathlib import Path

import typer

from cli.common import (
    ConfigOption,
    SetOption,
    console,
    exits_cleanly,
    resolve_config,
    results_table,
    run_progress,
    stops_cleanly,
)
from fedpkt.strategies import STRATEGIES


def compare_hint(root: Path, init: str) -> str:
    """The commands that set a finished run beside its twin of the other phase-2 init and the
    centralized Table 2 baselines, on the same data and seeds (the run's own ``config.toml``).

    >>> print(compare_hint(Path("runs/a"), "source"))  # doctest: +NORMALIZE_WHITESPACE
    compare with its random-init twin and the centralized baselines (same data, same seeds):
      fedpkt simulate --config runs/a/config.toml --init random --run-dir runs/a-random
      fedpkt baselines --config runs/a/config.toml --run-dir runs/a-baselines
      fedpkt compare runs/a runs/a-random runs/a-baselines --out runs/a-compare
    """
    other = "random" if init == "source" else "source"
    base = str(root)
    twin, baselines = f"{base}-{other}", f"{base}-baselines"
    config = shlex.quote(f"{base}/config.toml")
    return "\n".join(
        [
            f"compare with its {other}-init twin and the centralized baselines "
            "(same data, same seeds):",
            f"  fedpkt simulate --config {config} --init {other} --run-dir {shlex.quote(twin)}",
            f"  fedpkt baselines --config {config} --run-dir {shlex.quote(baselines)}",
            f"  fedpkt compare {shlex.quote(base)} {shlex.quote(twin)} {shlex.quote(baselines)}"
            f" --out {shlex.quote(base + '-compare')}",
        ]
    )


@exits_cleanly
def simulate_command(
    config: Path | None = ConfigOption,
    overrides: list[str] | None = SetOption,
    run_dir: Path | None = typer.Option(None, "--run-dir", help="Run directory (default: new)."),
    phase: str = typer.Option(
        "all", "--phase", help="all (phases 1+2), source (phase 1 only), personalize (phase 2)."
    ),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue a stopped run: phase 1 from its last checkpoint, then phase 2 for the "
        "personas that have no result yet. Its config.toml is the base (--set changes keys "
        "that do not change results, such as phase1.client_timeout_s).",
    ),
    init: str | None = typer.Option(None, "--init", help="Phase-2 init: source or random."),
    strategy: str | None = typer.Option(
        None, "--strategy", help="Phase-1 strategy with its defaults: " + ", ".join(STRATEGIES)
    ),
    rounds: int | None = typer.Option(None, "--rounds", help="Phase-1 rounds."),
    backbone: str | None = typer.Option(None, "--backbone", help="embedded, hub id or dir."),
    secagg: bool | None = typer.Option(
        None, "--secagg/--no-secagg", help="Phase 1 through Flower SecAgg+ (masked updates)."
    ),
    gpus_per_client: float | None = typer.Option(
        None, "--gpus-per-client", help="GPU share per Ray worker (0.25: four per GPU; 0: CPU)."
    ),
    ray_address: str | None = typer.Option(
        None, "--ray-address", help="HOST:PORT of a running Ray head to join (default: local)."
    ),
    verbose: bool = typer.Option(
        False, "--verbose", help="Also show Flower's and the Ray workers' logs on the console."
    ),
) -> None:
    """Run PersonaPKT federated: phase 1 (source prefix) and phase 2 (personalization)."""
    hint = "continue with `fedpkt simulate --run-dir {root} --resume`" + (
        f" --phase {phase}" if phase != "all" else ""
    )
    with stops_cleanly(lambda root: hint.format(root=root)) as stop:
        cfg = resolve_config(
            config,
            overrides,
            {
                "phase2.init": init,
                "phase1.strategy": strategy,
                "phase1.rounds": rounds,
                "backbone.name": backbone,
                "privacy.secagg": secagg,
                "simulation.gpus_per_client": gpus_per_client,
                "simulation.ray_address": ray_address,
            },
            resume_dir=run_dir if resume else None,
        )
        from fedpkt.runlock import hold_run_dir
        from sim.simulate import check_simulate, simulate  # heavy (Flower, Ray): config is valid

        # Every check that needs no write, before the run directory, its lock or progress bars.
        root = check_simulate(cfg, run_dir, phases=phase, resume=resume)
        with hold_run_dir(root), run_progress(cfg.phase1.rounds) as (stop.progress, on_event):
            stop.root = root
            run = simulate(
                cfg, root, phases=phase, resume=resume, on_event=on_event, verbose=verbose
            )
        console.print(f"run directory: [bold]{run.root}[/]")
        if (run.root / "results.json").is_file():
            console.print(results_table(run.root))
            console.print(f"report: {run.root / 'report.md'}")
            console.print(compare_hint(run.root, cfg.phase2.init), highlight=False, soft_wrap=True)
