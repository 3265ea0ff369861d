"""fedpkt's wire format: the record and key names of every Flower message, and the converters.

Server and clients are independent layers (neither imports the other), yet they must agree on
every name a message carries. Those names live here, once, in a small layer below both (see the
import contract in ``pyproject.toml``); ``fedpkt`` itself never imports Flower.

Messages (Flower Message API; ``RecordDict`` content):

- every request: ``config`` (ConfigRecord) with ``fedpkt-config`` (the resolved TOML),
  ``phase``, ``server-round`` and either ``client-id`` + ``seed`` (phase 1: one client per
  message) or ``client-ids`` + ``seeds`` (phase 2: a *cohort*, one or more personas of the
  node); phase 1 and personalization requests also carry ``arrays`` (θ or the source prefix).
- phase-1 reply: ``arrays`` (W_i) and ``metrics`` (``num-examples``, ``train-loss``,
  ``epsilon`` under DP-SGD); evaluate reply: ``metrics`` (``num-examples``, ``val-loss``).
- phase-2 reply: one MetricRecord per persona, named :func:`persona_metrics_record`, holding
  that persona's metric scalars only; and, when a persona failed, ``failed`` (ConfigRecord:
  client id -> one-line reason). Nothing else: the privacy contract (``fedpkt audit``) checks it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict

# The phase-2 cohort naming is part of the privacy contract, so fedpkt holds it (the audit
# checks it without importing this module); re-exported here for the server and clients.
from fedpkt.privacy.cohort import FAILED as FAILED
from fedpkt.privacy.cohort import PERSONA_METRICS_PREFIX as PERSONA_METRICS_PREFIX
from fedpkt.privacy.cohort import persona_metrics_record as persona_metrics_record
from fedpkt.privacy.cohort import persona_of_record as persona_of_record

Arrays = dict[str, np.ndarray]

# Record names.
CONFIG = "config"
ARRAYS = "arrays"
METRICS = "metrics"

# Keys of the ``config`` record.
FEDPKT_CONFIG = "fedpkt-config"
PHASE = "phase"
SERVER_ROUND = "server-round"
CLIENT_ID = "client-id"
CLIENT_IDS = "client-ids"
SEED = "seed"
SEEDS = "seeds"

# Phase labels (``config.phase``) and the phase-2 message type.
PHASE_SOURCE = "source"
PHASE_PERSONALIZE = "personalize"
PERSONALIZE_TYPE = "train.personalize"


def to_array_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Named numpy arrays -> an ArrayRecord (C-contiguous copies, order kept)."""
    return ArrayRecord(array_dict={k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def from_array_record(record: ArrayRecord) -> Arrays:
    """An ArrayRecord -> named numpy arrays."""
    return {key: array.numpy() for key, array in record.items()}


def arrays_of(content: RecordDict) -> Arrays | None:
    """The ``arrays`` record of a message as numpy arrays; None when absent or empty."""
    record = content.array_records.get(ARRAYS)
    if record is None or len(record) == 0:
        return None
    return from_array_record(record)
