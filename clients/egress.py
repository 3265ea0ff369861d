"""The egress-audit mod: records every message a client sends, before it leaves the process.

It sits last in the ClientApp's mod chain (closest to the wire), so what it records is exactly
what the SuperNode transmits. Each reply becomes one JSON line in ``EGRESS/<node>.jsonl`` (run,
phase, round, node, sender, message type, and per record its keys, dtypes, shapes, byte sizes
and SHA-256). A phase-2 *cohort* reply (its request names ``client-ids``) becomes one line per
persona, holding only the records that persona owns (``fedpkt.privacy.cohort``), plus one line
(``client_id`` null) for whatever belongs to no persona of the request and for an error reason;
its lines share ``message_id``, ``cohort`` and ``reply_sha256``.

Before a line is written the mod runs ``fedpkt audit``'s own checks on its bytes, where the
client's data is (``fedpkt.privacy.audit.client_check``): the contract, and the content scan
against the owner's data; the result goes into the line (``client_check``). The bytes
themselves are kept in ``EGRESS/payloads/<sha256>.bin`` (identical bytes stored once) as
:func:`keep_payload` decides from ``privacy.record_payloads``: always when the mod could not
check them (no run config in the request: handshakes, SecAgg+ key stages; or the check failed);
``all``: every line; ``sampled``: lines up to :data:`SMALL_PAYLOAD_BYTES` and every line of
round :data:`SAMPLED_ROUND`; ``none``: no other.

SecAgg+ stage replies (``privacy.secagg``) are logged with phase :data:`SECAGG_PHASE` and the
stage the server asked for (``secagg_stage``). Only the masked-vector stage carries fedpkt's
config (inside ``fitins.config``); for the other stages the client id is the node's own when
the node announced exactly one client in its handshake, and null otherwise.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

from fedpkt.atomic import atomic_write_bytes
from fedpkt.errors import FedpktError
from fedpkt.jsonl import append_line
from fedpkt.privacy.audit import checker_for, parse_entry
from fedpkt.privacy.cohort import owner_of
from wire import CLIENT_ID, CLIENT_IDS, CONFIG, FEDPKT_CONFIG, PHASE, SERVER_ROUND

PayloadMode = Literal["all", "sampled", "none"]
PAYLOAD_MODES: tuple[PayloadMode, ...] = ("all", "sampled", "none")
SMALL_PAYLOAD_BYTES = 16 * 1024
"""Lines up to this size keep their bytes under ``sampled``: metric replies, handshakes and
key material cost little; prefix arrays (599 KB per reply on the embedded default) do."""
SAMPLED_ROUND = 1
"""The round whose lines keep their bytes under ``sampled``, so that the audit checks one
whole round itself and compares it with the mod's own checks."""


@dataclass(frozen=True)
class EgressTarget:
    """Where and how a node logs: the egress directory (None: no log), which payload bytes to
    keep, and the node's data root (None: the mod checks nothing itself, so keeps every
    payload)."""

    directory: Path | None
    payloads: PayloadMode = "all"
    data_root: Path | None = None


EgressTargetFn = Callable[[Context], EgressTarget]

SECAGG_PHASE = "source-secagg"
"""The phase label of every SecAgg+ stage reply (the stages carry no fedpkt phase)."""
SERVED_RECORD = "fedpkt.egress.served"
"""``context.state`` record holding the client ids this node announced in its handshake."""
_FITINS_CONFIG = "fitins.config"  # where a SecAgg+ masked-vector request carries our config


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def payload_mode(value: Any) -> PayloadMode:
    """A ``record-payloads`` setting as a mode: all, sampled or none (true/false: all/none)."""
    if isinstance(value, bool):
        return "all" if value else "none"
    text = {"true": "all", "false": "none"}.get(str(value).strip().lower(), str(value).strip())
    for mode in PAYLOAD_MODES:
        if text == mode:
            return mode
    raise FedpktError(f"record-payloads is {value!r}; expected one of {', '.join(PAYLOAD_MODES)}")


def payload_mode_of(context: Context, defaults: Mapping[str, Any]) -> PayloadMode:
    """The node's ``record-payloads`` (node config > run config > ``defaults``; sampled)."""
    merged = {**defaults, **dict(context.run_config), **dict(context.node_config)}
    return payload_mode(merged.get("record-payloads", "sampled"))


def keep_payload(mode: PayloadMode, size: int, round_num: Any, checked: bool) -> bool:
    """Whether a line keeps its bytes: always when the mod did not check them; else ``all``;
    ``sampled`` for lines of at most SMALL_PAYLOAD_BYTES or of round SAMPLED_ROUND; never
    under ``none``."""
    if not checked or mode == "all":
        return True
    return mode == "sampled" and (size <= SMALL_PAYLOAD_BYTES or round_num == SAMPLED_ROUND)


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
    for name in (CONFIG, _FITINS_CONFIG):
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


def split_by_owner(
    records: list[dict[str, Any]], payload: bytes, cohort: list[str]
) -> list[tuple[str | None, list[dict[str, Any]], bytes]]:
    """A cohort reply's records and bytes as (persona, its records, its bytes), one per persona
    of ``cohort`` in order, then (None, ...) for the records no persona owns (if any). Each
    part's record offsets point into the part's own bytes."""
    owned: dict[str | None, list[dict[str, Any]]] = {persona: [] for persona in cohort}
    for record in records:
        owner = owner_of(str(record["record"]), str(record["key"]), cohort)
        owned.setdefault(owner, []).append(record)
    parts = []
    for owner, mine in owned.items():
        if owner is None and not mine:
            continue
        data = bytearray()
        rebased = []
        for record in mine:
            start = int(record["offset"])
            rebased.append({**record, "offset": len(data)})
            data += payload[start : start + int(record["bytes"])]
        parts.append((owner, rebased, bytes(data)))
    return parts


def _cohort_of(config: dict[str, Any]) -> list[str] | None:
    ids = config.get(CLIENT_IDS)
    if not isinstance(ids, list):
        return None
    return list(dict.fromkeys(str(i) for i in ids))  # request order, each once


def _client_check(
    target: EgressTarget, config: dict[str, Any], entry: dict[str, Any], payload: bytes
) -> tuple[dict[str, Any] | None, str | None]:
    """The mod's own check of one line (``client_check``), or (None, why it did not run)."""
    # Every persona of a cohort: one persona's part may leak another's data.
    owners = entry.get("cohort") or ([entry["client_id"]] if entry["client_id"] else None)
    config_text = config.get(FEDPKT_CONFIG)
    if target.data_root is None or not isinstance(config_text, str) or not owners:
        return None, None
    try:
        checker = checker_for(str(target.data_root), config_text)
        where = f"{entry['node_id']}.jsonl (as sent)"
        return checker.check(parse_entry(entry, where), payload, owners), None
    except Exception as err:  # the reply still leaves; its bytes are kept for the audit instead
        return None, f"{type(err).__name__}: {err}"[:300]


def _append_line(directory: Path, node_id: int, entry: dict[str, Any]) -> None:
    # One writer per node file; whole fsynced lines, never a torn one (fedpkt.jsonl).
    append_line(directory / f"{node_id}.jsonl", entry)


def log_reply(
    target: EgressTarget,
    context: Context,
    msg: Message,
    reply: Message,
    config: dict[str, Any],
    stage: str | None,
) -> list[dict[str, Any]]:
    """Write the egress lines of one reply (one, or one per persona of a cohort); returns them."""
    directory = Path(str(target.directory))
    cohort = _cohort_of(config)
    client_id = config.get(CLIENT_ID)
    if stage is not None and client_id is None:
        client_id = sole_served(context)
    records, payload = describe_content(reply.content) if reply.has_content() else ([], b"")
    base: dict[str, Any] = {
        "time": time.time(),
        "run_id": context.run_id,
        "node_id": context.node_id,
        "message_id": msg.metadata.message_id or None,
        "phase": SECAGG_PHASE if stage is not None else config.get(PHASE),
        "round": config.get(SERVER_ROUND),
        "secagg_stage": stage,
        "message_type": msg.metadata.message_type,
    }
    error = reply.error.reason if reply.has_error() else None
    if cohort is None:
        parts = [(client_id, records, payload)]
    else:  # an error reply has no content: one line, for the whole cohort, with the reason
        parts = split_by_owner(records, payload, cohort) if error is None else [(None, [], b"")]
        base.update(cohort=cohort, reply_sha256=_sha256(payload), reply_bytes=len(payload))
    lines = []
    for owner, mine, data in parts:
        entry = {**base, "client_id": owner, "records": mine, "payload": None}
        entry["error"] = error if owner is None or cohort is None else None
        if mine:
            entry.update(bytes=len(data), sha256=_sha256(data))
        check, why = _client_check(target, config, entry, data) if mine or error else (None, None)
        entry.update(client_check=check, client_check_error=why)
        if mine and keep_payload(target.payloads, len(data), entry["round"], check is not None):
            name = f"payloads/{entry['sha256']}.bin"
            if not (directory / name).is_file():  # identical bytes are stored once
                atomic_write_bytes(directory / name, data)
            entry["payload"] = name
        _append_line(directory, context.node_id, entry)
        lines.append(entry)
    return lines


def make_egress_mod(resolve: EgressTargetFn) -> Mod:
    """A mod writing the egress log as ``resolve(context)`` says (:class:`EgressTarget`)."""

    def egress_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        # Read the request before the inner mods rewrite it (secaggplus_mod pops the stage).
        stage = secagg_stage(msg)
        config = request_config(msg)
        reply = call_next(msg, context)
        remember_served(context, msg, reply)
        target = resolve(context)
        if target.directory is not None:
            log_reply(target, context, msg, reply, config, stage)
        return reply

    return egress_mod
