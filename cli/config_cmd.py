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
