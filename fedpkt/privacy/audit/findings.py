"""The audit's results: one :class:`Finding` per breach or leak, and the :class:`AuditReport`
that holds them with the verdict (``audit.json`` and ``audit.md``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

FindingKind = Literal["contract", "text", "token-ids", "canary"]


@dataclass(frozen=True)
class Finding:
    """One breach of the contract, or one piece of a client's data found in what it sent.

    ``log`` is ``<node>.jsonl:<line>``; ``record``/``key`` locate the bytes in the reply;
    ``source`` says which of the client's data matched (content findings), ``encoding`` how it
    was written (``utf-8 text``, ``utf-16-le text``, ``int32-le``, ``json integers`` ...),
    ``matches`` how many distinct windows of that source matched in that record, ``excerpt``
    the first of them; ``checked_by`` who found it: the ``audit`` from the stored bytes, the
    egress mod as the reply was sent (``client``), or both (``client+audit``).
    """

    kind: FindingKind
    detail: str
    log: str
    node: int | None
    client: str | None
    message_type: str
    phase: str | None
    round: int | None
    record: str | None = None
    key: str | None = None
    source: str | None = None
    encoding: str | None = None
    excerpt: str | None = None
    matches: int = 1
    checked_by: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class AuditReport:
    """The verdict and everything that supports it (``audit.json`` is :meth:`to_json`)."""

    run: str
    findings: list[Finding]
    messages: int
    bytes: int
    by_type: dict[str, dict[str, int]]
    clients_scanned: list[str]
    seconds: float = 0.0
    rules: dict[str, Any] = field(default_factory=dict)
    checked: dict[str, list[str]] = field(default_factory=dict)
    """Log lines (``<node>.jsonl:<line>``) by where they were checked: ``audit`` (stored
    bytes), ``client`` (the egress mod's recorded check only), ``client+audit`` (both)."""
    torn: list[str] = field(default_factory=list)
    """Torn last lines skipped (``<node>.jsonl:<line>``): a process died while logging a
    reply, before the reply was sent."""

    @property
    def verdict(self) -> Literal["clean", "violation"]:
        return "violation" if self.findings else "clean"

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "findings": [f.to_json() for f in self.findings],
            "messages": self.messages,
            "bytes": self.bytes,
            "run": self.run,
            "by_message_type": self.by_type,
            "clients_scanned": self.clients_scanned,
            "rules": self.rules,
            "checked": {by: len(logs) for by, logs in self.checked.items()},
            "checked_lines": self.checked,
            "torn_lines": self.torn,
            "seconds": round(self.seconds, 3),
        }

    def _torn_line(self) -> list[str]:
        if not self.torn:
            return []
        return [
            f"Skipped {len(self.torn)} torn last lines ({', '.join(self.torn)}): each process "
            "died while logging a reply, before the reply was sent.",
            "",
        ]

    def _checked_line(self) -> list[str]:
        if not self.checked:
            return []
        counts = {by: len(logs) for by, logs in self.checked.items()}
        return [
            f"Checked from stored bytes by the audit: {counts.get('audit', 0)} lines; by the "
            f"egress mod as they were sent, bytes not kept: {counts.get('client', 0)}; by "
            f"both: {counts.get('client+audit', 0)} (`checked_lines` in audit.json).",
            "",
        ]

    def to_markdown(self) -> str:
        """A human summary: verdict, what was checked, and one table row per finding."""
        lines = [
            f"# Egress audit: {self.verdict.upper()}",
            "",
            f"Run `{self.run}`: {self.messages} replies, {self.bytes} payload bytes, "
            f"{len(self.clients_scanned)} clients' data searched, {len(self.findings)} findings.",
            "",
            *self._checked_line(),
            *self._torn_line(),
            "| message type | replies | bytes |",
            "|---|---:|---:|",
        ]
        for name, row in sorted(self.by_type.items()):
            lines.append(f"| `{name}` | {row['messages']} | {row['bytes']} |")
        lines += ["", "## Findings", ""]
        if not self.findings:
            lines.append("None: every reply matched the contract and no payload held the sender's")
            lines.append("text, token ids or canaries.")
        else:
            lines.append("| kind | client | message | record / key | detail | log | found by |")
            lines.append("|---|---|---|---|---|---|---|")
            for f in self.findings:
                where = f"{f.record or ''}/{f.key or ''}".strip("/")
                detail = f.detail.replace("|", "\\|")
                lines.append(
                    f"| {f.kind} | {f.client or '-'} | `{f.message_type}` | `{where}` | "
                    f"{detail} | {f.log} | {f.checked_by or '-'} |"
                )
        lines += ["", "## Rules", ""]
        for key, value in self.rules.items():
            lines.append(f"- {key}: {value}")
        return "\n".join(lines) + "\n"
