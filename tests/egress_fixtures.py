"""Driving the real egress mod (``clients/egress.py``) with crafted replies.

A :class:`Node` is one SuperNode's egress mod, logging into a run directory and checking
replies against a data root as a real node does; ``send`` passes a real Flower request through
it to a handler that answers with the reply the test crafted (a leaky one is the negative
control). The requests carry the run's config as the server sends it (``fedpkt-config``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from clients.egress import EgressTarget, PayloadMode, make_egress_mod
from fedpkt.config import FedpktConfig, config_to_toml
from fedpkt.rundir import RunDir


@pytest.fixture
def node_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replies are stamped with the task a ClientApp runs as; outside a run, fake one."""
    for attr, value in (("_run_id", 1), ("_node_id", 11), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, attr, value)


class Node:
    """One node's egress mod around a handler that returns whatever the test crafted."""

    def __init__(
        self,
        run: RunDir,
        cfg: FedpktConfig,
        node_id: int,
        *,
        payloads: PayloadMode = "all",
        data_root: Path | None = None,
    ) -> None:
        self.payloads = payloads
        target = EgressTarget(run.egress, payloads, data_root)
        self.mod = make_egress_mod(lambda _: target)
        self.context = Context(
            run_id=1, node_id=node_id, node_config={}, state=RecordDict(), run_config={}
        )
        self.config_text = config_to_toml(cfg)
        self.log = run.egress / f"{node_id}.jsonl"

    def send(
        self, message_type: str, config: dict[str, Any], reply: RecordDict | str
    ) -> list[dict[str, Any]]:
        """Pass one request through the mod; ``reply`` is the content (or an error reason) the
        handler answers with. Returns the log lines this reply added."""
        before = len(self.lines())
        records = {"config": ConfigRecord({"fedpkt-config": self.config_text, **config})}
        request = Message(
            RecordDict(records), dst_node_id=self.context.node_id, message_type=message_type
        )

        def handler(msg: Message, _: Context) -> Message:
            if isinstance(reply, str):
                return Message(Error(code=0, reason=reply), reply_to=msg)
            return Message(reply, reply_to=msg)

        self.mod(request, self.context, handler)
        return self.lines()[before:]

    def handshake(self, clients: list[str], parts: list[str], counts: list[int]) -> None:
        """A handshake (no run config in the request, as the server sends it)."""
        content = RecordDict(
            {
                "describe": ConfigRecord({"client-ids": clients, "parts": parts}),
                "counts": MetricRecord({"num-examples": counts}),
            }
        )
        request = Message(
            RecordDict({"config": ConfigRecord({"phase": "handshake"})}),
            dst_node_id=self.context.node_id,
            message_type="query",
        )
        self.mod(request, self.context, lambda msg, _: Message(content, reply_to=msg))

    def lines(self) -> list[dict[str, Any]]:
        if not self.log.is_file():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]
