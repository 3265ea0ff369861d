"""Client partitions on disk: round trip, digests, canaries, atomicity (fedpkt.data.partition)."""

from __future__ import annotations

import hashlib
import json

import pytest

from fedpkt.config import DataConfig
from fedpkt.data.partition import client_dir, load_client, load_manifest, prepare_partitions
from fedpkt.errors import FedpktError


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("prep") / "data"
    split = prepare_partitions(out, DataConfig(scale="tiny", canaries=2), 7)
    return out, split


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_manifest_lists_every_client_with_part_counts_source_and_seed(prepared):
    out, split = prepared
    manifest = load_manifest(out)
    assert (manifest["source"], manifest["scale"], manifest["seed"]) == ("synthetic", "tiny", 7)
    ids = [c["client_id"] for c in manifest["clients"]]
    assert ids == [f"A-{i:04d}" for i in range(8)] + ["B-0000", "B-0001", "B-0002"] + [
        "C-0000",
        "C-0001",
        "C-0002",
    ]
    assert [c["counts"] for c in manifest["clients"]] == [c.meta["counts"] for c in split.clients]


def test_manifest_digests_match_the_files_on_disk(prepared):
    out, _ = prepared
    for entry in load_manifest(out)["clients"]:
        folder = out / "clients" / entry["client_id"]
        assert {name: _sha(folder / name) for name in entry["files"]} == entry["files"]


def test_manifest_counts_training_examples_as_persona_turns(prepared):
    out, split = prepared
    entry = load_manifest(out)["clients"][0]
    train = split.clients[0].splits["train"]
    assert entry["num_train_examples"] == sum(
        u.speaker == "persona" for d in train for u in d.turns
    )


def test_each_client_folder_holds_only_its_own_files(prepared):
    out, _ = prepared
    names = {p.name for p in (out / "clients" / "B-0000").iterdir()}
    assert names == {"persona.json", "train.jsonl", "valid.jsonl", "test.jsonl", "meta.json"}
    assert (out / "clients" / "A-0000" / "canaries.json").is_file()


def test_load_client_round_trips_what_the_split_produced(prepared):
    out, split = prepared
    for expected in split.clients:
        loaded = load_client(out, expected.meta["client_id"])
        assert loaded.part == expected.part
        assert loaded.persona.sentences == expected.persona.sentences
        assert loaded.persona.facts == expected.persona.facts
        assert loaded.splits == expected.splits


def test_canaries_are_unique_recorded_only_in_part_a_and_planted_in_training_replies(prepared):
    out, _ = prepared
    texts = []
    for entry in load_manifest(out)["clients"]:
        client = load_client(out, entry["client_id"])
        if entry["part"] != "A":
            assert "canaries" not in client.meta
            continue
        assert len(client.meta["canaries"]) == 2
        train = {d.dialogue_id: d for d in client.splits["train"]}
        for record in client.meta["canaries"]:
            turn = train[record["dialogue_id"]].turns[record["turn"]]
            assert turn.speaker == "persona" and turn.text.endswith(record["text"])
            texts.append(record["text"])
    assert len(texts) == len(set(texts)) == 16
    manifest_text = (out / "manifest.json").read_text()
    assert not any(t in manifest_text for t in texts)


def test_a_modified_file_fails_the_digest_check(tmp_path):
    out = tmp_path / "data"
    prepare_partitions(out, DataConfig(scale="tiny"), 1)
    train = out / "clients" / "A-0001" / "train.jsonl"
    train.write_text(train.read_text().replace("i ", "u ", 1))
    with pytest.raises(FedpktError, match=r"client A-0001 file train.jsonl has sha256"):
        load_client(out, "A-0001")


def test_a_missing_file_or_malformed_meta_is_a_one_line_error(tmp_path):
    out = tmp_path / "data"
    prepare_partitions(out, DataConfig(scale="tiny"), 1)
    (out / "clients" / "A-0002" / "valid.jsonl").unlink()
    with pytest.raises(FedpktError, match=r"file valid\.jsonl is missing"):
        load_client(out, "A-0002")
    (out / "clients" / "A-0003" / "meta.json").write_text("{not json")
    with pytest.raises(FedpktError, match="not valid JSON"):
        load_client(out, "A-0003")
    (out / "clients" / "A-0004" / "meta.json").write_text(json.dumps({"client_id": "A-0004"}))
    with pytest.raises(FedpktError, match=r"meta\.json is malformed"):
        load_client(out, "A-0004")


def test_client_ids_cannot_escape_the_clients_folder(tmp_path):
    with pytest.raises(FedpktError, match=r"client id '\.\./x' is invalid"):
        client_dir(tmp_path, "../x")


def test_missing_manifest_is_a_one_line_error(tmp_path):
    with pytest.raises(FedpktError, match=r"manifest .* is missing"):
        load_manifest(tmp_path)


def test_a_failing_prepare_leaves_nothing_behind(tmp_path):
    """Too many canaries fails after the split: no output dir and no temp dir remain."""
    with pytest.raises(FedpktError, match="canaries=1000 exceeds"):
        prepare_partitions(tmp_path / "data", DataConfig(scale="tiny", canaries=1000), 0)
    assert list(tmp_path.iterdir()) == []


def test_out_that_is_a_file_or_a_non_empty_dir_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(FedpktError, match="is a file"):
        prepare_partitions(tmp_path / "f", DataConfig(scale="tiny"), 0)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "keep").write_text("x")
    with pytest.raises(FedpktError, match="not empty"):
        prepare_partitions(tmp_path / "d", DataConfig(scale="tiny"), 0)
    assert (tmp_path / "d" / "keep").read_text() == "x"


def test_overwrite_replaces_an_existing_output(tmp_path):
    out = tmp_path / "data"
    prepare_partitions(out, DataConfig(scale="tiny"), 1)
    prepare_partitions(out, DataConfig(scale="tiny"), 2, overwrite=True)
    assert load_manifest(out)["seed"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_data_files_are_deterministic_and_persona_digest_is_salted(tmp_path):
    first, second = tmp_path / "one", tmp_path / "two"
    prepare_partitions(first, DataConfig(scale="tiny"), 3)
    prepare_partitions(second, DataConfig(scale="tiny"), 3)
    a, b = first / "clients" / "A-0000", second / "clients" / "A-0000"
    assert (a / "train.jsonl").read_bytes() == (b / "train.jsonl").read_bytes()
    assert _sha(a / "persona.json") != _sha(b / "persona.json")
