"""A run's results as the paper reports them: ``results.{json,csv}``, ``report.md`` and plots.

Inputs are the events a run logs in ``metrics.jsonl``:

- ``{"event": "round", ...}`` -> :class:`RoundRecord`, one per phase-1 round;
- ``{"event": "client", ...}`` -> :class:`ClientRecord`, one per personalized (Part B/C) persona;

plus the method name and ``stored_params_pct`` (stored prefix parameters per persona as a
percentage of the backbone's). The paper averages each metric per persona first (on the
client), then over the personas of a Part (here), so every persona weighs the same.

``results.json`` is the one shape every report, ``fedpkt compare`` and outside tool reads::

    {"rows": [{"method", "part", "f1", "f1_2gram", "lcs_f1", "c_score", "n_personas",
               "stored_params_pct"}, ...], "config": {...resolved config...}}

Metric values stay fractions (F1s in [0, 1], C in [-m, m]; ``c_score`` null when C was not
measured, ``eval.c_backend = "none"``); only ``report.md`` prints the F1s x100, like the
paper's Table 2. Plots are drawn with matplotlib's Agg canvas directly (no
pyplot, so no global backend state), and every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import fmean
from typing import Any, Literal

from fedpkt.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from fedpkt.errors import FedpktError
from fedpkt.jsonl import read_lines

Part = Literal["B", "C"]
PARTS: tuple[Part, ...] = ("B", "C")
METRICS: tuple[str, ...] = ("f1", "f1_2gram", "lcs_f1", "c_score")
RESULT_FIELDS: tuple[str, ...] = (
    "method",
    "part",
    *METRICS,
    "n_personas",
    "stored_params_pct",
    "epsilon_max",
)
# Fields a results.json written before they existed may lack (read as None).
_OPTIONAL_FIELDS = frozenset({"epsilon_max"})
_PERCENT_METRICS = ("f1", "f1_2gram", "lcs_f1")
_METRIC_TITLES = {"f1": "F1", "f1_2gram": "2-gram F1", "lcs_f1": "LCS F1", "c_score": "C"}


# --- records ------------------------------------------------------------------------------


def _number(event: Mapping[str, Any], key: str, where: str, *, optional: bool = False) -> Any:
    """A finite float from ``event[key]`` (None when optional and absent/null)."""
    value = event.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FedpktError(f"{where} field '{key}' = {value!r}; expected a number")
    if not math.isfinite(value):
        if optional:
            return None
        raise FedpktError(f"{where} field '{key}' = {value!r}; expected a finite number")
    return float(value)


def _count(event: Mapping[str, Any], key: str, where: str) -> int:
    """A non-negative integer; integral floats (Flower metric records are floats) accepted."""
    value = _number(event, key, where)
    if value < 0 or value != int(value):
        raise FedpktError(f"{where} field '{key}' = {value!r}; expected a whole number >= 0")
    return int(value)


@dataclass(frozen=True)
class RoundRecord:
    """One phase-1 round: its number, mean client train loss and federated validation loss
    (None when not measured), clients sampled, failed replies, and wall seconds."""

    round: int
    train_loss: float | None
    val_loss: float | None
    sampled: int
    failures: int
    seconds: float

    @classmethod
    def from_event(cls, event: Mapping[str, Any]) -> RoundRecord:
        """Parse a ``"round"`` event; ``sampled``/``failures`` may be id lists or counts."""
        where = f"round event {event.get('round')!r}"
        counts = {}
        for key in ("sampled", "failures"):
            value = event.get(key, 0)
            counts[key] = len(value) if isinstance(value, list) else _count(event, key, where)
        return cls(
            round=_count(event, "round", where),
            train_loss=_number(event, "train_loss", where, optional=True),
            val_loss=_number(event, "val_loss", where, optional=True),
            sampled=counts["sampled"],
            failures=counts["failures"],
            seconds=_number(event, "seconds", where),
        )


@dataclass(frozen=True)
class ClientRecord:
    """One personalized persona's outcome (phase 2), all computed on its own client.

    F1s are fractions in [0, 1]; ``c_score`` the mean C over its test responses (None: not
    measured, ``eval.c_backend = "none"``);
    ``test_loss`` is the personalized prefix's test loss and ``source_test_loss`` that of the
    prefix it started from (the source prefix; logged by clients as ``init_test_loss``);
    ``epsilon`` is its DP-SGD ε when DP was on.
    """

    client_id: str
    part: Part
    n_train_dialogues: int
    f1: float
    f1_2gram: float
    lcs_f1: float
    c_score: float | None
    test_loss: float | None
    source_test_loss: float | None
    epochs: int
    epsilon: float | None = None

    @classmethod
    def from_event(cls, event: Mapping[str, Any]) -> ClientRecord:
        """Parse a ``"client"`` event (extra keys ignored; ``init_test_loss`` is accepted for
        ``source_test_loss``)."""
        client_id = event.get("client_id")
        if not isinstance(client_id, str) or not client_id:
            raise FedpktError(f"client event client_id = {client_id!r}; expected a non-empty id")
        where = f"client '{client_id}' event"
        part = event.get("part")
        if part not in PARTS:
            raise FedpktError(f"{where} field 'part' = {part!r}; expected 'B' or 'C'")
        source_key = "source_test_loss" if "source_test_loss" in event else "init_test_loss"
        return cls(
            client_id=client_id,
            part=part,
            n_train_dialogues=_count(event, "n_train_dialogues", where),
            f1=_number(event, "f1", where),
            f1_2gram=_number(event, "f1_2gram", where),
            lcs_f1=_number(event, "lcs_f1", where),
            c_score=_number(event, "c_score", where, optional=True),
            test_loss=_number(event, "test_loss", where, optional=True),
            source_test_loss=_number(event, source_key, where, optional=True),
            epochs=_count(event, "epochs", where),
            epsilon=_number(event, "epsilon", where, optional=True),
        )


@dataclass(frozen=True)
class ResultRow:
    """One ``results.json`` row: means over the ``n_personas`` personas of one Part."""

    method: str
    part: Part
    f1: float
    f1_2gram: float
    lcs_f1: float
    c_score: float | None  # None: C not measured (n/a in tables, null in JSON)
    n_personas: int
    stored_params_pct: float
    # The largest DP-SGD ε a persona of this Part spent (None: no DP). The worst case, not the
    # mean, because each persona's guarantee is its own and a reader comparing a DP run with a
    # non-DP one needs the weakest guarantee next to the utility it bought.
    epsilon_max: float | None = None


@dataclass(frozen=True)
class Results:
    """A parsed, validated ``results.json``."""

    rows: list[ResultRow]
    config: dict[str, Any]


@dataclass(frozen=True)
class ReportFiles:
    """Paths ``write_report`` produced."""

    results_json: Path
    results_csv: Path
    report_md: Path
    plots: dict[str, Path]


def _rounds(items: Iterable[RoundRecord | Mapping[str, Any]]) -> list[RoundRecord]:
    """Records from events or records; the last event of a round wins (a rerun supersedes)."""
    by_round: dict[int, RoundRecord] = {}
    for item in items:
        record = item if isinstance(item, RoundRecord) else RoundRecord.from_event(item)
        by_round[record.round] = record
    return [by_round[r] for r in sorted(by_round)]


def _clients(items: Iterable[ClientRecord | Mapping[str, Any]]) -> list[ClientRecord]:
    """Records from events or records; the last event of a client wins (a rerun supersedes)."""
    by_id: dict[str, ClientRecord] = {}
    for item in items:
        record = item if isinstance(item, ClientRecord) else ClientRecord.from_event(item)
        by_id[record.client_id] = record
    return [by_id[c] for c in sorted(by_id)]


def read_metrics(path: str | Path) -> tuple[list[RoundRecord], list[ClientRecord]]:
    """Round and client records of a ``metrics.jsonl`` (other events are skipped)."""
    file = Path(path)
    if not file.is_file():
        raise FedpktError(f"metrics file '{file}' does not exist; expected a run's metrics.jsonl")
    events = read_lines(
        file, "metrics file"
    ).objects  # a bad line is named; a torn last one skipped
    rounds = _rounds(e for e in events if e.get("event") == "round")
    clients = _clients(e for e in events if e.get("event") == "client")
    return rounds, clients


# --- rows and tables ----------------------------------------------------------------------


def _mean(group: Sequence[ClientRecord], metric: str, part: str) -> float | None:
    """The unweighted mean of a metric over personas; None when none of them measured it
    (C under ``eval.c_backend = "none"``), an error when only some did."""
    values = [getattr(c, metric) for c in group]
    if all(v is None for v in values):
        return None
    if any(v is None for v in values):
        raise FedpktError(
            f"Part {part}: {metric} was measured for some personas and not for others; "
            "expected one eval.c_backend for the whole run"
        )
    return fmean(values)


def summarize(
    method: str,
    clients: Iterable[ClientRecord | Mapping[str, Any]],
    stored_params_pct: float,
) -> list[ResultRow]:
    """One row per Part present (B before C): the unweighted mean of each metric over its
    personas. A Part without personas has no row."""
    records = _clients(clients)
    rows = []
    for part in PARTS:
        group = [c for c in records if c.part == part]
        if group:
            means = {m: _mean(group, m, part) for m in METRICS}
            spent = [c.epsilon for c in group if c.epsilon is not None]
            rows.append(
                ResultRow(
                    method=method,
                    part=part,
                    n_personas=len(group),
                    stored_params_pct=float(stored_params_pct),
                    epsilon_max=max(spent) if spent else None,
                    **means,
                )
            )
    return rows


NOT_MEASURED = "n/a"


def _fmt_metric(metric: str, value: float | None) -> str:
    if value is None:
        return NOT_MEASURED
    return f"{100 * value:.2f}" if metric in _PERCENT_METRICS else f"{value:.3f}"


def format_pct(value: float) -> str:
    """A stored-parameter share: 3 significant digits below 100 %, whole percents with
    thousands separators from there (Reptile + Fine-tuning stores N whole models: "5,000%",
    never "5e+03%")."""
    return f"{value:,.0f}%" if value >= 100 else f"{value:.3g}%"


def render_table(rows: Sequence[ResultRow]) -> str:
    """The paper's Table 2 layout as Markdown: one line per method, Part B | C per metric.

    F1s are printed x100, C as is; a Part a method has no row for shows "–", a metric its row
    did not measure (C under ``eval.c_backend = "none"``) "n/a". Methods keep the order of
    their first row, so ``fedpkt compare`` can pass rows of several runs.
    """
    methods: dict[str, dict[str, ResultRow]] = {}
    for row in rows:
        methods.setdefault(row.method, {})[row.part] = row
    head = ["Method"]
    for metric in METRICS:
        head += [f"{_METRIC_TITLES[metric]} B", f"{_METRIC_TITLES[metric]} C"]
    head += ["Personas B", "Personas C", "Stored params / persona"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, parts in methods.items():
        cells = [method.replace("|", "\\|")]
        for metric in METRICS:
            for part in PARTS:
                row = parts.get(part)
                cells.append(_fmt_metric(metric, getattr(row, metric)) if row else "–")
        cells += [str(parts[p].n_personas) if p in parts else "0" for p in PARTS]
        pct = {r.stored_params_pct for r in parts.values()}
        cells.append(", ".join(format_pct(v) for v in sorted(pct)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _phase1_section(rounds: Sequence[RoundRecord]) -> str:
    if not rounds:
        return "No phase-1 rounds were recorded in this run."
    last = rounds[-1]
    with_val = [r for r in rounds if r.val_loss is not None]
    best = min(with_val, key=lambda r: r.val_loss) if with_val else None  # type: ignore[arg-type,return-value]

    def loss(value: float | None) -> str:
        return "–" if value is None else f"{value:.4f}"

    cells = [
        str(len(rounds)),
        loss(rounds[0].train_loss),
        loss(last.train_loss),
        loss(last.val_loss),
        f"{loss(best.val_loss)} (round {best.round})" if best else "–",
        f"{fmean(r.sampled for r in rounds):.1f}",
        str(sum(r.failures for r in rounds)),
        f"{sum(r.seconds for r in rounds):.1f}",
    ]
    head = [
        "Rounds",
        "First train loss",
        "Last train loss",
        "Last val loss",
        "Best val loss",
        "Clients / round",
        "Failed replies",
        "Seconds",
    ]
    return "\n".join(
        ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), "| " + " | ".join(cells) + " |"]
    )


def _loss_section(clients: Sequence[ClientRecord], start: str) -> str:
    """Mean test loss per Part of the personalized prefixes vs the source prefix alone, over the
    personas that logged both (so the two means compare the same personas)."""
    head = ["Part", "Personas", f"{start.capitalize()} alone", "Personalized", "Change"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for part in PARTS:
        both = [
            c
            for c in clients
            if c.part == part and c.test_loss is not None and c.source_test_loss is not None
        ]
        if not both:
            continue
        src = fmean(c.source_test_loss for c in both)  # type: ignore[misc]
        own = fmean(c.test_loss for c in both)  # type: ignore[misc]
        lines.append(f"| {part} | {len(both)} | {src:.4f} | {own:.4f} | {own - src:+.4f} |")
    if len(lines) == 2:
        return "No persona logged both test losses."
    return "\n".join(lines)


def _dp_section(clients: Sequence[ClientRecord]) -> str | None:
    """Per-Part ε summary, or None when no client trained with DP-SGD."""
    if not any(c.epsilon is not None for c in clients):
        return None
    lines = ["| Part | Personas with ε | Mean ε | Max ε |", "|---|---|---|---|"]
    for part in PARTS:
        eps = [c.epsilon for c in clients if c.part == part and c.epsilon is not None]
        if eps:
            lines.append(f"| {part} | {len(eps)} | {fmean(eps):.3f} | {max(eps):.3f} |")
    return "\n".join(lines)


_C_NOT_MEASURED = " C was not measured in this run (eval.c_backend = 'none'): n/a."


def render_report(
    method: str,
    rows: Sequence[ResultRow],
    rounds: Sequence[RoundRecord],
    clients: Sequence[ClientRecord],
    sections: Mapping[str, str] | None = None,
    *,
    start: str = "source prefix",
) -> str:
    """The text of ``report.md``; ``sections`` maps extra titles to Markdown bodies.

    ``start`` names what each personalized prefix started from (its test loss is logged as
    ``source_test_loss``/``init_test_loss``): the source prefix, or a random one.
    """
    parts = [
        f"# fedpkt report: {method}",
        "## Automatic metrics (paper Table 2 layout)",
        "F1, 2-gram F1 and LCS F1 are x100 as in the paper; C is the mean C score. Each is "
        "averaged per persona, then over the personas of a Part (B: regular, C: few-shot). "
        "Stored params: one personalized prefix as a percentage of the backbone's parameters."
        + (_C_NOT_MEASURED if any(r.c_score is None for r in rows) else ""),
        render_table(rows) if rows else "No personalized personas were evaluated in this run.",
        "## Phase 1: source prefix",
        _phase1_section(rounds),
        f"## Test loss: personalized prefix vs the {start} alone",
        _loss_section(clients, start),
    ]
    dp = _dp_section(clients)
    if dp is not None:
        parts += ["## Differential privacy (DP-SGD ε per client)", dp]
    for title, body in (sections or {}).items():
        parts += [f"## {title}", body.strip()]
    parts += [
        "## Plots",
        "![phase-1 loss](plots/phase1_loss.png)\n\n![few-shot](plots/fewshot.png)\n\n"
        "![C distribution](plots/c_distribution.png)",
    ]
    return "\n\n".join(parts) + "\n"


# --- results.json / results.csv -----------------------------------------------------------


def write_results(
    run_dir: str | Path, rows: Sequence[ResultRow], config: Mapping[str, Any]
) -> None:
    """Write ``results.json`` and ``results.csv`` (the same rows, fields in RESULT_FIELDS order).

    Floats are written with ``repr`` precision in both files, so they agree exactly.
    """
    root = Path(run_dir)
    dicts = [asdict(r) for r in rows]
    atomic_write_json(root / "results.json", {"rows": dicts, "config": dict(config)})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(RESULT_FIELDS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(dicts)
    atomic_write_text(root / "results.csv", buffer.getvalue())


def _row_from_json(row: Any, index: int, where: str) -> ResultRow:
    at = f"{where} rows[{index}]"
    if not isinstance(row, dict):
        raise FedpktError(f"{at} is a {type(row).__name__}; expected an object")
    missing = [k for k in RESULT_FIELDS if k not in row and k not in _OPTIONAL_FIELDS]
    if missing:
        raise FedpktError(f"{at} lacks {', '.join(missing)}; expected keys {list(RESULT_FIELDS)}")
    extra = sorted(set(row) - set(RESULT_FIELDS))
    if extra:
        raise FedpktError(f"{at} has unexpected keys {extra}; expected {list(RESULT_FIELDS)}")
    if not isinstance(row["method"], str) or not row["method"]:
        raise FedpktError(f"{at}.method = {row['method']!r}; expected a non-empty string")
    if row["part"] not in PARTS:
        raise FedpktError(f"{at}.part = {row['part']!r}; expected 'B' or 'C'")
    n = row["n_personas"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise FedpktError(f"{at}.n_personas = {n!r}; expected an integer >= 1")
    values = {k: _number(row, k, at) for k in (*METRICS, "stored_params_pct") if k != "c_score"}
    values["c_score"] = None if row["c_score"] is None else _number(row, "c_score", at)
    if values["stored_params_pct"] < 0:
        raise FedpktError(f"{at}.stored_params_pct = {row['stored_params_pct']!r}; expected >= 0")
    epsilon = _number(row, "epsilon_max", at, optional=True)
    return ResultRow(
        method=row["method"], part=row["part"], n_personas=n, epsilon_max=epsilon, **values
    )


def read_results(run_dir: str | Path) -> Results:
    """Read and validate ``<run_dir>/results.json`` (or that file given directly)."""
    path = Path(run_dir)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise FedpktError(f"results file '{path}' does not exist; expected a run's results.json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise FedpktError(f"results file '{path}' is not valid JSON") from None
    if not isinstance(data, dict) or set(data) != {"rows", "config"}:
        got = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise FedpktError(f"results file '{path}' has {got}; expected keys ['config', 'rows']")
    if not isinstance(data["rows"], list):
        raise FedpktError(f"results file '{path}' rows is not a list")
    if not isinstance(data["config"], dict):
        raise FedpktError(f"results file '{path}' config is not an object")
    rows = [_row_from_json(row, i, f"results file '{path}'") for i, row in enumerate(data["rows"])]
    return Results(rows=rows, config=data["config"])


# --- plots --------------------------------------------------------------------------------


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _figure(width: float = 6.0, height: float = 4.0) -> Any:
    from matplotlib.figure import Figure  # Agg through Figure.savefig; no pyplot state

    return Figure(figsize=(width, height), layout="constrained")


def _integer_ticks() -> Any:
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_phase1_loss(rounds: Sequence[RoundRecord]) -> bytes:
    """PNG: mean client train loss and federated validation loss per phase-1 round."""
    fig = _figure()
    ax = fig.subplots()
    drawn = False
    for attr, label, style in (("train_loss", "train", "o-"), ("val_loss", "validation", "s--")):
        points = [(r.round, getattr(r, attr)) for r in rounds if getattr(r, attr) is not None]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, style, label=label, markersize=3)
            drawn = True
    if drawn:
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(_integer_ticks())
        ax.set_ylabel("loss")
        ax.legend()
        ax.grid(alpha=0.3)
    else:
        _empty(ax, "no phase-1 losses recorded")
    ax.set_title("Phase 1: source-prefix loss")
    return _png(fig)


_C_NOT_PLOTTED = "C not measured (eval.c_backend = 'none')"


def plot_fewshot(clients: Sequence[ClientRecord]) -> bytes:
    """PNG: F1 (x100) and C against the number of training dialogues of each persona.

    Dots are personas (by Part); the line joins the mean at each dialogue count.
    """
    fig = _figure(10.0, 4.0)
    axes = fig.subplots(1, 2)
    for ax, metric, scale in ((axes[0], "f1", 100.0), (axes[1], "c_score", 1.0)):
        title = _METRIC_TITLES[metric] + (" (x100)" if scale != 1.0 else "")
        if not clients or any(getattr(c, metric) is None for c in clients):
            _empty(ax, "no personalized personas" if not clients else _C_NOT_PLOTTED)
            ax.set_title(title)
            continue
        for part, marker in zip(PARTS, ("o", "^"), strict=True):
            group = [c for c in clients if c.part == part]
            if group:
                ax.scatter(
                    [c.n_train_dialogues for c in group],
                    [scale * getattr(c, metric) for c in group],
                    marker=marker,
                    alpha=0.5,
                    label=f"Part {part}",
                )
        counts = sorted({c.n_train_dialogues for c in clients})
        means = [
            scale * fmean(getattr(c, metric) for c in clients if c.n_train_dialogues == n)
            for n in counts
        ]
        ax.plot(counts, means, "k-", label="mean")
        ax.set_xlabel("training dialogues per persona")
        ax.xaxis.set_major_locator(_integer_ticks())
        ax.set_ylabel(title)
        ax.set_title(title)
        ax.legend()
        ax.grid(alpha=0.3)
    return _png(fig)


def plot_c_distribution(clients: Sequence[ClientRecord]) -> bytes:
    """PNG: histogram of the per-persona C score, one series per Part."""
    fig = _figure()
    ax = fig.subplots()
    if not clients:
        _empty(ax, "no personalized personas")
    elif any(c.c_score is None for c in clients):
        _empty(ax, _C_NOT_PLOTTED)
    else:
        values = [c.c_score for c in clients]
        lo, hi = min(-1.0, min(values)), max(1.0, max(values))
        present = [p for p in PARTS if any(c.part == p for c in clients)]
        groups = [[c.c_score for c in clients if c.part == p] for p in present]
        # Stacked, so that a bin holding personas of both Parts shows both.
        ax.hist(groups, bins=20, range=(lo, hi), stacked=True, label=[f"Part {p}" for p in present])
        ax.yaxis.set_major_locator(_integer_ticks())
        ax.set_xlabel("C score (mean over a persona's test responses)")
        ax.set_ylabel("personas")
        ax.legend()
    ax.set_title("Persona consistency: C over personas")
    return _png(fig)


# --- everything ---------------------------------------------------------------------------


def write_report(
    run_dir: str | Path,
    *,
    method: str,
    rounds: Iterable[RoundRecord | Mapping[str, Any]],
    clients: Iterable[ClientRecord | Mapping[str, Any]],
    stored_params_pct: float,
    config: Mapping[str, Any] | Any,
    sections: Mapping[str, str] | None = None,
) -> ReportFiles:
    """Write results.json/csv, report.md and the three plots into ``run_dir``.

    ``rounds``/``clients`` are records or raw ``metrics.jsonl`` events (dicts); ``config`` the
    resolved config as a dict (a pydantic model is dumped); ``sections`` extra report sections
    (title -> Markdown), e.g. the privacy audit or exposure tables.
    """
    if not isinstance(method, str) or not method.strip():
        raise FedpktError(f"report method name {method!r}; expected a non-empty string")
    if not isinstance(stored_params_pct, (int, float)) or not math.isfinite(stored_params_pct):
        raise FedpktError(f"stored_params_pct = {stored_params_pct!r}; expected a finite number")
    if hasattr(config, "model_dump"):
        config = config.model_dump(mode="json")
    if not isinstance(config, Mapping):
        raise FedpktError(f"report config is a {type(config).__name__}; expected a dict")
    root = Path(run_dir)
    round_records = _rounds(rounds)
    client_records = _clients(clients)
    rows = summarize(method, client_records, stored_params_pct)
    write_results(root, rows, config)
    images = {
        "phase1_loss": plot_phase1_loss(round_records),
        "fewshot": plot_fewshot(client_records),
        "c_distribution": plot_c_distribution(client_records),
    }
    paths = {
        name: atomic_write_bytes(root / "plots" / f"{name}.png", png)
        for name, png in images.items()
    }
    phase2 = config.get("phase2")
    random_start = isinstance(phase2, Mapping) and phase2.get("init") == "random"
    start = "random initial prefix" if random_start else "source prefix"
    text = render_report(method, rows, round_records, client_records, sections, start=start)
    report = atomic_write_text(root / "report.md", text)
    return ReportFiles(
        results_json=root / "results.json",
        results_csv=root / "results.csv",
        report_md=report,
        plots=paths,
    )


def append_section(run_dir: str | Path, title: str, body: str) -> Path:
    """Add a ``## title`` section to an existing ``report.md`` (atomic rewrite).

    For measurements made after the server wrote the report, e.g. canary exposure, which only
    the experimenter (who planted the canaries) can compute.
    """
    path = Path(run_dir) / "report.md"
    if not path.is_file():
        raise FedpktError(f"'{run_dir}' has no report.md to add the section '{title}' to")
    text = path.read_text(encoding="utf-8").rstrip("\n")
    return atomic_write_text(path, f"{text}\n\n## {title}\n\n{body.strip()}\n")
