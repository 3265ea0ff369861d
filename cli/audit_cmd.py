"""``fedpkt audit RUN``: the verdict on what the clients of a run sent.

Exit codes: 0 clean, 1 violation (``audit.json``/``audit.md`` name every finding), 2 bad input
(not a run directory, no egress log, a malformed or tampered log line; nothing is written).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from cli.common import console, exits_cleanly

if TYPE_CHECKING:  # the audit imports torch and opacus: loaded only when it runs
    from fedpkt.privacy.audit import AuditReport

MAX_ROWS = 20


def _findings_table(report: AuditReport) -> Table:
    table = Table(title=f"findings ({len(report.findings)})")
    for column in ("kind", "client", "message", "record/key", "detail"):
        table.add_column(column, overflow="fold")
    for finding in report.findings[:MAX_ROWS]:
        where = f"{finding.record or ''}/{finding.key or ''}".strip("/")
        table.add_row(
            finding.kind, finding.client or "-", finding.message_type, where, finding.detail
        )
    return table


@exits_cleanly
def audit_command(
    run: Path = typer.Argument(..., help="The run directory to audit (holds egress/)."),
) -> None:
    """Check every message the clients sent against the privacy contract and their own data."""
    from fedpkt.privacy.audit import audit_run, write_audit

    report = audit_run(run)
    json_path, md_path = write_audit(run, report)
    colour = "green" if report.verdict == "clean" else "bold red"
    console.print(
        f"[{colour}]{report.verdict.upper()}[/]: {report.messages} replies, {report.bytes} bytes, "
        f"{len(report.clients_scanned)} clients' data searched in {report.seconds:.1f}s",
        highlight=False,
    )
    counts = {by: len(logs) for by, logs in report.checked.items()}
    console.print(
        f"checked from kept bytes: {counts.get('audit', 0)} lines, by the egress mod as sent: "
        f"{counts.get('client', 0)}, both: {counts.get('client+audit', 0)}",
        highlight=False,
    )
    if report.findings:
        console.print(_findings_table(report))
        if len(report.findings) > MAX_ROWS:
            console.print(f"... and {len(report.findings) - MAX_ROWS} more in {md_path}")
    console.print(f"wrote {json_path} and {md_path}", highlight=False)
    if report.verdict != "clean":
        raise typer.Exit(code=1)
