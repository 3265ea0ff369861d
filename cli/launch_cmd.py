"""``fedpkt launch``: the federated run on real SuperLink and SuperNode processes."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from fedpkt.config import FedpktConfig
from fedpkt.runlock import hold_run_dir

if TYPE_CHECKING:
    from sim.launch import LaunchOptions

from cli.common import (
    ConfigOption,
    SetOption,
    console,
    err_console,
    exits_cleanly,
    resolve_config,
    results_table,
    run_progress,
)


@exits_cleanly
def launch_command(
    supernodes: int = typer.Option(2, "--supernodes", "-n", help="SuperNodes to start here."),
    gpus: str | None = typer.Option(
        None, "--gpus", help="GPU indices, e.g. 0,1: SuperNode k uses GPU k mod len (none: CPU)."
    ),
    config: Path | None = ConfigOption,
    overrides: list[str] | None = SetOption,
    run_dir: Path | None = typer.Option(None, "--run-dir", help="Run directory (default: new)."),
    insecure: bool = typer.Option(False, "--insecure", help="No TLS (default: TLS on)."),
    join: str | None = typer.Option(
        None, "--join", help="HOST:PORT of a SuperLink elsewhere: start only SuperNodes."
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="SuperLink bind address (0.0.0.0: all)."),
    port: int | None = typer.Option(None, "--port", help="SuperLink port (default: a free one)."),
    tls_name: list[str] | None = typer.Option(
        None, "--tls-name", help="Extra host name/IP for the SuperLink certificate (repeatable)."
    ),
    ca_cert: Path | None = typer.Option(None, "--ca-cert", help="CA certificate (PEM)."),
    server_cert: Path | None = typer.Option(None, "--server-cert", help="SuperLink cert (PEM)."),
    server_key: Path | None = typer.Option(None, "--server-key", help="SuperLink key (PEM)."),
    node_auth: bool = typer.Option(
        False, "--node-auth", help="SuperNode authentication: a registered key per SuperNode."
    ),
    shard: str | None = typer.Option(
        None, "--shard", help="I/K: serve only shard I of K of the clients (several machines)."
    ),
    wait_for_nodes: int | None = typer.Option(
        None, "--wait-for-nodes", help="Total SuperNodes to wait for before starting the run."
    ),
    phase: str = typer.Option(
        "all", "--phase", help="all (phases 1+2), source (phase 1 only), personalize (phase 2)."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue phase 1 from its checkpoint."),
    node_poll: float = typer.Option(
        0.2,
        "--node-poll",
        help="Seconds an idle SuperNode (and its worker) waits between asks (Flower's: 3).",
    ),
) -> None:
    """Run PersonaPKT on a real Flower SuperLink and SuperNodes (one OS process each)."""
    from sim.launch import (
        LaunchOptions,
        check_launch,
        parse_gpus,
        parse_shard,
        terminate_as_interrupt,
    )

    root: Path | None = None
    with terminate_as_interrupt():
        try:
            cfg = resolve_config(config, overrides, resume_dir=run_dir if resume else None)
            options = LaunchOptions(
                supernodes=supernodes,
                gpus=parse_gpus(gpus),
                insecure=insecure,
                join=join,
                host=host,
                port=port,
                tls_names=tuple(tls_name or ()),
                ca_cert=ca_cert,
                server_cert=server_cert,
                server_key=server_key,
                node_auth=node_auth,
                shard=parse_shard(shard),
                wait_for_nodes=wait_for_nodes,
                phases=phase,
                resume=resume,
                node_poll_s=node_poll,
            )
            root = check_launch(cfg, options, run_dir)  # one line, before any display or file
            with hold_run_dir(root):  # a live run's directory: one line
                _launch(cfg, options, root)
        except KeyboardInterrupt as err:
            signum = int(getattr(err, "signum", signal.SIGINT))
            err_console.print(_stopped_line(signum, root, join), highlight=False, soft_wrap=True)
            raise typer.Exit(code=128 + signum) from None


def _stopped_line(signum: int, root: Path | None, join: str | None) -> str:
    """What a stop signal left: every process stopped, what the run kept, how to go on."""
    from fedpkt.rundir import FINISHED, kept_summary

    name = signal.Signals(signum).name
    if root is None:
        return f"stopped by {name} before anything was written"
    line = f"stopped by {name}: every process it started was stopped"
    if join is not None:
        return f"{line}; start the same `fedpkt launch --join {join}` to serve again"
    kept = kept_summary(root)
    if kept is None or kept == FINISHED:
        return f"{line}; '{root}' holds {kept or 'nothing of a run yet'}"
    return f"{line}; '{root}' keeps {kept}; continue with `fedpkt launch --run-dir {root} --resume`"


def _launch(cfg: FedpktConfig, options: LaunchOptions, run_dir: Path) -> None:
    from sim.launch import launch

    if options.join is not None:  # SuperNodes only: the progress shows on the SuperLink's side
        launch(cfg, options, run_dir, on_message=lambda text: console.print(text))
        return
    with run_progress(cfg.phase1.rounds) as (progress, on_event):
        run = launch(
            cfg,
            options,
            run_dir,
            on_event=on_event,
            on_message=lambda text: progress.console.print(text, highlight=False),
        )
    console.print(f"run directory: [bold]{run.root}[/]")
    if (run.root / "results.json").is_file():
        console.print(results_table(run.root))
        console.print(f"report: {run.root / 'report.md'}")
