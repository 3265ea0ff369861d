"""``fedpkt data prepare|stats`` (cli/data_cmd.py)."""

from __future__ import annotations

import json
import re

from typer.testing import CliRunner

from cli.data_cmd import app

runner = CliRunner()


def _rows(output: str) -> dict[str, list[int]]:
    """'Part A | 754 | 5471 | 774 | 774' table lines -> {'A': [754, 5471, 774, 774]}."""
    rows = {}
    for line in output.splitlines():
        match = re.search(r"Part ([ABC])\D+(\d+)\D+(\d+)\D+(\d+)\D+(\d+)", line)
        if match:
            rows[match.group(1)] = [int(match.group(i)) for i in range(2, 6)]
    return rows


def _one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


def test_stats_synthetic_paper_prints_table_1():
    result = runner.invoke(app, ["stats", "--source", "synthetic", "--scale", "paper"])
    assert result.exit_code == 0, result.output
    assert _rows(result.output) == {
        "A": [754, 5471, 774, 774],
        "B": [300, 2166, 304, 304],
        "C": [239, 538, 239, 239],
    }


def test_stats_tiny_prints_its_persona_counts():
    result = runner.invoke(app, ["stats", "--scale", "tiny"])
    assert result.exit_code == 0, result.output
    assert [row[0] for row in _rows(result.output).values()] == [8, 3, 3]


def test_prepare_writes_client_folders_and_manifest(tmp_path):
    out = tmp_path / "data"
    result = runner.invoke(
        app, ["prepare", "--scale", "tiny", "--canaries", "1", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert (out / "manifest.json").is_file()
    assert len(list((out / "clients").iterdir())) == 14
    assert (out / "clients" / "A-0000" / "canaries.json").is_file()


def test_prepare_personachat_from_a_parlai_file(tmp_path):
    """Persona 'ski' has 6 dialogues (regular, Part A with --part-b 0), 'chef' 3 (Part C)."""
    lines = []
    for persona, n in (("i like to ski.", 6), ("i am a chef.", 3)):
        for k in range(n):
            lines += [f"1 your persona: {persona}", f"2 hi {k}\thello {k}"]
    source = tmp_path / "train_self_original.txt"
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "data"
    args = ["prepare", "--source", "personachat", "--path", str(source), "--part-b", "0"]
    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert _rows(result.output) == {"A": [1, 4, 1, 1], "B": [0, 0, 0, 0], "C": [1, 1, 1, 1]}


def test_unknown_scale_is_one_line_exit_2(tmp_path):
    result = runner.invoke(app, ["prepare", "--scale", "huge", "--out", str(tmp_path / "o")])
    assert "unknown scale 'huge'" in _one_error_line(result)
    assert not (tmp_path / "o").exists()


def test_missing_path_is_one_line_exit_2(tmp_path):
    args = ["prepare", "--source", "personachat", "--path", str(tmp_path / "nope.txt")]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "o")])
    assert "does not exist" in _one_error_line(result)
    assert not (tmp_path / "o").exists()


def test_malformed_parlai_line_is_one_line_exit_2(tmp_path):
    source = tmp_path / "bad_self_original.txt"
    source.write_text("1 your persona: i ski.\n2 no tab here\n")
    args = ["prepare", "--source", "personachat", "--path", str(source)]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "o")])
    assert "line 2" in _one_error_line(result)
    assert not (tmp_path / "o").exists()


def test_out_that_is_a_file_is_one_line_exit_2(tmp_path):
    (tmp_path / "f").write_text("keep")
    result = runner.invoke(app, ["prepare", "--scale", "tiny", "--out", str(tmp_path / "f")])
    assert "is a file" in _one_error_line(result)
    assert (tmp_path / "f").read_text() == "keep"


def test_unknown_source_is_one_line_exit_2():
    result = runner.invoke(app, ["stats", "--source", "reddit"])
    assert "unknown --source 'reddit'" in _one_error_line(result)


def test_data_group_is_registered_in_the_fedpkt_cli():
    from cli.main import app as main_app

    result = runner.invoke(main_app, ["data", "--help"])
    assert result.exit_code == 0 and "prepare" in result.output and "stats" in result.output


def _variant_folder(root):
    """One folder, two variants: self_original has 'ski' 6 + 'chef' 3 dialogues, self_revised
    only 'pilot' 3; every file with its *_no_cands twin (which must not be read again)."""
    variants = {"self_original": (("i like to ski.", 6), ("i am a chef.", 3))}
    variants["self_revised"] = (("i fly planes.", 3),)
    for variant, personas in variants.items():
        lines = []
        for persona, n in personas:
            for k in range(n):
                lines += [f"1 your persona: {persona}", f"2 hi {k}\thello {k}\t\tx|hello {k}"]
        text = "\n".join(lines) + "\n"
        (root / f"train_{variant}.txt").write_text(text)
        no_cands = "".join("\t".join(line.split("\t")[:2]) + "\n" for line in text.splitlines())
        (root / f"train_{variant}_no_cands.txt").write_text(no_cands)
    return root


def test_stats_reads_the_chosen_variant_of_a_folder_once(tmp_path):
    folder = _variant_folder(tmp_path)
    args = ["stats", "--source", "personachat", "--path", str(folder), "--part-b", "0"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert _rows(result.output) == {"A": [1, 4, 1, 1], "B": [0, 0, 0, 0], "C": [1, 1, 1, 1]}
    result = runner.invoke(app, [*args, "--variant", "self_revised"])
    assert result.exit_code == 0, result.output
    assert _rows(result.output)["C"] == [1, 1, 1, 1]
    assert "(self_revised)" in result.output


def test_prepare_records_the_variant_in_the_manifest(tmp_path):
    (tmp_path / "pc").mkdir()
    folder = _variant_folder(tmp_path / "pc")
    out = tmp_path / "data"
    args = ["prepare", "--source", "personachat", "--path", str(folder), "--out", str(out)]
    result = runner.invoke(app, [*args, "--variant", "self_revised"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["variant"], len(manifest["clients"])) == ("self_revised", 1)


def test_unknown_variant_is_one_line_exit_2(tmp_path):
    folder = _variant_folder(tmp_path)
    args = ["stats", "--source", "personachat", "--path", str(folder), "--variant", "other"]
    assert "variant 'other' is unknown" in _one_error_line(runner.invoke(app, args))


def test_stats_reads_a_hub_dataset_at_a_revision_and_folder(tmp_path, monkeypatch):
    """--revision/--data-dir reach datasets.load_dataset (the hub stands in as a local parquet
    conversion with one persona of 6 dialogues in 'full', another one in 'sample')."""
    import datasets

    for folder, persona, n in (("full/train", "I ski.", 6), ("sample/train", "I am not read.", 3)):
        rows = [
            {"personality": [persona], "candidates": ["x", f"reply {k}"], "history": [f"hi {k}"],
             "conv_id": k, "utterance_idx": 0}
            for k in range(n)
        ]  # fmt: skip
        (tmp_path / folder).mkdir(parents=True)
        datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / folder / "0000.parquet"))
    asked = []

    def hub(name, revision=None, **kwargs):
        asked.append((name, revision, kwargs.get("data_dir")))
        return real(str(tmp_path), cache_dir=str(tmp_path / "cache"), **kwargs)

    real = datasets.load_dataset
    monkeypatch.setattr(datasets, "load_dataset", hub)
    args = ["stats", "--source", "personachat", "--path", "bavard/personachat_truecased"]
    args += ["--revision", "refs/convert/parquet", "--data-dir", "full", "--part-b", "0"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert asked == [("bavard/personachat_truecased", "refs/convert/parquet", "full")]
    assert _rows(result.output)["A"] == [1, 4, 1, 1]
