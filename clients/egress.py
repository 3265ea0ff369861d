"""The egress-audit mod: records every message a client sends, before it leaves the process.

It sits last in the ClientApp's mod chain (closest to the wire), so what it records is exactly
what the SuperNode transmits. Each reply becomes one JSON line in ``EGRESS/<node>.jsonl`` (run,
phase, round, node, sender, message type, and per record its keys, dtypes, shapes, byte sizes
and SHA-256), plus — when payload recording is on — the payload bytes in ``EGRESS/payloads/``,
which ``fedpkt audit`` scans for the sender's own text, token ids and canaries.

SecAgg+ stage replies (``privacy.secagg``) are logged with phase :data:`SECAGG_PHASE` and the
stage the server asked for (``secagg_stage``). Only the masked-vector stage carries fedpkt's
config (inside ``fitins.config``); for the other stages the client id is the node's own when
the node announced exactly one client in its handshake, and null otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

from fedpkt.atomic import atomic_write_bytes

EgressDirFn = Callable[[Context], tuple[Path | None, bool]]

SECAGG_PHASE = "source-secagg"
"""The phase label of every SecAgg+ stage reply (the stages carry no fedpkt phase)."""
SERVED_RECORD = "fedpkt.egress.served"
"""``context.state`` record holding the client ids this node announced in its handshake."""
_FITINS_CONFIG = "fitins.config"  # where a SecAgg+ masked-vector request carries our config


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def describe_content(content: RecordDict) -> tuple[list[dict[str, Any]], bytes]:
    """Per-record description of a RecordDict and the concatenated payload bytes.

    Arrays contribute their wire bytes; metric and config records contribute a canonical JSON
    text of their keys and values, so that text hidden in a key or a value is scanned too.
    """
    records: list[dict[str, Any]] = []
    payload = bytearray()
    for name, record in content.array_records.items():
        for key, array in record.items():
            data = array.data
            records.append(
                {
                    "record": name,
                    "kind": "array",
                    "key": key,
                    "dtype": array.dtype,
                    "shape": list(array.shape),
                    "bytes": len(data),
                    "sha256": _sha256(data),
                    "offset": len(payload),
                }
            )
            payload += data
    for kind, group in (("metric", content.metric_records), ("config", content.config_records)):
        for name, record in group.items():
            for key, value in record.items():
                text = json.dumps({key: value}, sort_keys=True, default=repr).encode("utf-8")
                records.append(
                    {
                        "record": name,
                        "kind": kind,
                        "key": key,
                        "value": value if isinstance(value, int | float | str | bool) else None,
                        "bytes": len(text),
                        "sha256": _sha256(text),
                        "offset": len(payload),
                    }
                )
                payload += text
    return records, bytes(payload)


def secagg_stage(msg: Message) -> str | None:
    """The SecAgg+ stage a train request asks for, or None for any other message.

    Must be read before the request reaches ``secaggplus_mod``, which pops the stage key.
    """
    if msg.metadata.message_type != "train" or not msg.has_content():
        return None
    configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
    stage = configs.get(Key.STAGE) if configs is not None else None
    return str(stage) if stage is not None else None


def request_config(msg: Message) -> dict[str, Any]:
    """fedpkt's per-message config: the ``config`` record, or (SecAgg+ masked-vector stage)
    the legacy ``fitins.config`` record the server wraps it in; {} when there is none."""
    if not msg.has_content():
        return {}
    records = msg.content.config_records
    for name in ("config", _FITINS_CONFIG):
        if name in records:
            return dict(records[name])
    return {}


def remember_served(context: Context, msg: Message, reply: Message) -> None:
    """Keep the client ids of this node's handshake reply in ``context.state`` (local only)."""
    if msg.metadata.message_type != "query" or not reply.has_content():
        return
    describe = reply.content.config_records.get("describe")
    ids = describe.get("client-ids") if describe is not None else None
    if isinstance(ids, list):
        context.state.config_records[SERVED_RECORD] = ConfigRecord(
            {"client-ids": [str(i) for i in ids]}
        )


def sole_served(context: Context) -> str | None:
    """The one client this node announced, or None (no handshake seen, or several clients)."""
    record = context.state.config_records.get(SERVED_RECORD)
    ids = record.get("client-ids") if record is not None else None
    return str(ids[0]) if isinstance(ids, list) and len(ids) == 1 else None


def make_egress_mod(resolve: EgressDirFn) -> Mod:
    """A mod writing the egress log into the directory ``resolve(context)`` names.

    ``resolve`` returns (egress_dir or None to disable, record_payloads).
    """

    def egress_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        # Read the request before the inner mods rewrite it (secaggplus_mod pops the stage).
        stage = secagg_stage(msg)
        config = request_config(msg)
        reply = call_next(msg, context)
        remember_served(context, msg, reply)
        directory, record_payloads = resolve(context)
        if directory is None:
            return reply
        client_id = config.get("client-id")
        if stage is not None and client_id is None:
            client_id = sole_served(context)
        entry: dict[str, Any] = {
            "time": time.time(),
            "run_id": context.run_id,
            "node_id": context.node_id,
            "client_id": client_id,
            "phase": SECAGG_PHASE if stage is not None else config.get("phase"),
            "round": config.get("server-round"),
            "secagg_stage": stage,
            "message_type": msg.metadata.message_type,
            "error": reply.error.reason if reply.has_error() else None,
            "records": [],
            "payload": None,
        }
        if reply.has_content():
            records, payload = describe_content(reply.content)
            entry["records"] = records
            entry["bytes"] = len(payload)
            entry["sha256"] = _sha256(payload)
            if record_payloads:
                name = f"{context.node_id}-{msg.metadata.message_id or entry['sha256'][:16]}.bin"
                atomic_write_bytes(Path(directory) / "payloads" / name, payload)
                entry["payload"] = f"payloads/{name}"
        Path(directory).mkdir(parents=True, exist_ok=True)
        line = json.dumps(entry, sort_keys=True, default=repr) + "\n"
        # One writer per node file; O_APPEND keeps each line whole.
        fd = os.open(
            Path(directory) / f"{context.node_id}.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND
        )
        try:
            os.write(fd, line.encode("utf-8"))
        finally:
            os.close(fd)
        return reply

    return egress_mod
