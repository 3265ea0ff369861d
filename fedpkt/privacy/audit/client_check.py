"""The audit run where a reply is sent: the egress mod's own check of each outgoing line, and
how ``fedpkt audit`` reads it back.

A client knows its run's config (every fedpkt request carries it) and holds its personas'
data, so it can run the audit's two checks itself, with the audit's own code, on the bytes it
is about to send: the contract (:func:`check_contract`) and the content scan
(:func:`scan_hits`) against each owner's data. Which dialogue windows are generic chit-chat
depends on every client's data, which only the audit sees, so the client searches for all of
its data and the audit drops the generic windows from the recorded hits afterwards
(:func:`drop_generic`): the findings are those the audit would get from the bytes themselves.
The log line then needs no copy of the bytes (``privacy.record_payloads``).

The check is recorded in the line as ``client_check``::

    {"rules": SCAN_RULES, "contract_spec": sha256 of the contract (θ's arrays, SecAgg+),
     "data": {client: sha256 of what was searched for}, "contract": [{detail, record, key}],
     "hits": {client: [Hit.to_json(), ...]}}

The audit takes it only when the rules, the contract and each owner's data digest equal its
own (:func:`recorded_findings`); otherwise it needs the stored bytes.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from fedpkt.config import FedpktConfig, load_config_text
from fedpkt.data.partition import load_client, load_manifest
from fedpkt.errors import FedpktError
from fedpkt.privacy.audit.backbone import load_model_config, load_tokenizer
from fedpkt.privacy.audit.contract import check_contract, contract_spec
from fedpkt.privacy.audit.egress_log import EgressEntry
from fedpkt.privacy.audit.findings import Finding
from fedpkt.privacy.audit.fingerprints import Fingerprint, GenericSets, client_sequences
from fedpkt.privacy.audit.record_checks import ContractSpec
from fedpkt.privacy.audit.scan import SCAN_RULES, Hit, drop_generic, scan_hits

FINGERPRINTS_KEPT = 16
"""Personas whose search tables a checker keeps (4 MiB of lookup table each)."""


class ClientChecker:
    """Checks one node's outgoing lines against the run's contract and its personas' data."""

    def __init__(
        self,
        data_root: str | Path,
        cfg: FedpktConfig,
        *,
        tokenizer: Any = None,
        model_config: Any = None,
    ) -> None:
        self.data_root = Path(data_root)
        manifest = load_manifest(self.data_root)
        self.clients = {str(e["client_id"]) for e in manifest["clients"]}
        self.spec = contract_spec(cfg, model_config or load_model_config(cfg), manifest)
        self.tokenizer = tokenizer or load_tokenizer(cfg)
        self.history_turns = cfg.data.history_turns
        self._fingerprints: OrderedDict[str, tuple[Fingerprint, str]] = OrderedDict()

    def fingerprint(self, client_id: str) -> tuple[Fingerprint, str]:
        """The client's unfiltered search tables and the digest of what they search for."""
        if client_id in self._fingerprints:
            self._fingerprints.move_to_end(client_id)
            return self._fingerprints[client_id]
        if client_id not in self.clients:
            raise FedpktError(f"client '{client_id}' has no data under '{self.data_root}'")
        data = load_client(self.data_root, client_id)
        sequences = client_sequences(data, self.tokenizer, self.history_turns)
        built = (Fingerprint.build(sequences, GenericSets.none()), sequences.digest())
        self._fingerprints[client_id] = built
        if len(self._fingerprints) > FINGERPRINTS_KEPT:
            self._fingerprints.popitem(last=False)
        return built

    def check(self, entry: EgressEntry, payload: bytes, owners: Sequence[str]) -> dict[str, Any]:
        """The ``client_check`` record of one line: its contract findings and, for each owner,
        the hits of that owner's data in the line's bytes."""
        contract = [
            {"detail": f.detail, "record": f.record, "key": f.key}
            for f in check_contract(entry, payload, self.spec)
        ]
        decode = getattr(self.tokenizer, "decode", None)
        data, hits = {}, {}
        for client_id in owners:
            fingerprint, data[client_id] = self.fingerprint(client_id)
            found = scan_hits(entry, payload, fingerprint, decode)
            hits[client_id] = [hit.to_json() for hit in found]
        return {
            "rules": SCAN_RULES,
            "contract_spec": self.spec.digest(),
            "data": data,
            "contract": contract,
            "hits": hits,
        }


@functools.lru_cache(maxsize=4)
def checker_for(data_root: str, config_text: str) -> ClientChecker:
    """One checker per (data root, run config) per process: tokenizer and θ_0 built once."""
    return ClientChecker(data_root, load_config_text(config_text))


class DataDigests(Protocol):
    """What :func:`recorded_findings` needs of the audit's data: each client's digest and the
    generic windows (:class:`fedpkt.privacy.audit.run.DataIndex`)."""

    generic: GenericSets

    def digest(self, client_id: str) -> str: ...


def recorded_findings(
    entry: EgressEntry, spec: ContractSpec, index: DataDigests, owners: Sequence[str]
) -> tuple[list[Finding], list[Finding]]:
    """The (contract, content) findings of the egress mod's check of ``entry``, its generic
    windows dropped; FedpktError saying why when the check cannot stand in for the audit's own
    (none recorded, other rules, another contract, other data, an owner left out)."""
    block = entry.client_check
    if block is None:
        raise FedpktError(f"egress log {entry.log} holds no check by the egress mod")
    try:
        if block["rules"] != SCAN_RULES:
            raise FedpktError(f"egress log {entry.log} was checked by other scan rules")
        if block["contract_spec"] != spec.digest():
            raise FedpktError(f"egress log {entry.log} was checked against another contract")
        for client_id in owners:
            if block["data"].get(client_id) != index.digest(client_id):
                raise FedpktError(
                    f"egress log {entry.log} was not checked against client {client_id}'s data "
                    "as the audit has it"
                )
        contract = [
            entry.finding("contract", str(c["detail"]), record=c["record"], key=c["key"])
            for c in block["contract"]
        ]
        content = [
            hit.finding(entry, client_id)
            for client_id in owners
            for hit in drop_generic(
                [Hit.from_json(h) for h in block["hits"].get(client_id, [])], index.generic
            )
        ]
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise FedpktError(
            f"egress log {entry.log} has a malformed client_check ({type(err).__name__}: {err})"
        ) from None
    return contract, content
