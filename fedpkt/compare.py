"""``fedpkt compare``: several runs' ``results.json`` as one table in the paper's Table 2 layout.

Each run directory is a federated run (``fedpkt simulate``) or a centralized one
(``fedpkt baselines``, recognised by its ``baselines.json``). Every row is mapped to one of the
paper's eight settings: centralized rows by method name; federated PersonaPKT rows by the
run's ``phase1.strategy`` (and ``phase2.init = random`` for Rand init + Prefix-tuning). The
paper's own Table 2 figures sit beside each row as a reference column group, and a short list
checks which of the paper's findings hold on these runs. Runs with privacy mechanisms (DP-SGD,
client-level DP, SecAgg+; read from each run's config) carry them in their label and sit in a
"privacy against utility" table next to their twin without them, with the largest ε spent.

Values stay fractions in CSV/JSON (F1s in [0, 1], the paper's x100 F1s divided by 100);
Markdown and plots print F1s x100 like the paper.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fedpkt.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from fedpkt.config import PrefixConfig, privacy_mechanisms
from fedpkt.errors import FedpktError
from fedpkt.report import METRICS, NOT_MEASURED, PARTS, ResultRow, format_pct, read_results
from fedpkt.rundir import RunDir
from fedpkt.strategies import strategy_label

Mode = Literal["federated", "centralized"]
BASELINES_MANIFEST = "baselines.json"
TITLES = {"f1": "F1", "f1_2gram": "2-gram F1", "lcs_f1": "LCS F1", "c_score": "C"}
PERCENT = ("f1", "f1_2gram", "lcs_f1")


@dataclass(frozen=True)
class PaperRow:
    """One line of the paper's Table 2: metric -> (Part B, Part C), F1s x100 as printed."""

    values: Mapping[str, tuple[float, float]]
    params: str


def _paper(f1: tuple, f2: tuple, lcs: tuple, c: tuple, params: str) -> PaperRow:
    return PaperRow({"f1": f1, "f1_2gram": f2, "lcs_f1": lcs, "c_score": c}, params)


# Han et al. 2023, Table 2 (copied from the paper; order = the table's).
PAPER_TABLE2: dict[str, PaperRow] = {
    "Persona + Fine-tuning": _paper(
        (18.64, 17.42), (6.76, 5.68), (17.69, 16.50), (0.20, 0.23), "1 * 100%"
    ),
    "Fine-tuning": _paper(
        (18.16, 17.18), (6.27, 5.86), (17.30, 16.22), (-0.0082, 0.0076), "1 * 100%"
    ),
    "Persona_id + Fine-tuning": _paper(
        (17.87, 16.84), (5.98, 5.45), (16.89, 15.88), (0.00, 0.00), "1 * 100%"
    ),
    "Reptile + Fine-tuning": _paper(
        (16.30, 15.40), (4.44, 3.78), (15.20, 14.22), (0.27, 0.21), "(N+1) * 100%"
    ),
    "Rand init + Prefix-tuning": _paper(
        (9.36, 8.12), (1.34, 1.21), (6.74, 4.98), (0.28, 0.26), "N * 0.1%"
    ),
    "PersonaPKT (base)": _paper(
        (16.35, 14.91), (4.77, 3.96), (15.39, 13.89), (0.14, 0.11), "(N+1) * 0.1%"
    ),
    "PersonaPKT (temperature)": _paper(
        (16.40, 16.38), (4.53, 4.66), (15.41, 15.15), (0.15, 0.12), "(N+1) * 0.1%"
    ),
    "PersonaPKT (PPReptile)": _paper(
        (16.25, 15.30), (4.69, 3.64), (15.17, 14.01), (0.21, 0.16), "(N+1) * 0.1%"
    ),
}


@dataclass(frozen=True)
class CompareRow:
    """One table line: a setting from one run, with its Part B and/or C results."""

    label: str
    setting: str  # a PAPER_TABLE2 key, or the run's own method name when it maps to none
    mode: Mode
    run: str
    parts: Mapping[str, ResultRow] = field(default_factory=dict)
    privacy: tuple[str, ...] = ()  # the run's privacy mechanisms (config.privacy_mechanisms)

    def value(self, metric: str, part: str) -> float | None:
        """The row's figure; None when the run has no such Part or did not measure it."""
        row = self.parts.get(part)
        value = None if row is None else getattr(row, metric)
        return None if value is None else float(value)

    def cell(self, metric: str, part: str) -> str:
        """The Markdown cell: the figure, "–" without a row for the Part, "n/a" when the run
        did not measure the metric (C under ``eval.c_backend = "none"``)."""
        if part not in self.parts:
            return "–"
        value = self.value(metric, part)
        return NOT_MEASURED if value is None else _cell(metric, value)

    def epsilon_max(self) -> float | None:
        """The largest DP-SGD ε any persona of this row spent (None: no DP-SGD)."""
        spent = [r.epsilon_max for r in self.parts.values() if r.epsilon_max is not None]
        return max(spent) if spent else None

    def privacy_text(self) -> str:
        text = ", ".join(self.privacy) if self.privacy else "none"
        eps = self.epsilon_max()
        return text if eps is None else f"{text} (max ε spent {eps:.2f})"


@dataclass(frozen=True)
class Check:
    """One of the paper's findings tested on these runs; ``holds`` None: not measurable."""

    claim: str
    statement: str
    holds: bool | None
    detail: str


# --- reading runs --------------------------------------------------------------------------


def run_mode(run_dir: Path) -> Mode:
    """Centralized when the directory was written by ``fedpkt baselines``, else federated."""
    return "centralized" if (run_dir / BASELINES_MANIFEST).is_file() else "federated"


def unfinished(run_dir: Path, mode: Mode) -> str | None:
    """Why a run directory's results are not final (None: they are).

    A federated run is final once its last work (a round, a persona, phase 2's start) is
    followed by a ``done`` event; a centralized one once every setting it started is done.
    A directory without ``metrics.jsonl`` (a results.json on its own) is taken as it is.
    """
    events = RunDir(run_dir).events()
    if not events:
        return None
    if mode == "centralized":
        started = [e.get("setting") for e in events if e.get("event") == "setting"]
        done = {e.get("setting") for e in events if e.get("event") == "setting_done"}
        if started and started[-1] not in done:
            return f"setting '{started[-1]}' was started and never finished"
        return None
    work = ("round", "client", "phase2_start", "phase1_skipped")
    last_work = max((i for i, e in enumerate(events) if e.get("event") in work), default=-1)
    last_done = max((i for i, e in enumerate(events) if e.get("event") == "done"), default=-1)
    if last_done < last_work:
        return "its metrics.jsonl has no 'done' event after its last work: it was stopped"
    return None


def paper_setting(method: str, mode: Mode, config: Mapping[str, Any]) -> str:
    """The Table 2 setting a results row stands for (its own method name if none)."""
    if method in PAPER_TABLE2:
        return method
    default_method = PrefixConfig.model_fields["method"].default
    if mode == "federated" and config.get("prefix", {}).get("method", default_method) != (
        default_method
    ):
        return _method_setting(method, config)
    if mode == "federated" and method.startswith("Rand init + Prefix-tuning ("):
        return "Rand init + Prefix-tuning"
    if mode == "federated" and method.startswith("PersonaPKT"):
        if config.get("phase2", {}).get("init") == "random":  # runs named before run_method_name
            return "Rand init + Prefix-tuning"
        label = strategy_label(config.get("phase1", {}).get("strategy"))
        if label is not None:
            return label
    return method


def _method_setting(method: str, config: Mapping[str, Any]) -> str:
    """A run of another PEFT method than the paper's prefix tuning (``prefix.method``) is a
    setting of its own: "Rand init + Prompt-tuning", or the strategy's PersonaPKT setting
    with the method's label, "PersonaPKT (PPReptile) + Prompt-tuning" (``run_method_name``)."""
    name = method.split(" (", 1)[0]  # without the "(federated, ...)" tail
    label = strategy_label(config.get("phase1", {}).get("strategy"))
    if name.startswith("PersonaPKT + ") and label is not None:
        return f"{label} + {name.removeprefix('PersonaPKT + ')}"
    return name


def _order(row: CompareRow) -> tuple[int, int, int, str]:
    keys = list(PAPER_TABLE2)
    rank = keys.index(row.setting) if row.setting in PAPER_TABLE2 else len(keys)
    return (rank, 0 if row.mode == "centralized" else 1, len(row.privacy), row.run)


def load_rows(run_dirs: Sequence[str | Path]) -> list[CompareRow]:
    """Every (setting, run) of the given run directories, in Table 2 order (centralized first).

    A label is ``"<setting> [<mode>]"``, with the run's privacy mechanisms after the mode
    (``"[federated, DP-SGD eps=8]"``) so a DP run and its non-DP twin are told apart by what
    they did; when two runs still give the same label, both get the run directory's name.
    """
    if not run_dirs:
        raise FedpktError("compare got 0 run directories; expected at least one")
    found: list[tuple[str, Mode, str, dict[str, ResultRow], tuple[str, ...]]] = []
    for run_dir in run_dirs:
        path = Path(run_dir)
        mode = run_mode(path)
        why = unfinished(path, mode)
        if why is not None:
            again = (
                "simulate --run-dir {0} --resume"
                if mode == "federated"
                else "baselines --run-dir {0}"
            )
            raise FedpktError(
                f"run '{path}' is unfinished ({why}); finish it with `fedpkt "
                f"{again.format(path)}` before comparing it"
            )
        results = read_results(path)
        privacy = tuple(privacy_mechanisms(results.config))
        by_setting: dict[str, dict[str, ResultRow]] = {}
        for row in results.rows:
            setting = paper_setting(row.method, mode, results.config)
            by_setting.setdefault(setting, {})[row.part] = row
        found += [(s, mode, path.name, parts, privacy) for s, parts in by_setting.items()]

    def base_label(setting: str, mode: Mode, privacy: tuple[str, ...]) -> str:
        return f"{setting} [{', '.join([mode, *privacy])}]"

    counts: dict[str, int] = {}
    for setting, mode, _, _, privacy in found:
        label = base_label(setting, mode, privacy)
        counts[label] = counts.get(label, 0) + 1
    rows = []
    for setting, mode, run, parts, privacy in found:
        label = base_label(setting, mode, privacy)
        if counts[label] > 1:
            label += f" ({run})"
        rows.append(CompareRow(label, setting, mode, run, parts, privacy))
    return sorted(rows, key=_order)


# --- what holds ----------------------------------------------------------------------------


def _fmt(metric: str, value: float) -> str:
    return f"{100 * value:.2f}" if metric in PERCENT else f"{value:.3f}"


def _greater(claim: str, metric: str, part: str, left: CompareRow, right: CompareRow) -> Check:
    a, b = left.value(metric, part), right.value(metric, part)
    statement = f"Part {part}: {TITLES[metric]}({left.label}) > {TITLES[metric]}({right.label})"
    if part not in left.parts or part not in right.parts:
        return Check(claim, statement, None, f"not measured: no Part {part} row")
    if a is None or b is None:
        unmeasured = [r.label for r, v in ((left, a), (right, b)) if v is None]
        detail = f"not measured: no {TITLES[metric]} in {' and '.join(unmeasured)}"
        return Check(claim, statement, None, detail)
    return Check(claim, statement, a > b, f"{_fmt(metric, a)} vs {_fmt(metric, b)}")


def _rows(rows: Sequence[CompareRow], setting: str, mode: Mode | None = None) -> list[CompareRow]:
    return [r for r in rows if r.setting == setting and (mode is None or r.mode == mode)]


def _missing(claim: str, statement: str, what: str) -> Check:
    return Check(claim, statement, None, f"not measured: no {what} row in these runs")


def what_holds(rows: Sequence[CompareRow], f1_tolerance: float = 0.01) -> list[Check]:
    """The paper's findings checked on these rows.

    1. C(PersonaPKT) > C(Fine-tuning), every PersonaPKT row, Parts B and C;
    2. F1(PersonaPKT) > F1(Rand init + Prefix-tuning), likewise;
    3. federated vs centralized PersonaPKT (PPReptile): |F1 gap| <= ``f1_tolerance``
       (a fraction: 0.01 is one F1 point of the paper's x100 scale), Parts B and C;
    4. temperature vs base on Part C (paper: 16.38 vs 14.91 F1, 0.12 vs 0.11 C), F1 and C,
       within each mode.
    """
    checks: list[Check] = []
    pkt = [r for r in rows if r.setting.startswith("PersonaPKT")]
    for claim, metric, baseline in (
        ("C(PersonaPKT) > C(Fine-tuning)", "c_score", "Fine-tuning"),
        ("F1(PersonaPKT) > F1(Rand init + Prefix-tuning)", "f1", "Rand init + Prefix-tuning"),
    ):
        others = _rows(rows, baseline)
        if not pkt or not others:
            checks.append(_missing(claim, claim, "PersonaPKT" if not pkt else baseline))
            continue
        for left in pkt:
            for right in others:
                if left is not right:
                    checks += [_greater(claim, metric, p, left, right) for p in PARTS]
    claim = "F1(PPReptile, federated) ~ F1(PPReptile, centralized)"
    fed = _rows(rows, "PersonaPKT (PPReptile)", "federated")
    cen = _rows(rows, "PersonaPKT (PPReptile)", "centralized")
    if not fed or not cen:
        checks.append(_missing(claim, claim, "federated" if not fed else "centralized"))
    for left in fed:
        for right in cen:
            for part in PARTS:
                a, b = left.value("f1", part), right.value("f1", part)
                statement = (
                    f"Part {part}: |F1({left.label}) - F1({right.label})| <= "
                    f"{100 * f1_tolerance:.2f}"
                )
                if a is None or b is None:
                    checks.append(Check(claim, statement, None, f"not measured: no Part {part}"))
                else:
                    gap = a - b
                    checks.append(
                        Check(claim, statement, abs(gap) <= f1_tolerance, f"gap {100 * gap:+.2f}")
                    )
    claim = "temperature > base on Part C"
    pairs = [
        (t, b)
        for t in _rows(rows, "PersonaPKT (temperature)")
        for b in _rows(rows, "PersonaPKT (base)")
        if t.mode == b.mode
    ]
    if not pairs:
        checks.append(_missing(claim, claim, "temperature/base pair of the same mode"))
    for t, b in pairs:
        checks += [_greater(claim, metric, "C", t, b) for metric in ("f1", "c_score")]
    return checks


# --- privacy against utility -----------------------------------------------------------------


@dataclass(frozen=True)
class PrivacyCost:
    """A private row next to the row of the same setting and mode without privacy mechanisms."""

    private: CompareRow
    plain: CompareRow
    part: str

    def delta(self, metric: str) -> float | None:
        a, b = self.private.value(metric, self.part), self.plain.value(metric, self.part)
        return None if a is None or b is None else a - b


def privacy_costs(rows: Sequence[CompareRow]) -> list[PrivacyCost]:
    """Every (private row, Part) that has a non-private twin (same setting and mode) here.

    This is the DP question a user asks: what the mechanism cost in utility, at which ε.
    """
    costs = []
    for private in rows:
        if not private.privacy:
            continue
        for plain in rows:
            if plain.privacy or (plain.setting, plain.mode) != (private.setting, private.mode):
                continue
            costs += [PrivacyCost(private, plain, p) for p in PARTS if p in private.parts]
    return costs


def _privacy_markdown(costs: Sequence[PrivacyCost]) -> str:
    if not costs:
        return "No run here has privacy mechanisms and a twin run without them."
    head = ["Private run", "Without", "Part", "max ε spent"]
    head += [f"{TITLES[m]} (private / without / change)" for m in METRICS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cost in costs:
        eps = cost.private.parts[cost.part].epsilon_max
        cells = [
            cost.private.label,
            cost.plain.label,
            cost.part,
            "–" if eps is None else f"{eps:.2f}",
        ]
        for metric in METRICS:
            d = cost.delta(metric)
            sign = "" if d is None else ("+" if d >= 0 else "-")
            unmeasured = NOT_MEASURED if cost.part in cost.plain.parts else "–"
            change = unmeasured if d is None else sign + _cell(metric, abs(d))
            private, plain = (
                cost.private.cell(metric, cost.part),
                cost.plain.cell(metric, cost.part),
            )
            cells.append(f"{private} / {plain} / {change}")
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def _privacy_record(cost: PrivacyCost) -> dict[str, Any]:
    record: dict[str, Any] = {
        "private": cost.private.label,
        "without": cost.plain.label,
        "part": cost.part,
        "epsilon_max": cost.private.parts[cost.part].epsilon_max,
    }
    for metric in METRICS:
        record[f"{metric}_private"] = cost.private.value(metric, cost.part)
        record[f"{metric}_without"] = cost.plain.value(metric, cost.part)
        record[f"{metric}_change"] = cost.delta(metric)
    return record


# --- rendering -----------------------------------------------------------------------------


def _cell(metric: str, value: float | None) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.2f}" if metric in PERCENT else f"{value:.3f}"


def _paper_cell(metric: str, setting: str, part_index: int) -> str:
    paper = PAPER_TABLE2.get(setting)
    if paper is None:
        return "–"
    value = paper.values[metric][part_index]
    return f"{value:.2f}" if metric in PERCENT else f"{value:g}"


def _stored(row: CompareRow) -> str:
    values = sorted({r.stored_params_pct for r in row.parts.values()})
    return ", ".join(format_pct(v) for v in values)


def render_markdown(rows: Sequence[CompareRow], checks: Sequence[Check]) -> str:
    """The comparison as Markdown: Table 2 layout + the paper's figures + what holds."""
    head = ["Setting", "Mode", "Privacy", "Run"]
    for metric in METRICS:
        head += [f"{TITLES[metric]} B", f"{TITLES[metric]} C"]
    head += ["Stored / persona"]
    for metric in METRICS:
        head += [f"paper {TITLES[metric]} B", f"paper {TITLES[metric]} C"]
    head += ["paper params"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [
            row.setting.replace("|", "\\|"),
            row.mode,
            row.privacy_text(),
            row.run.replace("|", "\\|"),
        ]
        for metric in METRICS:
            cells += [row.cell(metric, p) for p in PARTS]
        cells.append(_stored(row))
        for metric in METRICS:
            cells += [_paper_cell(metric, row.setting, i) for i in range(len(PARTS))]
        paper = PAPER_TABLE2.get(row.setting)
        cells.append(paper.params if paper else "–")
        lines.append("| " + " | ".join(cells) + " |")
    verdict = {True: "holds", False: "does not hold", None: "not measured"}
    holds = [f"- **{verdict[c.holds]}**: {c.statement} ({c.detail})" for c in checks]
    return (
        "\n\n".join(
            [
                "# fedpkt compare: paper Table 2 layout",
                "F1, 2-gram F1 and LCS F1 x100; C is the mean C score; B: regular personas, C: "
                "few-shot personas. The `paper` columns are Han et al. (2023), Table 2.",
                "\n".join(lines),
                "## What holds on these runs",
                "\n".join(holds) if holds else "No check applies to these runs.",
                "## Privacy against utility",
                "Each run with privacy mechanisms beside the run of the same setting without "
                "them; change = private - without (F1s x100).",
                _privacy_markdown(privacy_costs(rows)),
                "## Plots",
                "\n\n".join(f"![{TITLES[m]}](plots/{m}.png)" for m in METRICS),
            ]
        )
        + "\n"
    )


def _csv_fields() -> list[str]:
    fields = ["setting", "mode", "privacy", "epsilon_max", "run", "label"]
    fields += [f"{m}_{p}" for m in METRICS for p in PARTS]
    fields += [f"n_personas_{p}" for p in PARTS] + ["stored_params_pct"]
    fields += [f"paper_{m}_{p}" for m in METRICS for p in PARTS] + ["paper_params"]
    return fields


def row_record(row: CompareRow) -> dict[str, Any]:
    """One row as a flat dict (CSV/JSON): fractions, paper F1s divided by 100; None = absent."""
    record: dict[str, Any] = {
        "setting": row.setting,
        "mode": row.mode,
        "privacy": ", ".join(row.privacy),
        "epsilon_max": row.epsilon_max(),
        "run": row.run,
        "label": row.label,
    }
    for metric in METRICS:
        for part in PARTS:
            record[f"{metric}_{part}"] = row.value(metric, part)
    for part in PARTS:
        record[f"n_personas_{part}"] = row.parts[part].n_personas if part in row.parts else 0
    pct = [r.stored_params_pct for r in row.parts.values()]
    record["stored_params_pct"] = max(pct) if pct else None
    paper = PAPER_TABLE2.get(row.setting)
    for metric in METRICS:
        for i, part in enumerate(PARTS):
            value = paper.values[metric][i] if paper else None
            if value is not None and metric in PERCENT:
                value = value / 100.0
            record[f"paper_{metric}_{part}"] = value
    record["paper_params"] = paper.params if paper else None
    return record


def render_csv(rows: Sequence[CompareRow]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_csv_fields(), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row_record(row).items()})
    return buffer.getvalue()


def plot_metric(rows: Sequence[CompareRow], metric: str) -> bytes:
    """PNG: one bar per (row, Part), with the paper's figure as a black mark on each bar."""
    from matplotlib.figure import Figure  # Agg through savefig; no pyplot state

    scale = 100.0 if metric in PERCENT else 1.0
    fig = Figure(figsize=(max(6.0, 1.1 * len(rows) + 2), 4.5), layout="constrained")
    ax = fig.subplots()
    width = 0.38
    for offset, (i, part) in zip((-width / 2, width / 2), enumerate(PARTS), strict=True):
        xs = [x + offset for x in range(len(rows))]
        values = [r.value(metric, part) for r in rows]
        # Not measured (or no such Part) draws no bar, never a bar at 0; "n/a" marks the former.
        ax.bar(
            xs, [math.nan if v is None else scale * v for v in values], width, label=f"Part {part}"
        )
        for x, r, v in zip(xs, rows, values, strict=True):
            if v is None and part in r.parts:
                ax.text(x, 0.0, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
        paper = [
            (x, PAPER_TABLE2[r.setting].values[metric][i])
            for x, r in zip(xs, rows, strict=True)
            if r.setting in PAPER_TABLE2
        ]
        if paper:
            px, py = zip(*paper, strict=True)
            ax.scatter(px, py, marker="_", s=300, color="black", label="paper" if i == 0 else None)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r.label for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(TITLES[metric] + (" (x100)" if scale != 1.0 else ""))
    ax.set_title(f"{TITLES[metric]} by setting")
    ax.axhline(0.0, color="grey", linewidth=0.5)
    ax.legend()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


@dataclass(frozen=True)
class ComparisonFiles:
    """What ``write_comparison`` wrote."""

    markdown: Path
    csv: Path
    json: Path
    plots: dict[str, Path]
    checks: list[Check]


def write_comparison(
    run_dirs: Sequence[str | Path], out: str | Path, *, f1_tolerance: float = 0.01
) -> ComparisonFiles:
    """Write ``compare.md``, ``compare.csv``, ``compare.json`` and ``plots/<metric>.png``."""
    if not (isinstance(f1_tolerance, (int, float)) and math.isfinite(f1_tolerance)):
        raise FedpktError(f"f1_tolerance = {f1_tolerance!r}; expected a finite number")
    rows = load_rows(run_dirs)
    checks = what_holds(rows, f1_tolerance)
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise FedpktError(f"compare output '{root}' exists and is not a directory")
    files = ComparisonFiles(
        markdown=root / "compare.md",
        csv=root / "compare.csv",
        json=root / "compare.json",
        plots={m: root / "plots" / f"{m}.png" for m in METRICS},
        checks=checks,
    )
    atomic_write_text(files.markdown, render_markdown(rows, checks))
    atomic_write_text(files.csv, render_csv(rows))
    atomic_write_json(
        files.json,
        {
            "runs": [str(Path(d)) for d in run_dirs],
            "rows": [row_record(r) for r in rows],
            "privacy_costs": [_privacy_record(c) for c in privacy_costs(rows)],
            "what_holds": [
                {"claim": c.claim, "statement": c.statement, "holds": c.holds, "detail": c.detail}
                for c in checks
            ],
        },
    )
    for metric, path in files.plots.items():
        atomic_write_bytes(path, plot_metric(rows, metric))
    return files


def read_comparison(out: str | Path) -> dict[str, Any]:
    """The ``compare.json`` written into ``out`` (for tools and tests)."""
    path = Path(out) / "compare.json"
    if not path.is_file():
        raise FedpktError(f"comparison '{path}' does not exist; run `fedpkt compare` first")
    return json.loads(path.read_text(encoding="utf-8"))
