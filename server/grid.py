"""The Grid fedpkt's ServerApp talks through: Flower's own, with replies pulled every 0.1 s.

``Grid.send_and_receive`` pushes messages and pulls their replies until all have come. Flower's
in-memory grid (``fedpkt simulate``) pulls every 0.1 s; the grid of a real deployment
(``fedpkt launch``, ``flwr run``) sleeps 3 s between pulls, so every exchange of a round waited
up to 3 s for replies that were already at the SuperLink. ``PromptGrid`` wraps either and pulls
every ``PULL_EVERY_S`` in both, so the two backends wait alike; everything else is delegated.
It wraps the grid once, in the ServerApp's entry point, so that every exchange goes through it,
including those of Flower's SecAgg+ workflow (``server/secure.py``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run

PULL_EVERY_S = 0.1
"""Seconds between two pulls for replies (Flower's in-memory grid uses the same)."""


class PromptGrid(Grid):
    """``grid`` with a ``send_and_receive`` that pulls replies every :data:`PULL_EVERY_S`."""

    def __init__(self, grid: Grid, pull_every_s: float = PULL_EVERY_S) -> None:
        self.inner = grid
        self.pull_every_s = pull_every_s

    def set_run(self, run: Run) -> None:
        self.inner.set_run(run)

    @property
    def run(self) -> Run:
        return self.inner.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def get_nodes(self) -> Iterable:
        return self.inner.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.inner.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push ``messages``; return the replies that came within ``timeout`` (None: all)."""
        pending = set(self.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while pending:
            got = list(self.pull_messages(pending))
            replies.extend(got)
            pending.difference_update(m.metadata.reply_to_message_id for m in got)
            if not pending or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(self.pull_every_s)
        return replies


def prompt(grid: Grid) -> Grid:
    """``grid`` wrapped in a :class:`PromptGrid` (once: a wrapped grid is returned as is)."""
    return grid if isinstance(grid, PromptGrid) else PromptGrid(grid)
