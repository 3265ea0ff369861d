"""server/grid.py: the ServerApp's grid pulls replies every 0.1 s, on every backend."""

from __future__ import annotations

import time
from types import SimpleNamespace

from server.grid import PromptGrid, prompt


class SlowGrid:
    """A grid whose replies become available ``ready_s`` seconds after the push (message
    ``i`` gets id ``m{i}``); counts the pulls. Only what PromptGrid calls is here."""

    def __init__(self, ready_s: list[float]) -> None:
        self.ready_s = ready_s
        self.pulls = 0
        self.pushed_at = 0.0
        self.delivered: set[str] = set()

    def push_messages(self, messages):
        self.pushed_at = time.monotonic()
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, message_ids):
        self.pulls += 1
        now = time.monotonic() - self.pushed_at
        ready = [
            f"m{i}"
            for i, at in enumerate(self.ready_s)
            if at <= now and f"m{i}" in set(message_ids) and f"m{i}" not in self.delivered
        ]
        self.delivered.update(ready)
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=m)) for m in ready]


def test_replies_are_pulled_every_tenth_of_a_second() -> None:
    """Replies ready 0.3 s and 0.5 s after the push: all are back about 0.5 s after it (Flower's
    HTTP grid would sleep 3 s after its first empty pull), in 5-7 pulls of 0.1 s."""
    inner = SlowGrid([0.3, 0.5])
    started = time.monotonic()
    replies = PromptGrid(inner).send_and_receive([object(), object()], timeout=10)
    took = time.monotonic() - started
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m0", "m1"]
    assert 0.5 <= took < 1.5
    assert 5 <= inner.pulls <= 12


def test_timeout_returns_the_replies_that_came() -> None:
    """One reply at 0.1 s, the other never: after the 0.5 s timeout only the first is back."""
    inner = SlowGrid([0.1, 99.0])
    started = time.monotonic()
    replies = PromptGrid(inner).send_and_receive([object(), object()], timeout=0.5)
    assert [r.metadata.reply_to_message_id for r in replies] == ["m0"]
    assert 0.5 <= time.monotonic() - started < 1.5


def test_a_grid_is_wrapped_once() -> None:
    wrapped = prompt(SlowGrid([]))  # type: ignore[arg-type]
    assert isinstance(wrapped, PromptGrid)
    assert prompt(wrapped) is wrapped
