"""Real PERSONA-CHAT loaders on fixture files the tests write (fedpkt.data.personachat)."""

from __future__ import annotations

import json
import re

import pytest

from fedpkt.config import load_config
from fedpkt.data.personachat import load_parlai, load_personachat, load_personachat_hf
from fedpkt.errors import FedpktError

# Two episodes of one persona (sentence order and spacing differ) and one of another; the
# first line of episode 3 starts with __SILENCE__ (the persona speaks first).
SELF_ORIGINAL = (
    "1 your persona: i like to ski.\n"
    "2 your persona: i have a dog .\n"
    "3 hi , how are you ?\ti am great , just back from skiing .\t\t"
    "no|i am great , just back from skiing .\n"
    "4 cool ! do you have pets ?\tyes , a dog .\t\tyes , a dog .|no\n"
    "1 your persona: i have a dog.\n"
    "2 your persona: I like to ski.\n"
    "3 hello !\they there .\t\ta|hey there .\n"
    "1 your persona: i am a chef.\n"
    "2 __SILENCE__\ti cook pasta all day .\t\tx|i cook pasta all day .\n"
    "3 sounds tasty .\tit is !\n"
)
SELF_REVISED = "1 your persona: skiing is my passion.\n2 hi\thello\n"
BOTH_ORIGINAL = "1 your persona: i like to ski.\n2 partner's persona: i am a chef.\n3 hi\thello\n"


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_parlai_groups_episodes_by_normalised_persona(tmp_path):
    corpus = load_parlai(_write(tmp_path, "train_self_original.txt", SELF_ORIGINAL))
    assert len(corpus.dialogues) == 3
    assert len(corpus.personas) == 2
    first, second, third = corpus.dialogues
    assert first.persona_id == second.persona_id != third.persona_id
    assert corpus.personas[first.persona_id].sentences == ["i like to ski.", "i have a dog ."]


def test_parlai_turns_alternate_partner_then_persona(tmp_path):
    corpus = load_parlai(_write(tmp_path, "train_self_original.txt", SELF_ORIGINAL))
    turns = corpus.dialogues[0].turns
    assert [(u.speaker, u.text) for u in turns] == [
        ("partner", "hi , how are you ?"),
        ("persona", "i am great , just back from skiing ."),
        ("partner", "cool ! do you have pets ?"),
        ("persona", "yes , a dog ."),
    ]


def test_parlai_silence_means_the_persona_opens(tmp_path):
    corpus = load_parlai(_write(tmp_path, "train_self_original.txt", SELF_ORIGINAL))
    speakers = [u.speaker for u in corpus.dialogues[2].turns]
    assert speakers == ["persona", "partner", "persona"]


def test_parlai_directory_reads_only_the_chosen_variant(tmp_path):
    _write(tmp_path, "train_self_original.txt", SELF_ORIGINAL)
    _write(tmp_path, "valid_self_revised.txt", SELF_REVISED)
    assert len(load_parlai(tmp_path).dialogues) == 3
    revised = load_parlai(tmp_path, variant="self_revised")
    assert [p.sentences for p in revised.personas.values()] == [["skiing is my passion."]]


def test_parlai_both_files_skip_the_partner_persona(tmp_path):
    corpus = load_parlai(_write(tmp_path, "train_both_original.txt", BOTH_ORIGINAL))
    assert [p.sentences for p in corpus.personas.values()] == [["i like to ski."]]


def test_parlai_malformed_line_is_a_one_line_error_naming_the_line(tmp_path):
    bad = _write(tmp_path, "x_self_original.txt", "1 your persona: i ski.\n2 hi there no tab\n")
    with pytest.raises(FedpktError, match=r"line 2: expected 'partner text<TAB>persona reply'"):
        load_parlai(bad)
    unnumbered = _write(tmp_path, "y_self_original.txt", "your persona: i ski.\n")
    with pytest.raises(FedpktError, match="line 1"):
        load_parlai(unnumbered)


def test_parlai_episode_without_persona_lines_is_an_error(tmp_path):
    with pytest.raises(FedpktError, match="no 'your persona:' lines"):
        load_parlai(_write(tmp_path, "z.txt", "1 hi\thello\n"))


def test_missing_path_is_a_one_line_error(tmp_path):
    with pytest.raises(FedpktError, match="does not exist"):
        load_personachat(str(tmp_path / "missing.txt"))


# bavard/personachat_truecased rows: one per persona reply, gold reply last in candidates.
HF_ROWS = [
    {
        "personality": ["I like to ski."],
        "candidates": ["no", "Hi!"],
        "history": ["Hello."],
        "conv_id": 0,
        "utterance_idx": 0,
    },
    {
        "personality": ["I like to ski."],
        "candidates": ["no", "Yes, daily."],
        "history": ["Hello.", "Hi!", "Do you ski?"],
        "conv_id": 0,
        "utterance_idx": 1,
    },
    {
        "personality": ["i like to ski"],
        "candidates": ["Fine."],
        "history": ["__ SILENCE __"],
        "conv_id": 1,
        "utterance_idx": 0,
    },
    {
        "personality": ["I am a chef."],
        "candidates": ["x", "Pasta."],
        "history": ["What do you cook?"],
        "conv_id": 2,
        "utterance_idx": 0,
    },
]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_hf_rows_rebuild_whole_dialogues_from_the_last_utterance(tmp_path):
    data = _write_jsonl(tmp_path / "train.jsonl", HF_ROWS)
    corpus = load_personachat_hf("json", data_files=str(data), cache_dir=str(tmp_path / "c"))
    assert [d.dialogue_id for d in corpus.dialogues] == ["train-0", "train-1", "train-2"]
    assert [(u.speaker, u.text) for u in corpus.dialogues[0].turns] == [
        ("partner", "Hello."),
        ("persona", "Hi!"),
        ("partner", "Do you ski?"),
        ("persona", "Yes, daily."),
    ]
    assert [u.speaker for u in corpus.dialogues[1].turns] == ["persona"]  # silence dropped


def test_hf_personas_are_grouped_like_parlai(tmp_path):
    data = _write_jsonl(tmp_path / "train.jsonl", HF_ROWS)
    corpus = load_personachat(str(data), cache_dir=str(tmp_path / "c"))  # routed by suffix
    ids = [d.persona_id for d in corpus.dialogues]
    assert ids[0] == ids[1] != ids[2] and len(corpus.personas) == 2


def test_hf_dataset_directory_saved_to_disk_loads_through_the_same_rows(tmp_path):
    import datasets

    datasets.DatasetDict({"validation": datasets.Dataset.from_list(HF_ROWS)}).save_to_disk(
        str(tmp_path / "pc")
    )
    corpus = load_personachat(str(tmp_path / "pc"))
    assert [d.dialogue_id for d in corpus.dialogues] == [
        "validation-0",
        "validation-1",
        "validation-2",
    ]


def test_hf_rows_missing_a_field_are_a_one_line_error(tmp_path):
    rows = [{k: v for k, v in row.items() if k != "candidates"} for row in HF_ROWS]
    data = _write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(FedpktError, match="lacks field"):
        load_personachat_hf("json", data_files=str(data), cache_dir=str(tmp_path / "c"))


def test_unreachable_hub_id_is_a_one_line_error(tmp_path, monkeypatch):
    """Offline mode stands in for a machine without the hub (no network wait in the test)."""
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FedpktError, match="cannot load Hugging Face dataset 'nobody/none'") as err:
        load_personachat("nobody/none", cache_dir=str(tmp_path / "c"))
    assert "\n" not in str(err.value)


# --- PERSONA-CHAT / ConvAI2 folders as distributed ------------------------------------------


def _no_cands(text: str) -> str:
    """The *_no_cands.txt twin of a ParlAI text: the same lines without reward and candidates."""
    return "".join("\t".join(line.split("\t")[:2]) + "\n" for line in text.splitlines())


def _convai2_folder(root):
    """train/valid of self_original and self_revised, each with its *_no_cands twin."""
    valid = "1 your persona: i am a pilot.\n2 hi\thello\t\ta|hello\n3 fly?\tdaily.\n"
    for split, text in (("train", SELF_ORIGINAL), ("valid", valid)):
        _write(root, f"{split}_self_original.txt", text)
        _write(root, f"{split}_self_original_no_cands.txt", _no_cands(text))
        _write(root, f"{split}_self_revised.txt", SELF_REVISED)
        _write(root, f"{split}_self_revised_no_cands.txt", _no_cands(SELF_REVISED))
    return root


def test_a_convai2_folder_reads_one_file_of_each_twin_pair(tmp_path):
    """3 train + 1 valid episodes, each once: ``*_no_cands.txt`` twins are not read again (they
    would count every dialogue twice and put copies of training dialogues in valid/test)."""
    corpus = load_parlai(_convai2_folder(tmp_path))
    assert [d.dialogue_id for d in corpus.dialogues] == [
        "train_self_original-00000",
        "train_self_original-00001",
        "train_self_original-00002",
        "valid_self_original-00000",
    ]


def test_a_folder_of_no_cands_files_only_is_read(tmp_path):
    _write(tmp_path, "train_self_original_no_cands.txt", _no_cands(SELF_ORIGINAL))
    corpus = load_parlai(tmp_path)
    assert len(corpus.dialogues) == 3
    assert corpus.dialogues[0].dialogue_id == "train_self_original_no_cands-00000"


def test_the_same_conversation_seen_by_each_speaker_is_two_episodes(tmp_path):
    """ParlAI self_* files hold every conversation once per speaker, each with its own persona:
    not duplicates, so both are kept."""
    text = (
        "1 your persona: i like to ski.\n2 hi\thello\n3 ski?\tyes.\n"
        "1 your persona: i am a chef.\n2 __SILENCE__\thi\n3 hello\tski?\n"
    )
    corpus = load_parlai(_write(tmp_path, "train_self_original.txt", text))
    assert len(corpus.dialogues) == 2 and len(corpus.personas) == 2


def test_variants_are_selected_for_a_folder(tmp_path):
    _convai2_folder(tmp_path)
    _write(tmp_path, "train_both_original.txt", BOTH_ORIGINAL)
    revised = load_parlai(tmp_path, variant="self_revised")
    assert [d.dialogue_id for d in revised.dialogues] == [
        "train_self_revised-00000",
        "valid_self_revised-00000",
    ]
    both = load_parlai(tmp_path, variant="both_original")
    assert [p.sentences for p in both.personas.values()] == [["i like to ski."]]


def test_an_unknown_variant_or_a_folder_without_it_is_one_line(tmp_path):
    _convai2_folder(tmp_path)
    with pytest.raises(FedpktError, match="variant 'other_original' is unknown"):
        load_parlai(tmp_path, variant="other_original")
    with pytest.raises(FedpktError, match="no ParlAI files of variant 'both_revised'"):
        load_parlai(tmp_path, variant="both_revised")


UNICODE_BREAKS = ["\u2028", "\u2029", "\u0085", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e"]


@pytest.mark.parametrize("char", UNICODE_BREAKS, ids=[f"U+{ord(c):04X}" for c in UNICODE_BREAKS])
def test_only_newline_and_carriage_return_end_a_line(char, tmp_path):
    """A character str.splitlines() also breaks at stays inside its utterance."""
    text = f"1 your persona: i ski.\n2 hi{char}there\thello{char}you\n3 ok\tfine\n"
    corpus = load_parlai(_write(tmp_path, "train_self_original.txt", text))
    assert [u.text for u in corpus.dialogues[0].turns] == [
        f"hi{char}there",
        f"hello{char}you",
        "ok",
        "fine",
    ]


def test_a_malformed_line_after_such_a_character_is_reported_at_its_own_number(tmp_path):
    text = "1 your persona: i ski.\n2 hi\u2028there\thello\n3 no tab here\n"
    with pytest.raises(FedpktError, match=r"line 3: expected 'partner text<TAB>persona reply'"):
        load_parlai(_write(tmp_path, "train_self_original.txt", text))


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"], ids=["LF", "CRLF", "CR"])
def test_lf_crlf_and_cr_files_read_alike(newline, tmp_path):
    path = tmp_path / "train_self_original.txt"
    path.write_bytes(("\ufeff" + SELF_ORIGINAL.replace("\n", newline)).encode("utf-8"))
    corpus = load_parlai(path)
    assert len(corpus.dialogues) == 3
    assert corpus.dialogues[2].turns[-1].text == "it is !"


# --- the paper preset's dataset: bavard/personachat_truecased through its parquet conversion --

PARQUET_ID = "bavard/personachat_truecased"


def _parquet_conversion(root):
    """A local copy in the layout of the hub's parquet conversion (``refs/convert/parquet``):
    one folder per configuration, one per split. 'full' holds HF_ROWS (train) and one
    validation conversation; 'sample' another persona that must not be read with 'full'."""
    import datasets

    validation = [{**HF_ROWS[3], "conv_id": 7, "personality": ["I am a pilot."]}]
    sample = [{**HF_ROWS[3], "conv_id": 9, "personality": ["I only exist in the sample."]}]
    for folder, rows in (
        ("full/train", HF_ROWS),
        ("full/validation", validation),
        ("sample/train", sample),
    ):
        (root / folder).mkdir(parents=True)
        datasets.Dataset.from_list(rows).to_parquet(str(root / folder / "0000.parquet"))
    return root


FULL_DIALOGUES = ["train-0", "train-1", "train-2", "validation-7"]


def test_a_parquet_conversion_is_read_for_the_chosen_configuration(tmp_path):
    root = _parquet_conversion(tmp_path / "pc")
    corpus = load_personachat(str(root), data_dir="full", cache_dir=str(tmp_path / "c"))
    assert [d.dialogue_id for d in corpus.dialogues] == FULL_DIALOGUES
    sentences = [p.sentences for p in corpus.personas.values()]
    assert ["I only exist in the sample."] not in sentences


def test_a_hub_id_is_read_at_the_configured_revision_and_folder(tmp_path, monkeypatch):
    """The hub itself stands in as the local parquet conversion: load_dataset is asked for the
    dataset id at revision refs/convert/parquet, folder 'full' (the paper preset's settings)."""
    import datasets

    root = _parquet_conversion(tmp_path / "pc")
    calls = []
    real = datasets.load_dataset

    def hub(name, **kwargs):
        calls.append((name, kwargs.get("revision"), kwargs.get("data_dir")))
        assert name == PARQUET_ID and kwargs.pop("revision") == "refs/convert/parquet"
        return real(str(root), **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", hub)
    cfg = load_config("paper")
    corpus = load_personachat(
        cfg.data.path,
        revision=cfg.data.revision,
        data_dir=cfg.data.data_dir,
        cache_dir=str(tmp_path / "c"),
    )
    assert calls == [(PARQUET_ID, "refs/convert/parquet", "full")]
    assert [d.dialogue_id for d in corpus.dialogues] == FULL_DIALOGUES


def test_a_dataset_defined_by_a_script_is_one_line_naming_the_fix(tmp_path):
    """datasets >= 4 refuses loading scripts; a local script dataset raises the real error."""
    script_dataset = tmp_path / "personachat_truecased"
    script_dataset.mkdir()
    (script_dataset / "personachat_truecased.py").write_text("# a loading script\n")
    with pytest.raises(FedpktError) as err:
        load_personachat(str(script_dataset))
    message = str(err.value)
    assert "\n" not in message
    assert "is defined by a loading script" in message
    assert "data.revision = 'refs/convert/parquet'" in message


@pytest.mark.parametrize("path", ["missing", "data/pc/clients", "./pc", "/nowhere/pc", "a/../b"])
def test_a_missing_path_that_is_no_hub_id_never_reaches_the_hub(path, monkeypatch):
    import datasets

    def hub(*args, **kwargs):
        raise AssertionError(f"the hub was asked for {args}")

    monkeypatch.setattr(datasets, "load_dataset", hub)
    with pytest.raises(FedpktError, match=f"PERSONA-CHAT path '{re.escape(path)}' does not exist"):
        load_personachat(path)


def test_an_existing_path_in_owner_name_form_is_read_locally(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "owner").mkdir()
    _write(tmp_path / "owner", "name", SELF_ORIGINAL)  # a ParlAI file named like a hub id
    assert len(load_personachat("owner/name").dialogues) == 3
