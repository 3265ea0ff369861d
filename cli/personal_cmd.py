"""``fedpkt chat`` and ``fedpkt export``: use one persona's prefix, locally, from its vault."""

from __future__ import annotations

from pathlib import Path

import typer

from cli.common import console, exits_cleanly

RunArg = typer.Argument(..., help="Run directory of a finished `fedpkt simulate`.")
PersonaOption = typer.Option(..., "--persona", "-p", help="Client (persona) id, e.g. B-0003.")


@exits_cleanly
def chat_command(run_dir: Path = RunArg, persona: str = PersonaOption) -> None:
    """Talk to one personalized prefix (decrypted locally). /reset clears, /quit leaves."""
    from fedpkt.personal import chat_session

    session = chat_session(run_dir, persona)
    console.print(f"chatting with [bold]{persona}[/] (/reset, /quit)")
    while True:
        try:
            line = input("you> ")
        except EOFError:
            break
        command = line.strip()
        if command == "/quit":
            break
        if command == "/reset":
            session.reset()
            console.print("(history cleared)")
            continue
        if not command:
            continue
        console.print(f"{persona}> {session.reply(command)}", highlight=False, markup=False)


@exits_cleanly
def export_command(
    run_dir: Path = RunArg,
    persona: str = PersonaOption,
    out: Path = typer.Option(..., "--out", "-o", help="Adapter directory to write."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace what a non-empty --out holds."
    ),
) -> None:
    """Write a personalized prefix as a PEFT adapter (PeftModel.from_pretrained loads it)."""
    from fedpkt.personal import check_export_target, export_personal_prefix

    check_export_target(out, overwrite)  # before the backbone loads
    path = export_personal_prefix(run_dir, persona, out, overwrite=overwrite)
    console.print(f"PEFT adapter written to {path}")
    console.print("generate with it through fedpkt.model.adapter.load_adapter (see README)")
