"""The egress-audit mod: records every message a client sends, before it leaves the process.

It sits last in the ClientApp's mod chain (closest to the wire), so what it records is exactly
what the SuperNode transmits. Each reply becomes one JSON line in ``EGRESS/<node>.jsonl`` (run,
phase, round, node, sender, message type, and per record its keys, dtypes, shapes, byte sizes
and SHA-256), plus — when payload recording is on — the payload bytes in ``EGRESS/payloads/``,
which ``fedpkt audit`` scans for the sender's own text, token ids and canaries.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.app import Context, Message, RecordDict
from flwr.clientapp.typing import ClientAppCallable, Mod

from fedpkt.atomic import atomic_write_bytes

EgressDirFn = Callable[[Context], tuple[Path | None, bool]]


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


def make_egress_mod(resolve: EgressDirFn) -> Mod:
    """A mod writing the egress log into the directory ``resolve(context)`` names.

    ``resolve`` returns (egress_dir or None to disable, record_payloads).
    """

    def egress_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(msg, context)
        directory, record_payloads = resolve(context)
        if directory is None:
            return reply
        config = msg.content.config_records.get("config", {}) if msg.has_content() else {}
        entry: dict[str, Any] = {
            "time": time.time(),
            "run_id": context.run_id,
            "node_id": context.node_id,
            "client_id": config.get("client-id"),
            "phase": config.get("phase"),
            "round": config.get("server-round"),
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
