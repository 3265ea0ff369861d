"""``fedpkt data prepare|stats``: build per-client partitions, or print the Table 1 layout."""

from __future__ import annotations

import math
from pathlib import Path

import typer
from rich.table import Table

from cli.common import console, exits_cleanly
from fedpkt.config import MAX_SEED, DataConfig
from fedpkt.data.partition import default_part_b, load_corpus, prepare_partitions
from fedpkt.data.personachat import check_variant
from fedpkt.data.split import CorpusSplit, split_corpus
from fedpkt.data.stats import part_table
from fedpkt.data.synthetic import SCALES, get_scale
from fedpkt.errors import FedpktError

app = typer.Typer(
    help="Persona data: the synthetic corpus or PERSONA-CHAT, split into Parts A/B/C.",
    no_args_is_help=True,
)

_DEFAULTS = DataConfig()
SOURCES = ("synthetic", "personachat")

SourceOption = typer.Option(
    _DEFAULTS.source, "--source", help="synthetic (embedded corpus) or personachat."
)
ScaleOption = typer.Option(
    _DEFAULTS.scale, "--scale", help=f"Synthetic corpus size: {', '.join(SCALES)}."
)
PathOption = typer.Option(
    "",
    "--path",
    help="PERSONA-CHAT: a ParlAI .txt file or directory (see --variant), a local "
    ".json/.jsonl/.parquet file or dataset directory, or a Hugging Face dataset id.",
)
VariantOption = typer.Option(
    _DEFAULTS.personachat_variant,
    "--variant",
    help="PERSONA-CHAT ParlAI folder: the files <split>_<variant>.txt to read (self_original, "
    "self_revised, both_original, both_revised); one of each *_no_cands.txt twin pair.",
)
RevisionOption = typer.Option(
    _DEFAULTS.revision,
    "--revision",
    help="Hugging Face dataset id: the revision to read, e.g. refs/convert/parquet (the parquet "
    "conversion of a dataset defined by a loading script, which datasets 4+ refuses).",
)
DataDirOption = typer.Option(
    _DEFAULTS.data_dir,
    "--data-dir",
    help="Hugging Face dataset: the repository folder to read (in a parquet conversion, the "
    "configuration, e.g. full).",
)
SeedOption = typer.Option(0, "--seed", help="Seeds generation, the Part B choice and the cuts.")
FewShotOption = typer.Option(
    _DEFAULTS.few_shot_threshold,
    "--few-shot-threshold",
    help="Personas with fewer dialogues than this form Part C.",
)
PartBOption = typer.Option(
    None,
    "--part-b",
    help="Part B size: a count (0: no Part B) or a share in (0, 1) of the regular personas. "
    "Default: "
    f"the synthetic preset's count, or {_DEFAULTS.part_b_fraction} for PERSONA-CHAT.",
)


def _check_source(source: str, scale: str, path: str, variant: str) -> None:
    if source not in SOURCES:
        raise FedpktError(f"unknown --source '{source}' (expected one of: {', '.join(SOURCES)})")
    get_scale(scale)
    check_variant(variant)
    if source == "personachat" and not path:
        raise FedpktError("--source personachat needs --path (a file, directory or dataset id)")


def _data_config(
    source: str,
    scale: str,
    path: str,
    variant: str,
    revision: str,
    data_dir: str,
    few_shot_threshold: int,
) -> DataConfig:
    """The ``[data]`` section the flags stand for (checked by ``_check_source`` and
    ``_check_numbers`` first, so that errors name the flags)."""
    return DataConfig(
        source=source,
        scale=scale,
        path=path,
        personachat_variant=variant,
        revision=revision,
        data_dir=data_dir,
        few_shot_threshold=few_shot_threshold,
    )


def _part_b(source: str, scale: str, part_b: float | None) -> float:
    if part_b is None:
        return default_part_b(source, scale, _DEFAULTS.part_b_fraction)
    if math.isfinite(part_b) and part_b >= 0 and part_b.is_integer():
        return int(part_b)  # 0: every regular persona in Part A (as fedpkt.data.split has it)
    if not (math.isfinite(part_b) and 0 < part_b < 1):
        raise FedpktError(
            f"--part-b {part_b:g}: expected a count (a whole number, 0 for no Part B) or a "
            "share in (0, 1)"
        )
    return part_b


def _check_numbers(seed: int, few_shot_threshold: int, canaries: int = 0) -> None:
    """The flags' values in the ranges of the config keys they stand for (one line each)."""
    for flag, value, low, high in (
        ("--seed", seed, 0, MAX_SEED),
        ("--few-shot-threshold", few_shot_threshold, 2, 1000),
        ("--canaries", canaries, 0, 10000),
    ):
        if not low <= value <= high:
            raise FedpktError(f"{flag} {value}: expected {low} to {high}")


def _print_table(split: CorpusSplit, title: str) -> None:
    table = Table(title=title)
    for column in ("Part", "personas", "train", "valid", "test"):
        table.add_column(column, justify="left" if column == "Part" else "right")
    for row in part_table(split):
        table.add_row(
            f"Part {row.part}", str(row.personas), str(row.train), str(row.valid), str(row.test)
        )
    console.print(table)
    if split.dropped_personas:
        console.print(
            f"dropped {split.dropped_personas} personas ({split.dropped_dialogues} dialogues) "
            "with fewer than 3 dialogues"
        )


def _title(source: str, scale: str, path: str, seed: int, variant: str) -> str:
    what = f"synthetic {scale}" if source == "synthetic" else f"personachat {path} ({variant})"
    return f"{what}, seed {seed}"


@app.command("prepare")
@exits_cleanly
def prepare(
    out: Path = typer.Option(..., "--out", help="New (or empty) directory to write."),
    source: str = SourceOption,
    scale: str = ScaleOption,
    path: str = PathOption,
    variant: str = VariantOption,
    revision: str = RevisionOption,
    data_dir: str = DataDirOption,
    seed: int = SeedOption,
    canaries: int = typer.Option(
        _DEFAULTS.canaries, "--canaries", help="Canary sentences planted per Part A client."
    ),
    few_shot_threshold: int = FewShotOption,
    part_b: float | None = PartBOption,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --out."),
) -> None:
    """Split the data and write one folder per client plus manifest.json under --out."""
    _check_source(source, scale, path, variant)
    _check_numbers(seed, few_shot_threshold, canaries)
    data = _data_config(source, scale, path, variant, revision, data_dir, few_shot_threshold)
    data = data.model_copy(update={"canaries": canaries})
    split = prepare_partitions(
        out, data, seed, part_b=_part_b(source, scale, part_b), overwrite=overwrite
    )
    _print_table(split, _title(source, scale, path, seed, variant))
    console.print(f"wrote {len(split.clients)} client folders and manifest.json to {out}")


@app.command("stats")
@exits_cleanly
def stats(
    source: str = SourceOption,
    scale: str = ScaleOption,
    path: str = PathOption,
    variant: str = VariantOption,
    revision: str = RevisionOption,
    data_dir: str = DataDirOption,
    seed: int = SeedOption,
    few_shot_threshold: int = FewShotOption,
    part_b: float | None = PartBOption,
) -> None:
    """Print the paper's Table 1 layout (personas and train/valid/test dialogues per part)."""
    _check_source(source, scale, path, variant)
    _check_numbers(seed, few_shot_threshold)
    data = _data_config(source, scale, path, variant, revision, data_dir, few_shot_threshold)
    corpus = load_corpus(data, seed)
    split = split_corpus(corpus, seed, few_shot_threshold, _part_b(source, scale, part_b))
    _print_table(split, _title(source, scale, path, seed, variant))
