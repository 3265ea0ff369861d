"""Smaller faults (issue 16 §8), each through the real CLI: one line, exit code 2, nothing
written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fedpkt.data.personachat import load_parlai
from fedpkt.errors import FedpktError
from fedpkt.personal import check_export_target


def _cli(*args: str, cwd: Path) -> tuple[int, list[str]]:
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done.returncode, (done.stdout + done.stderr).strip().splitlines()


def test_preparing_zero_clients_is_an_error(tmp_path: Path) -> None:
    """Two personas with one dialogue each: none has the 3 a client needs."""
    corpus = tmp_path / "tiny_self_original.txt"
    corpus.write_text(
        "1 your persona: i like cats.\n2 hi\thello there\n1 your persona: i like dogs.\n2 hey\tyo\n"
    )
    args = ["data", "prepare", "--out", "out", "--source", "personachat", "--path", str(corpus)]
    code, lines = _cli(*args, cwd=tmp_path)
    assert code == 2
    assert len(lines) == 1 and "no persona of personachat has enough dialogues" in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["-1", "1.5", "nan", "inf"])
def test_part_b_must_be_a_count_or_a_share(value: str, tmp_path: Path) -> None:
    """0 is a count (no Part B: the help says so now, as fedpkt.data.split always had it)."""
    code, lines = _cli("data", "prepare", "--out", "out", "--part-b", value, cwd=tmp_path)
    assert code == 2
    assert len(lines) == 1 and "--part-b" in lines[0] and "share in (0, 1)" in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_export_into_a_non_empty_directory_needs_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "adapter"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, lines = _cli("export", "no-run", "--persona", "B-0000", "--out", str(out), cwd=tmp_path)
    assert code == 2
    assert len(lines) == 1 and "is not empty" in lines[0] and "--overwrite" in lines[0]
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert check_export_target(out, overwrite=True) == out


def test_parlai_errors_quote_the_line_a_text_editor_shows(tmp_path: Path) -> None:
    """A dialogue holding U+2028 (a line separator to str.splitlines) does not shift the
    number of the bad line 4 past the end of the 4-line file."""
    file = tmp_path / "x_self_original.txt"
    file.write_text(
        "1 your persona: i like tea.\n"
        "2 hi\u2028there\thello\n"
        "3 how are you?\tfine\x0cthanks\n"
        "4 this line has no tab\n"
    )
    with pytest.raises(FedpktError, match=r"line 4: expected 'partner text<TAB>persona reply'"):
        load_parlai(file)


def test_a_usage_error_is_one_line_with_the_help_hint(tmp_path: Path) -> None:
    code, lines = _cli("simulate", "--no-such-flag", cwd=tmp_path)
    assert code == 2
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: No such option '--no-such-flag'")
    assert lines[0].endswith("simulate --help`)")
