"""Client partitions on disk: one folder per persona, holding only that client's data.

Layout written by :func:`prepare_partitions`::

    OUT/manifest.json                 client ids, parts, counts, file digests, source, scale, seed
    OUT/clients/<client_id>/
        persona.json                  the description (never sent anywhere) + a random salt
        train.jsonl valid.jsonl test.jsonl   one dialogue per line, turns with fact annotations
        canaries.json                 Part A only, when canaries > 0: the planted sentences
        meta.json                     client id, part, counts, sha256 of each file above

A client reads only its own folder (:func:`load_client`) and checks the files against its own
``meta.json``. ``persona.json`` carries a random salt so that its digest, which the manifest
lists, cannot be matched against guessed descriptions (the catalogue is small enough to
enumerate); every other file is byte-for-byte deterministic from source, scale and seed.

The whole tree is built in a temporary sibling directory and renamed into place at the end,
so a prepare that fails midway leaves no half-written ``OUT``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import secrets
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedpkt.atomic import atomic_write_bytes, atomic_write_json
from fedpkt.data.facts import extract_facts
from fedpkt.data.schema import SPLITS, ClientData, Dialogue, Fact, Persona, Utterance
from fedpkt.data.split import Corpus, CorpusSplit, split_corpus
from fedpkt.errors import FedpktError

if TYPE_CHECKING:
    from fedpkt.config import DataConfig

MANIFEST_VERSION = 1
CLIENT_ID = re.compile(r"^[ABC]-\d{4,}$")
DATA_FILES = ("persona.json", "train.jsonl", "valid.jsonl", "test.jsonl")
MANIFEST_CLIENT_KEYS = ("client_id", "part", "counts", "num_train_examples", "files")


# ---------------------------------------------------------------- (de)serialisation


def dialogue_to_json(dialogue: Dialogue) -> dict[str, Any]:
    """A dialogue as plain JSON: facts as [slot, value] pairs."""
    return {
        "dialogue_id": dialogue.dialogue_id,
        "persona_id": dialogue.persona_id,
        "turns": [
            {"speaker": u.speaker, "text": u.text, "facts": [[f.slot, f.value] for f in u.facts]}
            for u in dialogue.turns
        ],
    }


def dialogue_from_json(obj: dict[str, Any]) -> Dialogue:
    """Inverse of :func:`dialogue_to_json` (KeyError/TypeError on a malformed object)."""
    turns = [
        Utterance(t["speaker"], t["text"], tuple(Fact(s, v) for s, v in t.get("facts", [])))
        for t in obj["turns"]
    ]
    if any(u.speaker not in ("partner", "persona") for u in turns):
        raise ValueError("speaker must be 'partner' or 'persona'")
    return Dialogue(obj["dialogue_id"], obj["persona_id"], turns)


def dialogues_to_jsonl(dialogues: list[Dialogue]) -> bytes:
    """One compact, key-sorted JSON object per line: stable bytes for digests."""
    lines = [json.dumps(dialogue_to_json(d), sort_keys=True) for d in dialogues]
    return "".join(line + "\n" for line in lines).encode("utf-8")


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- sources


def load_corpus(data: DataConfig, seed: int) -> Corpus:
    """The synthetic corpus of ``data.scale`` (generated from ``seed``), or PERSONA-CHAT from
    ``data.path`` (file, dir, dataset id; ``data.personachat_variant`` picks the files of a
    ParlAI folder, ``data.revision``/``data.data_dir`` what to read of a Hugging Face dataset).

    Raises FedpktError for an unknown ``data.source`` or unreadable PERSONA-CHAT input."""
    if data.source == "synthetic":
        from fedpkt.data.synthetic import generate_corpus

        return generate_corpus(data.scale, seed)
    if data.source == "personachat":
        from fedpkt.data.personachat import load_personachat

        return load_personachat(
            data.path, data.personachat_variant, revision=data.revision, data_dir=data.data_dir
        )
    raise FedpktError(f"unknown data source '{data.source}' (expected synthetic or personachat)")


def default_part_b(source: str, scale: str, fraction: float = 0.2846) -> float:
    """Part B size: the synthetic preset's count (which Table 1 needs), else the share."""
    if source == "synthetic":
        from fedpkt.data.synthetic import get_scale

        return get_scale(scale).part_b
    return fraction


# ---------------------------------------------------------------- canaries


def plant_canaries(split: CorpusSplit, per_client: int, seed: int) -> dict[str, list[dict]]:
    """Append ``per_client`` unique secret sentences to persona replies of Part A train data.

    Each canary ("my secret code is 4821 9930.") goes to a different persona reply of that
    client's training dialogues; it states no fact, so the annotations stay exact. Returns,
    per client id, the records ``{"text", "dialogue_id", "turn"}`` (mutates ``split``).
    """
    rng = random.Random(f"fedpkt-canary|{seed}")
    used: set[str] = set()
    planted: dict[str, list[dict]] = {}
    for client in split.part("A"):
        train = client.splits["train"]
        slots = [
            (d, t)
            for d in range(len(train))
            for t, u in enumerate(train[d].turns)
            if u.speaker == "persona"
        ]
        if per_client > len(slots):
            raise FedpktError(
                f"canaries={per_client} exceeds the {len(slots)} training replies of client "
                f"{client.meta['client_id']} (expected at most that many)"
            )
        records = []
        for d, t in sorted(rng.sample(slots, per_client)):
            text = _new_canary(rng, used)
            turns = list(train[d].turns)
            turns[t] = replace(turns[t], text=f"{turns[t].text} {text}")
            train[d] = replace(train[d], turns=turns)
            records.append({"text": text, "dialogue_id": train[d].dialogue_id, "turn": t})
        planted[client.meta["client_id"]] = records
    return planted


def _new_canary(rng: random.Random, used: set[str]) -> str:
    while True:
        text = f"my secret code is {rng.randrange(10**4):04d} {rng.randrange(10**4):04d}."
        if text not in used and not extract_facts(text):
            used.add(text)
            return text


# ---------------------------------------------------------------- writing


def _write_client(folder: Path, client: ClientData, canaries: list[dict] | None) -> dict:
    """Write one client's folder; returns its manifest entry."""
    client_id = client.meta["client_id"]
    persona = {
        "persona_id": client_id,
        "sentences": client.persona.sentences,
        "facts": [[f.slot, f.value] for f in client.persona.facts],
        "salt": secrets.token_hex(16),
    }
    atomic_write_json(folder / "persona.json", persona, mode=0o600)
    for name in SPLITS:
        atomic_write_bytes(folder / f"{name}.jsonl", dialogues_to_jsonl(client.splits[name]))
    names = list(DATA_FILES)
    if canaries is not None:
        atomic_write_json(folder / "canaries.json", canaries, mode=0o600)
        names.append("canaries.json")
    files = {name: sha256_file(folder / name) for name in names}
    counts = {name: len(client.splits[name]) for name in SPLITS}
    meta = {"client_id": client_id, "part": client.part, "counts": counts, "files": files}
    if canaries is not None:
        meta["num_canaries"] = len(canaries)
    atomic_write_json(folder / "meta.json", meta)
    files["meta.json"] = sha256_file(folder / "meta.json")
    return {
        "client_id": client_id,
        "part": client.part,
        "counts": counts,
        "num_train_examples": sum(
            u.speaker == "persona" for d in client.splits["train"] for u in d.turns
        ),
        "files": files,
    }


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise FedpktError(f"output '{out}' is a file (expected a new or empty directory)")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FedpktError(
            f"output directory '{out}' is not empty (expected a new or empty directory, "
            "or --overwrite)"
        )


def prepare_partitions(
    out: str | Path,
    data: DataConfig,
    seed: int,
    *,
    part_b: float | None = None,
    overwrite: bool = False,
) -> CorpusSplit:
    """Load ``data``'s corpus, split it, write ``OUT/clients/*`` and ``OUT/manifest.json``.

    ``data`` gives the source and its reading (``load_corpus``), ``data.canaries`` and
    ``data.few_shot_threshold``; ``seed`` the generation, the Part B draw and the cuts.
    ``part_b``: a count or a share of the regular personas; None means the synthetic preset's
    count, or ``data.part_b_fraction`` for PERSONA-CHAT (``default_part_b``). Everything is
    written to a temporary folder, then renamed: a failure leaves ``out`` as it was.
    Returns the split (with canaries planted) for callers that go on in-process.
    """
    target = Path(out)
    _check_out(target, overwrite)
    canaries = data.canaries
    corpus = load_corpus(data, seed)
    real = data.source == "personachat"
    b = default_part_b(data.source, data.scale, data.part_b_fraction) if part_b is None else part_b
    split = split_corpus(corpus, seed, data.few_shot_threshold, b)
    if not split.clients:
        raise FedpktError(
            f"no persona of {data.source} has enough dialogues to be a client "
            f"({split.dropped_personas} dropped with fewer than 3); expected at least one: use a "
            "larger corpus"
        )
    planted = plant_canaries(split, canaries, seed) if canaries else {}
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        entries = [
            _write_client(
                tmp / "clients" / c.meta["client_id"], c, planted.get(c.meta["client_id"])
            )
            for c in split.clients
        ]
        manifest = {
            "version": MANIFEST_VERSION,
            "source": data.source,
            "scale": data.scale if not real else "",
            "path": data.path if real else "",
            "variant": data.personachat_variant if real else "",
            "revision": data.revision if real else "",
            "data_dir": data.data_dir if real else "",
            "seed": seed,
            "few_shot_threshold": data.few_shot_threshold,
            "part_b": b,
            "canaries": canaries,
            "dropped_personas": split.dropped_personas,
            "dropped_dialogues": split.dropped_dialogues,
            "clients": entries,
        }
        atomic_write_json(tmp / "manifest.json", manifest)
        _swap_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return split


def _swap_into_place(tmp: Path, target: Path) -> None:
    """Rename the finished tree onto ``target`` (an existing one is replaced, then removed)."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{secrets.token_hex(4)}")
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------- reading


def _read_json(file: Path, what: str) -> Any:
    if not file.is_file():
        raise FedpktError(f"{what} '{file}' is missing (expected a file written by data prepare)")
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise FedpktError(f"{what} '{file}' is not valid JSON: {err}") from None


def load_manifest(root: str | Path) -> dict[str, Any]:
    """Read and check ``root/manifest.json``; returns it as written.

    Keys: version, source, scale, path, variant, revision, data_dir (PERSONA-CHAT; absent in
    older manifests), seed, few_shot_threshold, part_b, canaries,
    dropped_personas, dropped_dialogues, and ``clients``: a list of
    ``{client_id, part, counts: {train, valid, test}, num_train_examples, files: {name: sha256}}``
    in client-id order (A, then B, then C).
    """
    file = Path(root) / "manifest.json"
    raw = _read_json(file, "manifest")
    if not isinstance(raw, dict) or raw.get("version") != MANIFEST_VERSION:
        found = raw.get("version") if isinstance(raw, dict) else type(raw).__name__
        raise FedpktError(f"manifest '{file}' has version {found!r} (expected {MANIFEST_VERSION})")
    for key in ("source", "seed", "clients"):
        if key not in raw:
            raise FedpktError(f"manifest '{file}' lacks key '{key}'")
    for entry in raw["clients"]:
        missing = [k for k in MANIFEST_CLIENT_KEYS if not isinstance(entry, dict) or k not in entry]
        if missing:
            raise FedpktError(f"manifest '{file}' client entry lacks {', '.join(missing)}")
    return raw


def client_dir(root: str | Path, client_id: str) -> Path:
    """``root/clients/<client_id>``; the id must look like ``A-0007`` (no path tricks)."""
    if not CLIENT_ID.match(client_id):
        raise FedpktError(f"client id '{client_id}' is invalid (expected like 'A-0007')")
    return Path(root) / "clients" / client_id


def load_client(root: str | Path, client_id: str) -> ClientData:
    """One client's data from its own folder only, verified against its ``meta.json``.

    ``meta["canaries"]`` holds the planted canary records when the folder has them.
    """
    folder = client_dir(root, client_id)
    meta = _read_json(folder / "meta.json", f"client {client_id} meta")
    try:
        files = dict(meta["files"])
        part = meta["part"]
        if meta["client_id"] != client_id or part not in ("A", "B", "C"):
            raise ValueError("client_id/part")
    except (KeyError, TypeError, ValueError) as err:
        raise FedpktError(
            f"client {client_id} meta.json is malformed: missing or bad {err}"
        ) from None
    for name in DATA_FILES:
        if name not in files:
            raise FedpktError(f"client {client_id} meta.json lists no digest for {name}")
    for name, digest in files.items():
        file = folder / name
        if not file.is_file():
            raise FedpktError(f"client {client_id} file {name} is missing (expected in {folder})")
        actual = sha256_file(file)
        if actual != digest:
            raise FedpktError(
                f"client {client_id} file {name} has sha256 {actual[:12]}... "
                f"(expected {digest[:12]}... from meta.json): modified or corrupt"
            )
    persona_obj = _read_json(folder / "persona.json", f"client {client_id} persona")
    try:
        persona = Persona(
            persona_obj["persona_id"],
            list(persona_obj["sentences"]),
            tuple(Fact(s, v) for s, v in persona_obj.get("facts", [])),
        )
        splits = {
            name: [
                dialogue_from_json(json.loads(line))
                for line in (folder / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
                if line.strip()
            ]
            for name in SPLITS
        }
    except (KeyError, TypeError, ValueError) as err:
        raise FedpktError(f"client {client_id} data is malformed: missing or bad {err}") from None
    meta = dict(meta)
    if "canaries.json" in files:
        meta["canaries"] = _read_json(folder / "canaries.json", f"client {client_id} canaries")
    return ClientData(persona=persona, part=part, splits=splits, meta=meta)
