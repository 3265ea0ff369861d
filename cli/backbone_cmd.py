"""``fedpkt backbone build|info``: build the embedded backbone, or describe any backbone."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from cli.common import ConfigOption, SetOption, console, exits_cleanly, resolve_config

if TYPE_CHECKING:  # torch and transformers: loaded only when a backbone command runs
    from fedpkt.model.backbone import Backbone
    from fedpkt.model.embedded import PerplexityReport

app = typer.Typer(
    help="The frozen backbone: build the embedded one, or describe any (embedded, dir, hub id).",
    no_args_is_help=True,
)

SizeOption = typer.Option(
    None,
    "--size",
    help="Embedded recipe: tiny (tests) or default (runs). For other backbones: which recipe's "
    "held-out texts to score on.",
)
RecipeOption = typer.Option(
    None,
    "--recipe",
    help="What the embedded backbone is pretrained on: dialogue (default) or prose (issue 18).",
)


@app.command("build")
@exits_cleanly
def build(
    size: str = typer.Option("default", "--size", help="Embedded recipe: tiny or default."),
    recipe: str = typer.Option(
        "dialogue", "--recipe", help="Pretraining corpus: dialogue (default) or prose."
    ),
    force: bool = typer.Option(False, "--force", help="Rebuild even if it is already cached."),
) -> None:
    """Build the embedded backbone into the cache (once; later calls reuse it)."""
    from fedpkt.model.embedded import ensure_embedded, get_recipe, read_build_info

    get_recipe(size, recipe)  # a bad size or recipe fails before any work
    path = ensure_embedded(size, recipe, force=force, progress=True)
    record = read_build_info(path) or {}
    table = _two_columns(f"embedded backbone ({recipe}, {size})")
    table.add_row("path", str(path))
    table.add_row("parameters", f"{record.get('num_params', 0):,}")
    table.add_row("build seconds", str(record.get("build_seconds", "?")))
    if "valid_perplexity" in record:
        table.add_row("held-out perplexity", f"{record['valid_perplexity']:.2f}")
        table.add_row("unigram baseline", f"{record['unigram_perplexity']:.2f}")
    if "dialogue_perplexity" in record:
        table.add_row("perplexity on dialogues", f"{record['dialogue_perplexity']:.2f}")
    console.print(table)


@app.command("info")
@exits_cleanly
def info(
    backbone: str | None = typer.Option(
        None, "--backbone", "-b", help="'embedded', a local model directory or a hub id."
    ),
    size: str | None = SizeOption,
    recipe: str | None = RecipeOption,
    config: Path | None = ConfigOption,
    overrides: list[str] | None = SetOption,
) -> None:
    """Parameters, shape, fingerprint, path and held-out perplexity next to a unigram baseline."""
    from fedpkt.model.backbone import load_backbone_from_config
    from fedpkt.model.embedded import get_recipe, perplexity_report

    cfg = resolve_config(
        config,
        overrides,
        {
            "backbone.name": backbone,
            "backbone.embedded_size": size,
            "backbone.embedded_recipe": recipe,
        },
    )
    loaded = load_backbone_from_config(cfg.backbone)
    scored = get_recipe(cfg.backbone.embedded_size, cfg.backbone.embedded_recipe)
    with console.status(f"scoring held-out {scored.corpus} texts and general dialogues"):
        report = perplexity_report(loaded.model, loaded.tokenizer, scored)
    console.print(_info_table(loaded, report, cfg.backbone.dtype))


def _info_table(backbone: Backbone, report: PerplexityReport, dtype: str) -> Table:
    from fedpkt.model.embedded import read_build_info

    config = backbone.text_config
    table = _two_columns(f"backbone {backbone.name}")
    table.add_row("path", str(backbone.path))
    table.add_row("fingerprint", backbone.fingerprint)
    table.add_row("architecture", f"{config.model_type} ({type(backbone.model).__name__})")
    table.add_row("parameters", f"{backbone.num_params:,}")
    table.add_row("layers / hidden", f"{backbone.num_layers} / {backbone.hidden_size}")
    table.add_row("heads (kv) / head dim", _heads(backbone))
    table.add_row("tokenizer vocab", f"{len(backbone.tokenizer):,}")
    table.add_row("device / dtype", f"{backbone.device} / {dtype}")
    build = read_build_info(backbone.path)
    if build is not None:
        table.add_row("build seconds", str(build.get("build_seconds", "?")))
    table.add_row("held-out texts", f"{report.valid_texts} texts, {report.valid_tokens:,} tokens")
    table.add_row("validation perplexity", f"{report.valid_perplexity:.2f}")
    table.add_row("unigram baseline perplexity", f"{report.unigram_perplexity:.2f}")
    table.add_row("perplexity on general dialogues", f"{report.dialogue_perplexity:.2f}")
    return table


def _two_columns(title: str) -> Table:
    """A label/value table whose values wrap instead of being cut (paths are long)."""
    table = Table(title=title, show_header=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    return table


def _heads(backbone: Backbone) -> str:
    return f"{backbone.num_heads} ({backbone.num_kv_heads}) / {backbone.head_dim}"
