"""The client half of SecAgg+ for phase 1: Flower's ``secaggplus_mod`` around our train handler.

Flower 1.42's SecAgg+ is legacy-API only: the server workflow sends FitIns-shaped content
(``fitins.parameters`` / ``fitins.config``) and the mod reads the handler's reply as a FitRes
(``fitres.parameters`` / ``fitres.num_examples`` / ``fitres.metrics``). This mod translates
both ways so the same ``train`` handler serves plain and secure rounds:

- in: θ from ``fitins.parameters`` (named by ``secagg-names``) -> ``arrays``; the config as is;
- out: Δ_i = W_i − θ (small, so quantization over ±``privacy.secagg_clipping_range`` keeps
  precision) in name order, weighted by ``secagg-weight``; loss and counts as FitRes metrics.

``secaggplus_mod`` then masks Δ_i and empties the ArrayRecord: the server never sees Δ_i, only
the sum over the round's clients. Messages without SecAgg+ configs pass straight through, so
the mod can sit in every ClientApp; the server decides per run (``privacy.secagg``).
"""

from __future__ import annotations

import json

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat

from fedpkt.errors import FedpktError

# Written by server/secure.py into each SecAgg+ train message's config.
SECAGG_NAMES = "secagg-names"
SECAGG_WEIGHT = "secagg-weight"


def _as_train_request(msg: Message) -> tuple[list[str], dict[str, np.ndarray], float]:
    """Rewrite a FitIns-shaped message in place as our ``config`` + ``arrays`` request."""
    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    config = dict(fitins.config)
    names = [str(n) for n in json.loads(str(config.pop(SECAGG_NAMES, "[]")))]
    weight = float(config.pop(SECAGG_WEIGHT, 1.0))  # type: ignore[arg-type]
    arrays = parameters_to_ndarrays(fitins.parameters)
    if len(names) != len(arrays):
        raise FedpktError(
            f"SecAgg+ train message names {len(names)} arrays but carries {len(arrays)}"
        )
    theta = dict(zip(names, arrays, strict=True))
    msg.content = RecordDict(
        {
            "config": ConfigRecord(config),
            "arrays": ArrayRecord(
                array_dict={n: Array(np.ascontiguousarray(theta[n])) for n in names}
            ),
        }
    )
    return names, theta, weight


def _as_fitres(
    reply: Message, names: list[str], theta: dict[str, np.ndarray], weight: float
) -> Message:
    """Rewrite the handler's reply (W_i, metrics) in place as FitRes content carrying Δ_i."""
    if reply.has_error():
        return reply
    record = reply.content.array_records.get("arrays")
    metrics = reply.content.metric_records.get("metrics")
    if record is None or metrics is None:
        raise FedpktError("phase-1 reply lacks the 'arrays' or 'metrics' record")
    w_i = {key: array.numpy() for key, array in record.items()}
    deltas = [
        (w_i[n].astype(np.float64) - theta[n].astype(np.float64)).astype(theta[n].dtype)
        for n in names
    ]
    fitres = FitRes(
        status=Status(code=Code.OK, message=""),
        parameters=ndarrays_to_parameters(deltas),
        num_examples=weight,  # type: ignore[arg-type]  # SecAgg+ weighs by this value
        metrics=dict(metrics),
    )
    reply.content = compat.fitres_to_recorddict(fitres, keep_input=False)
    return reply


def secagg_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """SecAgg+ for phase-1 train messages that carry SecAgg+ configs; others pass through."""
    if (
        msg.metadata.message_type != MessageType.TRAIN
        or RECORD_KEY_CONFIGS not in msg.content.config_records
    ):
        return call_next(msg, context)

    def train(inner: Message, ctx: Context) -> Message:
        names, theta, weight = _as_train_request(inner)
        return _as_fitres(call_next(inner, ctx), names, theta, weight)

    return secaggplus_mod(msg, context, train)
