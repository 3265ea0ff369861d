"""The results table ``fedpkt simulate`` and ``fedpkt baselines`` print (cli.common)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from cli.common import results_table
from fedpkt.report import ResultRow, write_results

LONG = "Rand init + Prefix-tuning (federated, DP-SGD eps=8, client-level DP (adaptive), SecAgg+)"


def rendered(run: Path, width: int) -> list[str]:
    console = Console(width=width, record=True)
    console.print(results_table(run))
    return console.export_text().splitlines()


def write_run(root: Path, c_score: float | None = -0.015) -> Path:
    rows = [
        ResultRow(
            "PersonaPKT (federated PPReptile)", "B", 0.2032, 0.0854, 0.1981, 0.041, 30, 0.796
        ),
        ResultRow(LONG, "C", 0.2127, 0.0921, 0.2044, c_score, 20, 5000.0),
    ]
    write_results(root, rows, {})
    return root


def method_cells(lines: list[str]) -> list[str]:
    """The method column's text, row by row (wrapped lines of one row joined by spaces)."""
    names: list[str] = []
    for line in lines:
        if not line.startswith("│"):
            continue
        method, part = line.split("│")[1:3]
        if part.strip():
            names.append(method.strip())
        elif method.strip():
            names[-1] += " " + method.strip()
    return names


def test_at_80_columns_method_names_are_whole_and_every_column_fits(tmp_path: Path) -> None:
    lines = rendered(write_run(tmp_path), 80)
    assert max(len(line) for line in lines) <= 80
    assert not any("…" in line for line in lines)
    assert method_cells(lines) == ["PersonaPKT (federated PPReptile)", LONG]
    first = next(line for line in lines if "PersonaPKT" in line)
    assert [c.strip() for c in first.split("│")[2:9]] == [
        "B", "20.32", "8.54", "19.81", "0.041", "30", "0.796%"
    ]  # fmt: skip


def test_c_not_measured_prints_na(tmp_path: Path) -> None:
    lines = rendered(write_run(tmp_path, c_score=None), 80)
    cells = [line.split("│") for line in lines if line.startswith("│")]
    part_c = next(row for row in cells if row[2].strip() == "C")
    assert part_c[6].strip() == "n/a"
