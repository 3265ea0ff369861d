"""``fedpkt compare``: federated and centralized runs in one Table 2-layout comparison."""

from __future__ import annotations

from pathlib import Path

import typer

from cli.common import console, exits_cleanly


@exits_cleanly
def compare_command(
    run_dirs: list[Path] = typer.Argument(..., help="Run directories (simulate or baselines)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for compare.{md,csv,json}, plots/."),
    f1_tolerance: float = typer.Option(
        1.0, "--f1-tolerance", help="Federated vs centralized F1 gap that still 'holds' (x100)."
    ),
) -> None:
    """One table (paper Table 2 layout, with the paper's figures), bar plots, and what holds."""
    from fedpkt.compare import write_comparison

    files = write_comparison(run_dirs, out, f1_tolerance=f1_tolerance / 100.0)
    console.print(
        files.markdown.read_text(encoding="utf-8"), markup=False, highlight=False, soft_wrap=True
    )
    console.print(f"written: {files.markdown}, {files.csv}, {files.json}, {out / 'plots'}/")
