"""Entry point of the ``fedpkt`` console script: registers each command group."""

from __future__ import annotations

import typer

from cli import config_cmd

app = typer.Typer(
    name="fedpkt",
    help="Federated, privacy-preserving PersonaPKT: persona prefixes for dialogue agents.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(config_cmd.app, name="config")


def main() -> None:
    """Run the CLI."""
    app()


if __name__ == "__main__":
    main()
