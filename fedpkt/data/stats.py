"""Table 1 of the paper for any split: personas and train/valid/test dialogues per part."""

from __future__ import annotations

from dataclasses import dataclass

from fedpkt.data.schema import PARTS, Part
from fedpkt.data.split import CorpusSplit


@dataclass(frozen=True)
class PartRow:
    """One row of Table 1."""

    part: Part
    personas: int
    train: int
    valid: int
    test: int


def part_table(split: CorpusSplit) -> list[PartRow]:
    """Rows for Parts A, B and C, in that order (a part with no personas gives a zero row)."""
    rows = []
    for part in PARTS:
        clients = split.part(part)
        rows.append(
            PartRow(
                part,
                len(clients),
                sum(c.num_dialogues("train") for c in clients),
                sum(c.num_dialogues("valid") for c in clients),
                sum(c.num_dialogues("test") for c in clients),
            )
        )
    return rows
