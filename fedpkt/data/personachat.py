"""Real PERSONA-CHAT: ParlAI text files, or a Hugging Face dataset through ``datasets``.

ParlAI format (``train_self_original.txt``, ``valid_self_revised.txt``, ...): every line is
``<n> <text>``; ``n`` restarts at 1 with each episode. Lines ``your persona: ...`` give the
persona (the speaker whose replies are the targets), ``partner's persona: ...`` (in the
``both_*`` files) are skipped, and the other lines are ``partner text<TAB>persona reply``
optionally followed by ``<TAB>reward<TAB>cand1|cand2|...`` (candidates are ignored). A partner
text of ``__SILENCE__`` means the persona spoke first. Lines end at ``\n``, ``\r\n`` or ``\r``
only, as when ParlAI iterates over the file: U+2028, U+0085, form feeds and the like inside an
utterance are text, not line breaks.

A directory is read as the files of one ``variant`` (``VARIANTS``; default ``self_original``):
``<split>_<variant>.txt`` for train, valid and test together, because the paper re-splits the
whole corpus by persona. PERSONA-CHAT and ConvAI2 folders hold each file twice, with and
without candidates (``train_self_original.txt``, ``train_self_original_no_cands.txt``): the
same dialogues, so one of each twin pair is read, the one with candidates when both exist (as
ParlAI's teachers do by default). The same conversation still appears once per speaker, with
that speaker's persona: those are different episodes and are all kept.

Hugging Face schema (that of ``bavard/personachat_truecased``): one row per persona reply, with
``personality`` (list of description sentences), ``history`` (the earlier utterances,
partner first), ``candidates`` (the gold reply LAST), ``conv_id`` and ``utterance_idx``. The
row with the largest ``utterance_idx`` of a conversation holds it whole: history + gold reply.
Every split of the dataset is read. ``bavard/personachat_truecased`` itself is defined by a
loading script, which ``datasets`` 4 and later refuse; its parquet conversion (revision
``refs/convert/parquet``, one folder per configuration: ``full/train/0000.parquet``, ...) has
the same rows, so ``data.revision`` and ``data.data_dir`` read that instead.

Both loaders return a :class:`fedpkt.data.split.Corpus` whose personas are already grouped by
their normalised description (ids ``pc-<index:05d>`` in order of first appearance).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, get_args

from fedpkt.config import PersonachatVariant
from fedpkt.data.schema import Dialogue, Persona, Speaker, Utterance
from fedpkt.data.split import Corpus, PersonaKey, persona_key
from fedpkt.errors import FedpktError

SILENCE = {"__silence__", "__ silence __"}
# The ParlAI files whose episodes give the speaker's own persona ("your persona:" lines).
VARIANTS: tuple[str, ...] = get_args(PersonachatVariant)
NO_CANDS = "_no_cands"
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
# The hub's dataset id form, owner/name (huggingface_hub's repo id characters).
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
# Where the hub keeps a dataset's automatic parquet conversion (script datasets included).
PARQUET_REVISION = "refs/convert/parquet"
SCRIPT_REFUSED = "Dataset scripts are no longer supported"
HF_FIELDS = ("personality", "history", "candidates", "conv_id", "utterance_idx")
_LINE = re.compile(r"^(\d+) (.*)$")


class _CorpusBuilder:
    """Collects (persona sentences, turns) episodes and groups personas by key."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.by_key: dict[PersonaKey, Persona] = {}
        self.dialogues: list[Dialogue] = []

    def add(self, dialogue_id: str, sentences: Sequence[str], turns: list[Utterance]) -> None:
        key = persona_key(sentences)
        if key not in self.by_key:
            self.by_key[key] = Persona(f"pc-{len(self.by_key):05d}", list(sentences))
        self.dialogues.append(Dialogue(dialogue_id, self.by_key[key].persona_id, turns))

    def build(self) -> Corpus:
        if not self.dialogues:
            raise FedpktError(f"PERSONA-CHAT source '{self.source}' holds no dialogues")
        personas = {p.persona_id: p for p in self.by_key.values()}
        return Corpus(personas, self.dialogues, source=f"personachat:{self.source}")


def _turns(texts: Sequence[str], last_speaker: Speaker = "persona") -> list[Utterance]:
    """Alternating turns ending with ``last_speaker``; silence placeholders are dropped."""
    out: list[Utterance] = []
    for back, text in enumerate(reversed(texts)):
        speaker: Speaker = last_speaker if back % 2 == 0 else _other(last_speaker)
        if text.strip().lower() not in SILENCE:
            out.append(Utterance(speaker, text.strip()))
    return out[::-1]


def _other(speaker: Speaker) -> Speaker:
    return "partner" if speaker == "persona" else "persona"


# ---------------------------------------------------------------- ParlAI text


def _parse_parlai_lines(lines: Iterable[str], name: str, builder: _CorpusBuilder) -> None:
    """Parse one ParlAI file into ``builder``; any malformed line is a one-line error."""
    persona: list[str] = []
    texts: list[str] = []
    episode = 0
    previous = 0
    stem = Path(name).stem

    started = 1  # the line the current episode starts on

    def flush() -> None:
        nonlocal episode
        if texts:
            if not persona:
                raise FedpktError(
                    f"ParlAI file '{name}' line {started}: episode {episode} has no "
                    "'your persona:' lines"
                )
            builder.add(f"{stem}-{episode:05d}", persona, _turns(texts))
            episode += 1

    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        match = _LINE.match(line)
        if match is None:
            raise FedpktError(
                f"ParlAI file '{name}' line {number}: {line[:40]!r} does not start with "
                "'<number> ' (expected '<n> your persona: ...' or '<n> text<TAB>reply')"
            )
        index, body = int(match.group(1)), match.group(2)
        if index <= previous:
            flush()
            persona, texts, started = [], [], number
        previous = index
        lowered = body.lower()
        if lowered.startswith("your persona:"):
            if texts:
                raise FedpktError(
                    f"ParlAI file '{name}' line {number}: persona line after dialogue lines "
                    "(expected persona lines first in each episode)"
                )
            persona.append(body.split(":", 1)[1].strip())
            continue
        if lowered.startswith("partner's persona:"):
            continue
        fields = body.split("\t")
        if len(fields) < 2 or not fields[1].strip():
            raise FedpktError(
                f"ParlAI file '{name}' line {number}: expected 'partner text<TAB>persona reply', "
                f"got {body[:40]!r}"
            )
        texts.extend([fields[0], fields[1]])
    flush()


def parlai_lines(text: str) -> list[str]:
    """The lines of a ParlAI file: breaks at ``\n``, ``\r\n`` and ``\r`` only (not at the other
    breaks ``str.splitlines`` knows, which are ordinary characters inside an utterance)."""
    return _LINE_BREAK.split(text)


def check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise FedpktError(
            f"PERSONA-CHAT variant '{variant}' is unknown (expected one of {', '.join(VARIANTS)})"
        )
    return variant


def parlai_files(path: str | Path, variant: str = "self_original") -> list[Path]:
    """The ParlAI files a path names: the file itself, or in a directory the ``variant`` files
    (``<split>_<variant>.txt``), one of each with/without-candidates twin pair."""
    check_variant(variant)
    root = Path(path)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FedpktError(
            f"PERSONA-CHAT path '{root}' does not exist (expected a file or directory)"
        )
    twins: dict[str, list[Path]] = {}
    for file in sorted(root.glob("*.txt")):
        stem = file.stem.removesuffix(NO_CANDS)
        if stem == variant or stem.endswith(f"_{variant}"):
            twins.setdefault(stem, []).append(file)
    if not twins:
        raise FedpktError(
            f"directory '{root}' holds no ParlAI files of variant '{variant}' (expected "
            f"<split>_{variant}.txt or <split>_{variant}{NO_CANDS}.txt)"
        )
    # the twin with candidates when there are two (False sorts first)
    return sorted(min(files, key=lambda f: f.stem.endswith(NO_CANDS)) for files in twins.values())


def load_parlai(path: str | Path, variant: str = "self_original") -> Corpus:
    """Read a ParlAI-format PERSONA-CHAT file or directory (see the module docstring)."""
    builder = _CorpusBuilder(str(path))
    for file in parlai_files(path, variant):
        try:
            text = file.read_bytes().decode("utf-8-sig")  # no newline translation; BOM dropped
        except (OSError, UnicodeDecodeError) as err:
            raise FedpktError(f"ParlAI file '{file}' cannot be read as UTF-8 text: {err}") from None
        _parse_parlai_lines(parlai_lines(text), str(file), builder)
    return builder.build()


# ---------------------------------------------------------------- Hugging Face


def corpus_from_rows(splits: Mapping[str, Iterable[Mapping[str, Any]]], source: str) -> Corpus:
    """Rebuild whole dialogues from ``bavard/personachat_truecased``-style rows, per split."""
    builder = _CorpusBuilder(source)
    for split_name in sorted(splits):
        last: dict[Any, Mapping[str, Any]] = {}
        for row in splits[split_name]:
            missing = [f for f in HF_FIELDS if f not in row]
            if missing:
                raise FedpktError(
                    f"dataset '{source}' split '{split_name}' lacks field(s) {', '.join(missing)} "
                    f"(expected the schema {', '.join(HF_FIELDS)})"
                )
            conv = row["conv_id"]
            if conv not in last or row["utterance_idx"] > last[conv]["utterance_idx"]:
                last[conv] = row
        for conv in sorted(last, key=str):
            row = last[conv]
            if not row["candidates"]:
                raise FedpktError(
                    f"dataset '{source}' split '{split_name}' conv_id {conv}: empty candidates "
                    "(expected the gold reply last)"
                )
            texts = [*row["history"], row["candidates"][-1]]
            builder.add(f"{split_name}-{conv}", list(row["personality"]), _turns(texts))
    return builder.build()


def load_personachat_hf(name: str, **kwargs: Any) -> Corpus:
    """Load a dataset through ``datasets.load_dataset(name, **kwargs)`` and rebuild dialogues.

    ``name`` is a hub id (needs the hub or a local cache), a local dataset directory, or a
    builder such as ``"json"`` with ``data_files=...``. A directory written by
    ``Dataset(Dict).save_to_disk`` is read with ``datasets.load_from_disk``. ``kwargs`` go to
    ``load_dataset`` (``revision``, ``data_dir``, ``cache_dir``, ...).
    """
    import datasets  # heavy import, only on this path

    try:
        if Path(name).is_dir() and (
            (Path(name) / "dataset_dict.json").is_file()
            or (Path(name) / "dataset_info.json").is_file()
        ):
            loaded = datasets.load_from_disk(name)
        else:
            loaded = datasets.load_dataset(name, **kwargs)
    except FedpktError:
        raise
    except Exception as err:  # datasets raises many types; the user needs one line
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        if SCRIPT_REFUSED in first:
            raise FedpktError(_script_fix(name, datasets.__version__)) from None
        raise FedpktError(f"cannot load Hugging Face dataset '{name}': {first}") from None
    splits = loaded if isinstance(loaded, Mapping) else {"train": loaded}
    return corpus_from_rows(splits, name)


def _script_fix(name: str, version: str) -> str:
    return (
        f"Hugging Face dataset '{name}' is defined by a loading script, which datasets "
        f"{version} no longer runs; read its parquet conversion instead: data.revision = "
        f"'{PARQUET_REVISION}' and, if it has several configurations, data.data_dir = the one "
        f"to read, e.g. 'full' (fedpkt data: --revision {PARQUET_REVISION} --data-dir full)"
    )


def is_hub_id(path: str) -> bool:
    """True for the hub's ``owner/name`` form (``bavard/personachat_truecased``)."""
    return HUB_ID.match(path) is not None and ".." not in path


def load_personachat(
    path: str,
    variant: str = "self_original",
    *,
    revision: str = "",
    data_dir: str = "",
    **kwargs: Any,
) -> Corpus:
    """ParlAI text when ``path`` is a .txt file or a directory of them, else Hugging Face.

    A path that exists is read locally: local ``.json``/``.jsonl``/``.parquet`` files through
    the ``json``/``parquet`` builders, a directory of dataset files (a parquet conversion's
    layout included: ``data_dir`` picks its configuration) or one written by ``save_to_disk``.
    A path that does not exist is a hub id only in the hub's ``owner/name`` form, read at
    ``revision`` (empty: main); anything else is a missing path, refused without asking the hub.
    """
    if not path:
        raise FedpktError("PERSONA-CHAT path is empty (expected a file, directory or dataset id)")
    folder = {"data_dir": data_dir} if data_dir else {}
    at = {"revision": revision} if revision else {}  # a local directory has no revisions
    local = Path(path)
    if local.is_file() and local.suffix in {".json", ".jsonl", ".parquet"}:
        builder = "parquet" if local.suffix == ".parquet" else "json"
        return load_personachat_hf(builder, data_files=str(local), **kwargs)
    if local.is_file() or (local.is_dir() and any(local.glob("*.txt"))):
        return load_parlai(local, variant)
    if local.is_dir():
        return load_personachat_hf(str(local), **folder, **kwargs)
    if not is_hub_id(path):
        raise FedpktError(
            f"PERSONA-CHAT path '{path}' does not exist (expected a file or directory, or a "
            "Hugging Face dataset id of the form owner/name)"
        )
    return load_personachat_hf(path, **at, **folder, **kwargs)


def check_path(path: str) -> None:
    """What ``load_personachat`` refuses about ``path`` before reading anything: empty, or a
    path that does not exist and is not a hub id (``owner/name``)."""
    if not path:
        raise FedpktError("PERSONA-CHAT path is empty (expected a file, directory or dataset id)")
    if Path(path).exists() or is_hub_id(path):
        return
    raise FedpktError(
        f"PERSONA-CHAT path '{path}' does not exist (expected a file or directory, or a "
        "Hugging Face dataset id of the form owner/name)"
    )
