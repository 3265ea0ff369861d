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
    was written (``utf-8 text``, ``int32-le``, ``json integers`` ...), ``matches`` how many
    distinct windows of that source matched in that record, ``excerpt`` the first of them.
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
            "seconds": round(self.seconds, 3),
        }

    def to_markdown(self) -> str:
        """A human summary: verdict, what was checked, and one table row per finding."""
        lines = [
            f"# Egress audit: {self.verdict.upper()}",
            "",
            f"Run `{self.run}`: {self.messages} replies, {self.bytes} payload bytes, "
            f"{len(self.clients_scanned)} clients' data searched, {len(self.findings)} findings.",
            "",
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
            lines.append("| kind | client | message | record / key | detail | log |")
            lines.append("|---|---|---|---|---|---|")
            for f in self.findings:
                where = f"{f.record or ''}/{f.key or ''}".strip("/")
                detail = f.detail.replace("|", "\\|")
                lines.append(
                    f"| {f.kind} | {f.client or '-'} | `{f.message_type}` | `{where}` | "
                    f"{detail} | {f.log} |"
                )
        lines += ["", "## Rules", ""]
        for key, value in self.rules.items():
            lines.append(f"- {key}: {value}")
        return "\n".join(lines) + "\n"
