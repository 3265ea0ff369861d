"""``fedpkt config show``: print the resolved configuration."""

from __future__ import annotations

from pathlib import Path

import typer

from cli.common import ConfigOption, SetOption, console, exits_cleanly, resolve_config
from fedpkt.config import config_to_toml

app = typer.Typer(help="Inspect the resolved configuration.", no_args_is_help=True)


@app.command("show")
@exits_cleanly
def show(config: Path | None = ConfigOption, overrides: list[str] | None = SetOption) -> None:
    """Print the configuration after defaults < file < overrides, as TOML."""
    console.print(config_to_toml(resolve_config(config, overrides)), highlight=False, markup=False)


@app.command("keys")
def keys() -> None:
    """Every config key: its type, the range it must lie in, its default and what it does."""
    from rich.table import Table

    from fedpkt.config import config_keys

    table = Table(title="config keys (--set section.key=value)")
    for column in ("key", "type", "range", "default", "help"):
        table.add_column(column)
    for doc in config_keys():
        table.add_row(doc.key, doc.kind, doc.range, repr(doc.default), doc.help)
    console.print(table)
