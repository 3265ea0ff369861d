"""``fedpkt audit``: did anything but the privacy contract leave a client?

The audit reads a run's egress log (``RUN/egress/<node>.jsonl`` plus the payload bytes in
``RUN/egress/payloads/``, written by the client mod in ``clients/egress.py``) and answers two
questions separately.

1. **Contract** (the shape of every reply). A handshake (``query``) reply holds ConfigRecord
   ``describe`` {client-ids, parts} and MetricRecord ``counts`` {num-examples}, all agreeing with
   the data manifest. A phase-1 ``train`` reply holds ArrayRecord ``arrays`` with exactly the
   prefix arrays of θ_0 for this run (names, float32, shapes: ``fedpkt.source.initial_theta`` on
   the run's config and backbone config; the array bytes must be the numpy file of that shape)
   and MetricRecord ``metrics`` {num-examples, train-loss}. A phase-1 ``evaluate`` reply holds
   MetricRecord ``metrics`` {num-examples, val-loss}. A phase-2 ``train.personalize`` reply to a
   cohort (``client-ids``) is logged and checked persona by persona: persona p's line holds
   MetricRecord ``metrics/p`` with numeric scalars under :data:`fedpkt.local.PHASE2_METRICS`
   names only, and/or p's one-line reason in ConfigRecord ``failed``; whatever no persona of
   the request owns is a finding (``fedpkt.privacy.cohort``). A one-client request may still be
   answered with MetricRecord ``metrics``. Anything else (an extra record, key, array or
   message type) is a ``contract`` finding.

   Under SecAgg+ (``privacy.secagg = true``) every phase-1 ``train`` reply is instead one stage
   of Flower 1.42's ``secaggplus_mod``, all in ConfigRecord ``secaggplus_configs``
   (:data:`SECAGG_STAGES`): *setup* {pk1, pk2} (two PEM elliptic-curve public keys), *share
   keys* {dsts, ctxts} (peer node ids and as many equal-length Fernet tokens), *masked vectors*
   {masked_params} (int64 numpy arrays: the weight factor (1,) then θ's shapes in name order,
   values in [0, 2^32)) plus the FitRes records ``fitres.metrics`` (the phase-1 metrics),
   ``fitres.num_examples`` {num_examples} (the SecAgg+ weight) and ``fitres.status`` {code 0,
   empty message}, and *unmask* {nids, shares} (node ids and as many Shamir shares of 4 + 16·k
   bytes). A plain W_i reply in such a run is a finding: under SecAgg+ W_i never leaves in clear.

2. **Content** (the bytes). Every payload — array bytes, metric and config keys and values,
   error reasons — is searched for the sending client's own data:

   - *text*: lower-cased word sequences (``\\w+``). Dialogue text counts as 8-word windows
     (:data:`TEXT_NGRAM`), taken from each utterance, from each dialogue rendered as the model
     sees it, and from its turns joined by spaces. A window that occurs in the data of at least
     ``max(3, 10% of clients)`` clients (:func:`generic_min_clients`) is generic chit-chat
     ("good question, i never thought about it. what about you?"): it identifies nobody, so it
     is not searched for. Persona sentences and canaries are private by definition and are
     searched for whole (at least :data:`MIN_SENTENCE_WORDS` words and
     :data:`MIN_SENTENCE_CHARS` characters, so that random bytes cannot spell one), never
     filtered. Raw bytes (and bytes values) are read as runs of printable ASCII characters
     written as UTF-8, UTF-16 or UTF-32 in either byte order, BOM or not
     (:data:`TEXT_ENCODINGS`; JSON escapes non-ASCII, so metric and config text is ASCII on
     the wire; those records are also JSON-decoded and scanned).
   - *token ids*: every 8-id window (:data:`TOKEN_WINDOW`) of the client's token sequences from
     the run's backbone tokenizer (its encoded training examples, whole rendered dialogues,
     single utterances, persona sentences, canaries), with the same generic filter on dialogue
     windows and without windows of fewer than 3 distinct ids (those match constant arrays),
     searched as 16-, 32- and 64-bit integers and as float16/32/64 values, in both byte
     orders, at every byte offset; and as runs of integers inside JSON values (lists of
     numbers, digit runs).
   - *canaries*: planted sentences (``data.canaries``) are searched as text and as token ids;
     a hit is a ``canary`` finding.

The byte search is one numpy pass per byte alignment: each pattern is keyed by 8 of its bytes,
a 2^22-entry table rejects almost every position, and the rare survivors are compared in
full. Auditing the embedded run takes seconds.

Out of reach by design: values hidden in float mantissas or spread over many metric keys
(steganography), non-ASCII text inside raw arrays beyond its ASCII words, and dialogue lines
shorter than 8 words that are not persona sentences. Those leaks need a covert encoding; the
contract check bounds the channel they could use.

Where both checks run. The egress mod runs checks 1 and 2 itself on every reply as it is sent
(``client_check``: the same code, against the client's own data, see :mod:`client_check`), so
the log need not keep every payload (``privacy.record_payloads``: all, sampled, none). The
audit checks a line itself when its bytes were kept, and takes the mod's recorded check when
it was made with the audit's rules, contract and data, dropping the generic windows only it
can tell; the report says which lines were checked where (``checked``).

The audit needs the clients' data (it runs where the run directory's ``data/`` is) and, for
each line, its kept bytes or a usable recorded check; without them it stops with exit code 2
rather than call an unchecked run clean.

One module per job, each importing only modules above it in this list; the package re-exports
the public names, so ``from fedpkt.privacy.audit import audit_run`` stays the entry point:

- ``findings``: :class:`Finding` and :class:`AuditReport` (``audit.json``, ``audit.md``);
- ``egress_log``: reading ``RUN/egress/`` (:func:`read_egress`, :func:`load_payload`);
- ``record_checks``: the run's :class:`ContractSpec` and the record/key/scalar/``.npy`` checks
  that the contract and the SecAgg+ checks share;
- ``secagg``: SecAgg+ stage replies (:func:`check_secagg`);
- ``contract``: what each message type may carry (:func:`contract_spec`,
  :func:`check_contract`), phase-2 cohort replies persona by persona;
- ``byte_search``: token-id windows in every encoding at any byte offset (:class:`ByteScanner`);
- ``fingerprints``: a client's data as words and token ids, generic windows, and the
  per-client search tables (:class:`Fingerprint`);
- ``scan``: one reply searched for one client's data (:func:`scan_hits`, :func:`scan_reply`);
- ``backbone``: the run's tokenizer and backbone config (:func:`load_tokenizer`);
- ``client_check``: the same checks run by the egress mod as a reply is sent
  (:class:`ClientChecker`), and read back by the audit (:func:`recorded_findings`);
- ``run``: a whole run directory (:class:`DataIndex`, :func:`audit_run`, :func:`write_audit`).
"""

from __future__ import annotations

from fedpkt.privacy.audit.backbone import load_model_config, load_tokenizer
from fedpkt.privacy.audit.byte_search import ENCODINGS, ByteScanner, encode_windows
from fedpkt.privacy.audit.client_check import ClientChecker, checker_for, recorded_findings
from fedpkt.privacy.audit.contract import (
    HANDSHAKE,
    PHASE1_EVAL,
    PHASE1_EVAL_METRICS,
    PHASE1_TRAIN,
    PHASE2,
    check_contract,
    contract_spec,
)
from fedpkt.privacy.audit.egress_log import EgressEntry, load_payload, parse_entry, read_egress
from fedpkt.privacy.audit.findings import AuditReport, Finding, FindingKind
from fedpkt.privacy.audit.fingerprints import (
    GENERIC_FLOOR,
    GENERIC_SHARE,
    MIN_DISTINCT_IDS,
    MIN_SENTENCE_CHARS,
    MIN_SENTENCE_WORDS,
    TEXT_NGRAM,
    TOKEN_WINDOW,
    ClientSequences,
    Fingerprint,
    GenericSets,
    Source,
    SourceKind,
    WindowSpace,
    client_sequences,
    dialogue_keys,
    generic_min_clients,
    id_hash,
    id_windows,
    text_hash,
    window_hashes,
    words_of,
)
from fedpkt.privacy.audit.record_checks import (
    DP_METRICS,
    PHASE1_TRAIN_METRICS,
    ArraySpec,
    ContractSpec,
)
from fedpkt.privacy.audit.run import (
    CHECKED_BY,
    DataIndex,
    audit_run,
    iter_findings,
    senders,
    write_audit,
)
from fedpkt.privacy.audit.scan import (
    EXCERPT_CHARS,
    LOGGED_WINDOWS,
    SCAN_RULES,
    TEXT_ENCODINGS,
    Hit,
    ascii_runs,
    drop_generic,
    reply_views,
    scan_hits,
    scan_reply,
    text_runs,
)
from fedpkt.privacy.audit.secagg import (
    SECAGG_CONFIGS,
    SECAGG_FITRES,
    SECAGG_MOD_RANGE,
    SECAGG_STAGES,
    check_secagg,
    secagg_stage_of,
)

__all__ = [
    "CHECKED_BY",
    "DP_METRICS",
    "ENCODINGS",
    "EXCERPT_CHARS",
    "GENERIC_FLOOR",
    "GENERIC_SHARE",
    "HANDSHAKE",
    "LOGGED_WINDOWS",
    "MIN_DISTINCT_IDS",
    "MIN_SENTENCE_CHARS",
    "MIN_SENTENCE_WORDS",
    "PHASE1_EVAL",
    "PHASE1_EVAL_METRICS",
    "PHASE1_TRAIN",
    "PHASE1_TRAIN_METRICS",
    "PHASE2",
    "SCAN_RULES",
    "SECAGG_CONFIGS",
    "SECAGG_FITRES",
    "SECAGG_MOD_RANGE",
    "SECAGG_STAGES",
    "TEXT_ENCODINGS",
    "TEXT_NGRAM",
    "TOKEN_WINDOW",
    "ArraySpec",
    "AuditReport",
    "ByteScanner",
    "ClientChecker",
    "ClientSequences",
    "ContractSpec",
    "DataIndex",
    "EgressEntry",
    "Finding",
    "FindingKind",
    "Fingerprint",
    "GenericSets",
    "Hit",
    "Source",
    "SourceKind",
    "WindowSpace",
    "ascii_runs",
    "audit_run",
    "check_contract",
    "check_secagg",
    "checker_for",
    "client_sequences",
    "contract_spec",
    "dialogue_keys",
    "drop_generic",
    "encode_windows",
    "generic_min_clients",
    "id_hash",
    "id_windows",
    "iter_findings",
    "load_model_config",
    "load_payload",
    "load_tokenizer",
    "parse_entry",
    "read_egress",
    "recorded_findings",
    "reply_views",
    "scan_hits",
    "scan_reply",
    "secagg_stage_of",
    "senders",
    "text_hash",
    "text_runs",
    "window_hashes",
    "words_of",
    "write_audit",
]
