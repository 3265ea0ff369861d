"""``fedpkt compare`` on hand-made results.json files (no training)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from fedpkt.compare import (
    PAPER_TABLE2,
    load_rows,
    paper_setting,
    read_comparison,
    render_markdown,
    what_holds,
    write_comparison,
)
from fedpkt.config import load_config, run_method_name
from fedpkt.errors import FedpktError
from fedpkt.report import ResultRow, write_results


def _row(
    method: str, part: str, f1: float, c: float, pct: float = 100.0, eps: float | None = None
) -> ResultRow:
    return ResultRow(
        epsilon_max=eps,
        method=method,
        part=part,
        f1=f1,
        f1_2gram=f1 / 3,
        lcs_f1=f1 * 0.9,
        c_score=c,
        n_personas=3,
        stored_params_pct=pct,
    )


def _central(root: Path, rows: list[ResultRow]) -> Path:
    """A baselines run directory: results.json plus the baselines.json marker."""
    write_results(root, rows, {"phase1": {"strategy": "ppreptile"}})
    (root / "baselines.json").write_text(json.dumps({"settings": {}}))
    return root


def _federated(
    root: Path, rows: list[ResultRow], strategy: str = "ppreptile", dp: dict | None = None
) -> Path:
    config = {"phase1": {"strategy": strategy}, "phase2": {"init": "source"}, "dp": dp or {}}
    write_results(root, rows, config)
    return root


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    central = _central(
        tmp_path / "central",
        [
            _row("PersonaPKT (PPReptile)", "B", 0.145, 0.20, 0.1),
            _row("PersonaPKT (PPReptile)", "C", 0.140, 0.05, 0.1),
            _row("Fine-tuning", "B", 0.180, 0.10),
            _row("Fine-tuning", "C", 0.170, 0.10),
        ],
    )
    fed = _federated(
        tmp_path / "fed",
        [
            _row("PersonaPKT (federated)", "B", 0.150, 0.21, 0.1),
            _row("PersonaPKT (federated)", "C", 0.110, 0.04, 0.1),
        ],
    )
    return [fed, central]


def test_federated_persona_pkt_row_maps_to_its_strategy() -> None:
    config = {"phase1": {"strategy": "temperature"}, "phase2": {"init": "source"}}
    assert paper_setting("PersonaPKT (federated)", "federated", config) == (
        "PersonaPKT (temperature)"
    )


def test_federated_random_init_maps_to_rand_init_prefix_tuning() -> None:
    config = {"phase1": {"strategy": "ppreptile"}, "phase2": {"init": "random"}}
    assert paper_setting("PersonaPKT (federated)", "federated", config) == (
        "Rand init + Prefix-tuning"
    )


def test_a_random_init_run_is_named_rand_init_and_maps_back_to_it() -> None:
    """run_method_name names a random-init run for what it is (with its privacy mechanisms),
    and compare places that name on the Rand init + Prefix-tuning row."""
    cfg = load_config("embedded", ["phase2.init='random'", "dp.enabled=true", "dp.epsilon=8"])
    name = run_method_name(cfg)
    assert name == "Rand init + Prefix-tuning (federated, DP-SGD eps=8)"
    assert paper_setting(name, "federated", cfg.model_dump()) == "Rand init + Prefix-tuning"
    assert run_method_name(load_config("embedded")) == "PersonaPKT (federated)"


def test_rows_follow_table2_order_with_centralized_before_federated(runs: list[Path]) -> None:
    """Table 2 lists Fine-tuning (2nd) before PersonaPKT (PPReptile) (8th)."""
    labels = [r.label for r in load_rows(runs)]
    assert labels == [
        "Fine-tuning [centralized]",
        "PersonaPKT (PPReptile) [centralized]",
        "PersonaPKT (PPReptile) [federated]",
    ]


def test_two_runs_with_the_same_label_are_told_apart_by_run_name(tmp_path: Path) -> None:
    rows = [_row("PersonaPKT (federated)", "B", 0.1, 0.1)]
    first, second = _federated(tmp_path / "r1", rows), _federated(tmp_path / "r2", rows)
    labels = [r.label for r in load_rows([first, second])]
    assert labels == [
        "PersonaPKT (PPReptile) [federated] (r1)",
        "PersonaPKT (PPReptile) [federated] (r2)",
    ]


def test_c_of_persona_pkt_above_fine_tuning_is_checked_per_part(runs: list[Path]) -> None:
    """Federated PKT C: B 0.21 > 0.10 holds; C 0.04 > 0.10 does not."""
    checks = [
        c
        for c in what_holds(load_rows(runs))
        if c.claim == "C(PersonaPKT) > C(Fine-tuning)" and "[federated]" in c.statement
    ]
    assert [(c.statement[:6], c.holds) for c in checks] == [("Part B", True), ("Part C", False)]
    assert checks[0].detail == "0.210 vs 0.100"


def test_federated_centralized_gap_within_tolerance(runs: list[Path]) -> None:
    """B: 0.150 - 0.145 = +0.50 points (holds at 1.00); C: 0.110 - 0.140 = -3.00 (does not)."""
    checks = [c for c in what_holds(load_rows(runs), 0.01) if "federated) ~" in c.claim]
    assert [(c.holds, c.detail) for c in checks] == [(True, "gap +0.50"), (False, "gap -3.00")]


def test_missing_settings_are_reported_not_measured(runs: list[Path]) -> None:
    """No Rand init row and no temperature/base pair in these runs."""
    checks = what_holds(load_rows(runs))
    missing = {c.claim for c in checks if c.holds is None}
    assert missing == {
        "F1(PersonaPKT) > F1(Rand init + Prefix-tuning)",
        "temperature > base on Part C",
    }


def test_markdown_prints_f1_x100_next_to_the_paper_figures(runs: list[Path]) -> None:
    rows = load_rows(runs)
    text = render_markdown(rows, what_holds(rows))
    line = next(ln for ln in text.splitlines() if ln.startswith("| Fine-tuning |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    # ours: F1 B 0.180 -> 18.00; paper's Fine-tuning F1 B is 18.16, params "1 * 100%".
    assert cells[2] == "none"  # privacy mechanisms
    assert cells[4] == "18.00"
    assert "18.16" in cells
    assert cells[-1] == "1 * 100%"


def test_write_comparison_writes_table_files_and_one_plot_per_metric(
    runs: list[Path], tmp_path: Path
) -> None:
    files = write_comparison(runs, tmp_path / "out")
    with files.csv.open() as handle:
        records = list(csv.DictReader(handle))
    assert [r["setting"] for r in records] == [
        "Fine-tuning",
        "PersonaPKT (PPReptile)",
        "PersonaPKT (PPReptile)",
    ]
    data = read_comparison(tmp_path / "out")
    fine_tuning = data["rows"][0]
    assert fine_tuning["paper_f1_B"] == pytest.approx(
        PAPER_TABLE2["Fine-tuning"].values["f1"][0] / 100
    )
    assert fine_tuning["f1_B"] == pytest.approx(0.18)
    assert len(data["what_holds"]) == len(files.checks)
    for path in files.plots.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_directory_without_results_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(FedpktError, match="does not exist"):
        load_rows([tmp_path])


def test_a_dp_run_sits_next_to_its_non_dp_twin_with_epsilon_and_utility_change(
    runs: list[Path], tmp_path: Path
) -> None:
    dp = _federated(
        tmp_path / "dp",
        [
            _row("PersonaPKT (federated, DP-SGD eps=8)", "B", 0.120, 0.10, 0.1, eps=7.5),
            _row("PersonaPKT (federated, DP-SGD eps=8)", "C", 0.100, 0.02, 0.1, eps=7.9),
        ],
        dp={"enabled": True, "epsilon": 8.0},
    )
    rows = load_rows([*runs, dp])
    labels = [r.label for r in rows]
    assert "PersonaPKT (PPReptile) [federated]" in labels
    assert "PersonaPKT (PPReptile) [federated, DP-SGD eps=8]" in labels
    private = next(r for r in rows if r.privacy)
    assert private.epsilon_max() == 7.9
    assert private.privacy_text() == "DP-SGD eps=8 (max ε spent 7.90)"
    out = tmp_path / "cmp"
    write_comparison([*runs, dp], out)
    costs = read_comparison(out)["privacy_costs"]
    assert [(c["part"], c["epsilon_max"]) for c in costs] == [("B", 7.5), ("C", 7.9)]
    assert costs[0]["f1_change"] == pytest.approx(0.120 - 0.150)
    assert costs[1]["c_score_change"] == pytest.approx(0.02 - 0.04)
    text = (out / "compare.md").read_text()
    assert "## Privacy against utility" in text
    assert "| 12.00 / 15.00 / -3.00 |" in text


def test_without_private_runs_the_privacy_table_says_so(runs: list[Path], tmp_path: Path) -> None:
    write_comparison(runs, tmp_path / "cmp")
    assert read_comparison(tmp_path / "cmp")["privacy_costs"] == []
    assert "No run here has privacy mechanisms" in (tmp_path / "cmp" / "compare.md").read_text()


def test_a_run_without_c_shows_na_and_its_c_checks_are_not_measured(
    runs: list[Path], tmp_path: Path
) -> None:
    """A federated run with eval.c_backend = "none" beside a centralized run that measured C."""
    fed = _federated(
        tmp_path / "fed-noc",
        [
            _row("PersonaPKT (federated)", "B", 0.150, None, 0.1),  # type: ignore[arg-type]
            _row("PersonaPKT (federated)", "C", 0.110, None, 0.1),  # type: ignore[arg-type]
        ],
    )
    files = write_comparison([fed, runs[1]], tmp_path / "out")
    data = read_comparison(tmp_path / "out")
    fed_row = next(r for r in data["rows"] if r["mode"] == "federated")
    assert (fed_row["c_score_B"], fed_row["c_score_C"]) == (None, None)
    assert fed_row["f1_B"] == pytest.approx(0.150)
    table = files.markdown.read_text()
    fed_line = next(line for line in table.splitlines() if "| federated |" in line)
    cells = [cell.strip() for cell in fed_line.strip("|").split("|")]
    assert cells[10:12] == ["n/a", "n/a"]  # C B, C C
    c_checks = [c for c in files.checks if c.claim.startswith("C(") and "federated" in c.statement]
    assert c_checks and all(c.holds is None and "no C in" in c.detail for c in c_checks)
    with (tmp_path / "out" / "compare.csv").open() as handle:
        fed_csv = next(r for r in csv.DictReader(handle) if r["mode"] == "federated")
    assert (fed_csv["c_score_B"], fed_csv["c_score_C"]) == ("", "")
