"""The cache root and build-once folders (fedpkt.cache)."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from fedpkt.cache import CACHE_ENV, cache_dir, cache_path, materialize
from fedpkt.errors import FedpktError


def _write_marker(out: Path) -> None:
    (out / "done.txt").write_text("complete", encoding="utf-8")


def test_cache_dir_follows_the_environment_variable(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    assert (tmp_path / "mine").is_dir()


def test_cache_dir_defaults_to_home_cache_fedpkt(monkeypatch, tmp_path):
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "fedpkt"


def test_cache_path_joins_under_the_root_without_creating(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    assert cache_path("backbones", "x") == tmp_path / "backbones" / "x"
    assert not (tmp_path / "backbones").exists()


def test_unwritable_cache_dir_is_a_one_line_error(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder", encoding="utf-8")
    monkeypatch.setenv(CACHE_ENV, str(blocker / "cache"))
    with pytest.raises(FedpktError, match="cannot be created") as err:
        cache_dir()
    assert "\n" not in str(err.value)


def test_materialize_builds_into_place_and_then_reuses(tmp_path):
    calls: list[Path] = []

    def build(out: Path) -> None:
        calls.append(out)
        _write_marker(out)

    target = tmp_path / "thing"
    assert materialize(target, build) is True
    assert materialize(target, build) is False
    assert len(calls) == 1
    assert calls[0] != target  # built elsewhere, then renamed
    assert (target / "done.txt").read_text(encoding="utf-8") == "complete"


def test_failed_build_leaves_no_target_and_no_temporaries(tmp_path):
    def broken(out: Path) -> None:
        (out / "half.txt").write_text("half", encoding="utf-8")
        raise RuntimeError("killed mid-build")

    with pytest.raises(RuntimeError):
        materialize(tmp_path / "thing", broken)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def test_force_replaces_the_folder_with_a_fresh_build(tmp_path):
    target = tmp_path / "thing"
    materialize(target, _write_marker)
    (target / "stale.txt").write_text("old", encoding="utf-8")
    assert materialize(target, _write_marker, force=True) is True
    assert sorted(p.name for p in target.iterdir()) == ["done.txt"]


def test_leftovers_of_a_killed_build_are_removed(tmp_path):
    leftover = tmp_path / ".thing.tmp-abc123"
    leftover.mkdir()
    materialize(tmp_path / "thing", _write_marker)
    assert not leftover.exists()


def _slow_counted_build(target: str, log: str) -> None:
    """Run in a child process: build slowly, logging each real build as one line."""

    def build(out: Path) -> None:
        with open(log, "a", encoding="utf-8") as handle:
            handle.write("built\n")
        time.sleep(0.5)
        _write_marker(out)

    materialize(Path(target), build)
    assert (Path(target) / "done.txt").is_file()  # never a half-built folder


def test_concurrent_processes_build_exactly_once(tmp_path):
    """Three processes ask at once; the lock makes two of them wait and reuse: 1 build line."""
    ctx = multiprocessing.get_context("spawn")
    target, log = tmp_path / "thing", tmp_path / "builds.log"
    procs = [
        ctx.Process(target=_slow_counted_build, args=(str(target), str(log))) for _ in range(3)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=60)
    assert [proc.exitcode for proc in procs] == [0, 0, 0]
    assert log.read_text(encoding="utf-8").splitlines() == ["built"]
