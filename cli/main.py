"""Entry point of the ``fedpkt`` console script: registers each command group."""

from __future__ import annotations

import sys

import click
import typer

from cli import backbone_cmd, config_cmd, data_cmd, simulate_cmd
from cli.audit_cmd import audit_command
from cli.baselines_cmd import baselines_command
from cli.compare_cmd import compare_command
from cli.launch_cmd import launch_command
from cli.personal_cmd import chat_command, export_command

app = typer.Typer(
    name="fedpkt",
    help="Federated, privacy-preserving PersonaPKT: persona prefixes for dialogue agents.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(config_cmd.app, name="config")
app.add_typer(backbone_cmd.app, name="backbone")
app.command("simulate")(simulate_cmd.simulate_command)
app.add_typer(data_cmd.app, name="data")
app.command("launch")(launch_command)
app.command("audit")(audit_command)
app.command("baselines")(baselines_command)
app.command("compare")(compare_command)
app.command("chat")(chat_command)
app.command("export")(export_command)


def main() -> None:
    """Run the CLI; a usage error (unknown option, missing or bad argument) is one line with
    the ``--help`` hint and exit code 2, not click's boxed panel."""
    try:
        code = app(standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as err:  # bare `fedpkt`: its help was shown
        code = err.exit_code
    except click.UsageError as err:
        where = err.ctx.command_path if err.ctx else "fedpkt"
        message = " ".join(err.format_message().split())
        click.echo(f"error: {message} (see `{where} --help`)", err=True)
        code = 2
    except click.ClickException as err:  # a bad file argument and the like
        click.echo(f"error: {' '.join(err.format_message().split())}", err=True)
        code = err.exit_code
    except click.Abort:  # Ctrl-C at a prompt (chat)
        click.echo("stopped by SIGINT", err=True)
        code = 130
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
