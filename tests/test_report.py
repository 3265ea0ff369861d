"""Specification of fedpkt.report: rows from hand-made records, the files, and their validation."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from fedpkt.errors import FedpktError
from fedpkt.report import (
    RESULT_FIELDS,
    ClientRecord,
    RoundRecord,
    format_pct,
    read_metrics,
    read_results,
    render_table,
    summarize,
    write_report,
)

METHOD = "PersonaPKT (PPReptile)"


def client(cid: str, part: str, f1: float, c: float, n: int = 5, **extra: object) -> dict:
    """A phase-2 client event as the server logs it (Flower metrics arrive as floats)."""
    event = {
        "event": "client",
        "client_id": cid,
        "part": part,
        "n_train_dialogues": float(n),
        "f1": f1,
        "f1_2gram": f1 / 4,
        "lcs_f1": f1 / 2,
        "c_score": c,
        "test_loss": 2.0,
        "init_test_loss": 3.0,
        "epochs": 3.0,
    }
    event.update(extra)
    return event


CLIENTS = [
    client("b1", "B", 0.10, 0.5, n=8),
    client("b2", "B", 0.20, -0.25, n=12, test_loss=1.0),
    client("b3", "B", 0.30, 1.0, n=8),
    client("c1", "C", 0.40, 0.0, n=2),
    client("c2", "C", 0.05, 0.5, n=4, init_test_loss=4.0),
]
ROUNDS = [
    {"event": "round", "round": r, "sampled": ["a", "b", "c", "d"], "train_loss": 3.0 - r / 10,
     "val_loss": 3.5 - r / 10, "failures": int(r == 2), "seconds": 2.0}
    for r in (1, 2, 3)
]  # fmt: skip


def test_rows_are_means_over_personas_per_part() -> None:
    """Part B: f1 (0.1+0.2+0.3)/3 = 0.2, 2-gram F1 = 0.2/4 = 0.05, LCS F1 = 0.2/2 = 0.1,
    C (0.5−0.25+1)/3 = 1.25/3. Part C: f1 (0.4+0.05)/2 = 0.225, C (0+0.5)/2 = 0.25."""
    b, c = summarize(METHOD, CLIENTS, 0.05)
    assert (b.part, b.n_personas, c.part, c.n_personas) == ("B", 3, "C", 2)
    assert b.f1 == pytest.approx(0.2)
    assert b.f1_2gram == pytest.approx(0.05)
    assert b.lcs_f1 == pytest.approx(0.1)
    assert b.c_score == pytest.approx(1.25 / 3)
    assert c.f1 == pytest.approx(0.225)
    assert c.c_score == pytest.approx(0.25)
    assert b.stored_params_pct == c.stored_params_pct == 0.05


def test_part_without_personas_has_no_row() -> None:
    rows = summarize(METHOD, CLIENTS[:3], 0.05)
    assert [r.part for r in rows] == ["B"]


def test_rerun_event_of_a_client_supersedes_the_first() -> None:
    """b1 logged twice: only the last (f1=0.4) counts -> B mean (0.4+0.2+0.3)/3 = 0.3."""
    rows = summarize(METHOD, [*CLIENTS, client("b1", "B", 0.40, 0.5)], 0.05)
    assert rows[0].n_personas == 3
    assert rows[0].f1 == pytest.approx(0.3)


def test_client_event_parsing_and_aliases() -> None:
    record = ClientRecord.from_event(client("c2", "C", 0.05, 0.5, n=4, epsilon=7.5))
    assert record.n_train_dialogues == 4 and isinstance(record.n_train_dialogues, int)
    assert record.source_test_loss == 3.0  # logged as init_test_loss
    assert record.epsilon == 7.5


def test_bad_client_event_is_one_line_naming_the_field() -> None:
    with pytest.raises(FedpktError, match="client 'b1' event field 'f1' = 'high'"):
        ClientRecord.from_event({**client("b1", "B", 0.1, 0.5), "f1": "high"})
    with pytest.raises(FedpktError, match="field 'part' = 'A'; expected 'B' or 'C'"):
        ClientRecord.from_event(client("a1", "A", 0.1, 0.5))
    with pytest.raises(FedpktError, match=r"'n_train_dialogues' = 2.5; expected a whole number"):
        ClientRecord.from_event(client("b1", "B", 0.1, 0.5, n_train_dialogues=2.5))


def test_round_event_counts_sampled_lists() -> None:
    record = RoundRecord.from_event(ROUNDS[1])
    assert (record.round, record.sampled, record.failures) == (2, 4, 1)
    assert record.train_loss == pytest.approx(2.8)


def test_table_has_paper_layout_with_f1_x100() -> None:
    """Part B F1 0.2 -> '20.00'; Part C C score 0.25 -> '0.250'."""
    table = render_table(summarize(METHOD, CLIENTS, 0.05))
    header, rule, line = table.splitlines()
    assert header.startswith("| Method | F1 B | F1 C | 2-gram F1 B | 2-gram F1 C | LCS F1 B")
    assert rule.count("---") == header.count("|") - 1
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[:3] == [METHOD, "20.00", "22.50"]
    assert cells[8] == "0.250"
    assert cells[-1] == "0.05%"


def test_json_and_csv_agree(tmp_path: Path) -> None:
    write_report(tmp_path, method=METHOD, rounds=ROUNDS, clients=CLIENTS,
                 stored_params_pct=0.05, config={"seed": 3})  # fmt: skip
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["config"] == {"seed": 3}
    with (tmp_path / "results.csv").open() as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == RESULT_FIELDS
        csv_rows = list(reader)
    assert len(csv_rows) == len(data["rows"]) == 2
    for from_csv, from_json in zip(csv_rows, data["rows"], strict=True):
        for key in RESULT_FIELDS:
            value = from_json[key]
            if value is None:  # optional fields (epsilon_max without DP): empty in CSV
                assert from_csv[key] == "", key
                continue
            expected = str(value) if isinstance(value, str) else value
            got = from_csv[key] if isinstance(value, str) else type(value)(from_csv[key])
            assert got == expected, key


def test_report_files_exist_and_plots_are_valid_pngs(tmp_path: Path) -> None:
    files = write_report(tmp_path, method=METHOD, rounds=ROUNDS, clients=CLIENTS,
                         stored_params_pct=0.05, config={})  # fmt: skip
    assert set(files.plots) == {"phase1_loss", "fewshot", "c_distribution"}
    for path in files.plots.values():
        assert path.parent == tmp_path / "plots"
        with Image.open(path) as image:
            assert image.format == "PNG"
            image.verify()
        with Image.open(path) as image:
            assert image.size[0] >= 400 and image.size[1] >= 300


def test_report_md_sections(tmp_path: Path) -> None:
    """Loss table for Part C: source (3+4)/2 = 3.5, personalized 2.0 -> change −1.5."""
    files = write_report(
        tmp_path,
        method=METHOD,
        rounds=ROUNDS,
        clients=CLIENTS,
        stored_params_pct=0.05,
        config={},
        sections={"Privacy audit": "| verdict |\n|---|\n| PASS |"},
    )
    text = files.report_md.read_text()
    assert text.startswith(f"# fedpkt report: {METHOD}\n")
    assert "| C | 2 | 3.5000 | 2.0000 | -1.5000 |" in text
    assert "| 3 | 2.9000 | 2.7000 | 3.2000 | 3.2000 (round 3) | 4.0 | 1 | 6.0 |" in text
    assert "## Privacy audit\n\n| verdict |" in text
    assert "Differential privacy" not in text  # no client reported an epsilon


def test_dp_section_appears_when_clients_report_epsilon(tmp_path: Path) -> None:
    """Part B epsilons 2 and 4 -> mean 3.000, max 4.000."""
    clients = [client("b1", "B", 0.1, 0.1, epsilon=2.0), client("b2", "B", 0.1, 0.1, epsilon=4.0)]
    files = write_report(tmp_path, method=METHOD, rounds=[], clients=clients,
                         stored_params_pct=0.05, config={})  # fmt: skip
    text = files.report_md.read_text()
    assert "| B | 2 | 3.000 | 4.000 |" in text
    assert "No phase-1 rounds were recorded" in text


def test_empty_run_still_writes_every_file(tmp_path: Path) -> None:
    files = write_report(tmp_path, method=METHOD, rounds=[], clients=[],
                         stored_params_pct=0.05, config={})  # fmt: skip
    assert read_results(tmp_path).rows == []
    assert all(p.stat().st_size > 0 for p in files.plots.values())


def test_read_results_round_trips(tmp_path: Path) -> None:
    write_report(tmp_path, method=METHOD, rounds=ROUNDS, clients=CLIENTS,
                 stored_params_pct=0.05, config={"seed": 1})  # fmt: skip
    results = read_results(tmp_path)
    assert results.rows == summarize(METHOD, CLIENTS, 0.05)
    assert results.config == {"seed": 1}


def _write(tmp_path: Path, data: object) -> Path:
    (tmp_path / "results.json").write_text(json.dumps(data))
    return tmp_path


GOOD_ROW = {"method": "m", "part": "B", "f1": 0.1, "f1_2gram": 0.02, "lcs_f1": 0.1,
            "c_score": 0.2, "n_personas": 3, "stored_params_pct": 0.05}  # fmt: skip


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([GOOD_ROW], "expected keys"),
        ({"rows": [GOOD_ROW]}, "expected keys"),
        ({"rows": GOOD_ROW, "config": {}}, "rows is not a list"),
        ({"rows": [], "config": []}, "config is not an object"),
        ({"rows": [{**GOOD_ROW, "part": "A"}], "config": {}}, r"rows\[0\].part = 'A'"),
        ({"rows": [{**GOOD_ROW, "f1": "x"}], "config": {}}, "field 'f1' = 'x'"),
        ({"rows": [{**GOOD_ROW, "n_personas": 0}], "config": {}}, "n_personas = 0"),
        ({"rows": [{**GOOD_ROW, "extra": 1}], "config": {}}, r"unexpected keys \['extra'\]"),
        ({"rows": [{k: v for k, v in GOOD_ROW.items() if k != "f1"}], "config": {}}, "lacks f1"),
    ],
)
def test_bad_results_json_is_rejected(tmp_path: Path, data: object, message: str) -> None:
    with pytest.raises(FedpktError, match=message) as info:
        read_results(_write(tmp_path, data))
    assert "\n" not in str(info.value)


def test_results_json_that_is_not_json_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(FedpktError, match="is not valid JSON"):
        read_results(tmp_path)
    with pytest.raises(FedpktError, match="does not exist"):
        read_results(tmp_path / "nowhere")


def test_read_metrics_picks_round_and_client_events(tmp_path: Path) -> None:
    lines = [*ROUNDS, {"event": "done"}, *CLIENTS]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in lines))
    rounds, clients = read_metrics(path)
    assert [r.round for r in rounds] == [1, 2, 3]
    assert [c.client_id for c in clients] == ["b1", "b2", "b3", "c1", "c2"]


def test_loss_section_names_a_random_start(tmp_path: Path) -> None:
    """With phase2.init = "random" the baseline loss is the random prefix's, and says so."""
    files = write_report(tmp_path, method=METHOD, rounds=[], clients=CLIENTS,
                         stored_params_pct=0.05, config={"phase2": {"init": "random"}})  # fmt: skip
    text = files.report_md.read_text()
    assert "## Test loss: personalized prefix vs the random initial prefix alone" in text
    assert "| Part | Personas | Random initial prefix alone | Personalized | Change |" in text


def test_stored_shares_never_print_in_exponent_notation() -> None:
    assert [format_pct(v) for v in (0.0796, 0.796, 100.0, 2000.0, 123456.0)] == [
        "0.0796%",
        "0.796%",
        "100%",
        "2,000%",
        "123,456%",
    ]


NO_C = [{k: v for k, v in c.items() if k != "c_score"} for c in CLIENTS]


def test_c_not_measured_is_none_in_rows_null_in_json_and_na_in_tables(tmp_path: Path) -> None:
    """eval.c_backend = "none": client events carry no c_score. Rows have c_score None (never
    0), results.json null, results.csv an empty cell, report.md "n/a"; plots still written."""
    files = write_report(
        tmp_path, method=METHOD, rounds=ROUNDS, clients=NO_C, stored_params_pct=0.05, config={}
    )
    b, c = summarize(METHOD, NO_C, 0.05)
    assert b.c_score is None and c.c_score is None and b.f1 == pytest.approx(0.2)
    rows = json.loads(files.results_json.read_text())["rows"]
    assert [r["c_score"] for r in rows] == [None, None]
    with files.results_csv.open() as handle:
        assert [r["c_score"] for r in csv.DictReader(handle)] == ["", ""]
    assert [r.c_score for r in read_results(tmp_path).rows] == [None, None]
    table = render_table(read_results(tmp_path).rows)
    assert table.splitlines()[2].split(" | ")[7:9] == ["n/a", "n/a"]
    report = files.report_md.read_text()
    assert "C was not measured in this run (eval.c_backend = 'none')" in report
    for path in files.plots.values():
        Image.open(path).verify()


def test_c_measured_for_some_personas_only_is_an_error() -> None:
    with pytest.raises(FedpktError, match="measured for some personas and not for others"):
        summarize(METHOD, [*NO_C[:2], CLIENTS[2]], 0.05)
