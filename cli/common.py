"""Shared CLI plumbing: config resolution from flags and the one-line error exit."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console

from fedpkt.config import FedpktConfig, load_config
from fedpkt.errors import FedpktError

DEFAULT_PRESET = "embedded"
console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])

ConfigOption = typer.Option(
    None,
    "--config",
    "-c",
    help="TOML config file, or a preset name in configs/ (embedded, paper); default: embedded.",
)
SetOption = typer.Option(
    None, "--set", "-s", help="Override one key: section.key=value (repeatable)."
)


def exits_cleanly(func: F) -> F:
    """Turn FedpktError into a one-line message and exit code 2 (no traceback, nothing written)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except FedpktError as err:
            err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None

    return wrapper  # type: ignore[return-value]


def resolve_config(
    config: Path | None, overrides: list[str] | None, flags: dict[str, Any] | None = None
) -> FedpktConfig:
    """preset/file < ``--set`` overrides < dedicated flags (dotted keys; None = unset).

    Without ``--config`` the embedded preset applies: the default run is the embedded one.
    """
    values = {key: value for key, value in (flags or {}).items() if value is not None}
    return load_config(config or DEFAULT_PRESET, overrides, values)
