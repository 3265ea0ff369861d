"""Phase 1 as a Flower Message-API strategy, on SourceTrainer (any ``fedpkt.strategies`` plug-in).

The four Strategy hooks only translate between Flower messages and ``fedpkt.source``'s
SourceTrainer (sampling, validation, the configured strategy's outer step). The round loop,
``Phase1Hooks.start`` (Flower's signature), lives once and adds what the stock loop lacks: a
checkpoint after every round, resume, the minimum-successful-clients rule, and one
``metrics.jsonl`` line per round. The client-level DP and SecAgg+ wrappers
(``server/secure.py``) are ``Phase1Hooks`` too and run the same loop through their own hooks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from logging import INFO, WARNING

import numpy as np
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy
from flwr.supercore import log

from fedpkt.errors import FedpktError
from fedpkt.rundir import RunDir
from fedpkt.source import ClientUpdate, SourceTrainer, client_seed
from wire import CLIENT_ID, CONFIG, from_array_record, to_array_record

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class ClientEntry:
    """What the handshake told the server about one client: its node, Part and n_i."""

    client_id: str
    node_id: int
    part: str
    num_examples: int


@dataclass
class ClientDirectory:
    """client id -> (node, Part, n_i), built from the clients' handshake replies."""

    entries: dict[str, ClientEntry] = field(default_factory=dict)

    def part(self, part: str) -> list[ClientEntry]:
        return [e for cid, e in sorted(self.entries.items()) if e.part == part]


def client_message(
    entry: ClientEntry,
    message_type: str,
    config: dict,
    arrays: Arrays | None = None,
) -> Message:
    """One message to one client: the common config plus (optionally) prefix arrays."""
    content = RecordDict({CONFIG: ConfigRecord({CLIENT_ID: entry.client_id, **config})})
    if arrays is not None:
        content["arrays"] = to_array_record(arrays)
    return Message(content=content, message_type=message_type, dst_node_id=entry.node_id)


def reply_client(sent: dict[str, Message], reply: Message) -> str:
    """Which client a reply answers for, by the id of the request it replies to.

    Flower assigns each message its id when it is pushed, so ``sent`` holds the same Message
    objects that went out. A reply to nothing we sent is named after its node.
    """
    wanted = reply.metadata.reply_to_message_id
    for client_id, request in sent.items():
        if request.metadata.message_id == wanted:
            return client_id
    return f"node-{reply.metadata.src_node_id}"


class Phase1Hooks(Strategy):
    """A phase-1 strategy whose four hooks end in a ``SourcePrefixStrategy`` (``source``):
    that strategy itself, or a wrapper around it (client-level DP, SecAgg+).

    ``start`` is the one round loop. It has Flower's signature; what Flower's arguments do not
    carry comes from ``source``: the rounds already done (``trainer.round``, > 0 on resume),
    the total ``phase1.rounds`` (``num_rounds`` must equal it: the config is the single
    source), the checkpoint directory and the round callback. ``train_config``,
    ``evaluate_config`` and ``evaluate_fn`` must stay None: every client setting travels in the
    config each message carries, and there is no server-side evaluation.
    """

    source: SourcePrefixStrategy

    def round_info(self) -> dict[str, object]:
        """Extra fields for this round's event (``metrics.jsonl``): none unless a wrapper adds."""
        return {}

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> Result:
        """Run rounds trainer.round+1..num_rounds, checkpointing after each; ``Result.arrays``
        is the final θ."""
        source = self.source
        if num_rounds != source.cfg.rounds:
            raise FedpktError(
                f"num_rounds={num_rounds}; expected phase1.rounds={source.cfg.rounds}"
            )
        if train_config or evaluate_config or evaluate_fn is not None:
            raise FedpktError("phase 1 takes its client settings from the config it sends")
        self.summary()
        result = Result()
        arrays = initial_arrays
        for server_round in range(source.trainer.round + 1, num_rounds + 1):
            started = time.perf_counter()
            replies = grid.send_and_receive(
                messages=self.configure_train(server_round, arrays, ConfigRecord(), grid),
                timeout=timeout,
            )
            sampled = source.sampled()
            arrays, train_metrics = self.aggregate_train(server_round, list(replies))
            if arrays is None:  # a wrapper skipped aggregation: θ stays, the round still counts
                source.trainer.skip_round(server_round)
                arrays = to_array_record(source.trainer.theta)
            replies = grid.send_and_receive(
                messages=self.configure_evaluate(server_round, arrays, ConfigRecord(), grid),
                timeout=timeout,
            )
            eval_metrics = self.aggregate_evaluate(server_round, list(replies))
            result.train_metrics_clientapp[server_round] = train_metrics
            event = source.round_event(server_round, sampled, eval_metrics, started)
            event.update(self.round_info())
            source.finish_round(event)
        result.arrays = to_array_record(source.trainer.theta)
        return result


class SourcePrefixStrategy(Phase1Hooks):
    """Source-prefix training over Part A clients with the configured phase-1 strategy."""

    def __init__(
        self,
        trainer: SourceTrainer,
        directory: ClientDirectory,
        config_text: str,
        run: RunDir,
        on_round: Callable[[dict], None] | None = None,
    ) -> None:
        self.trainer = trainer
        self.directory = directory
        self.config_text = config_text
        self.run = run
        self.on_round = on_round
        self.cfg = trainer.cfg
        # client id -> the message sent to it this round. Replies are matched by message id,
        # never by node: one SuperNode may serve several clients.
        self._sent: dict[str, Message] = {}
        self.failures: list[dict] = []
        self.train_loss = float("nan")
        self.epsilons: dict[str, float] = {}  # DP-SGD: ε of each client's last participation

    @property
    def source(self) -> SourcePrefixStrategy:  # type: ignore[override]
        return self

    def summary(self) -> None:
        log(
            INFO,
            "\t├── %s, sampling=%s (T=%s), b_out=%d, k=%d, alpha=%g, rounds=%d",
            self.trainer.strategy.describe(),
            self.cfg.sampling,
            self.cfg.temperature,
            self.cfg.clients_per_round,
            self.cfg.inner_steps,
            self.cfg.inner_lr,
            self.cfg.rounds,
        )

    def sampled(self) -> list[str]:
        """The clients the last ``configure_train`` / ``configure_evaluate`` addressed."""
        return list(self._sent)

    def record_epsilon(self, client_id: str, epsilon: float) -> None:
        """Keep a client's DP-SGD ε of its last participation (the round event's maximum)."""
        self.epsilons[client_id] = float(epsilon)

    def _common(self, server_round: int, client_id: str, phase: str, purpose: str) -> dict:
        return {
            "fedpkt-config": self.config_text,
            "server-round": server_round,
            "phase": phase,
            "seed": client_seed(self.trainer.seed, server_round, client_id, purpose),
        }

    # -- train --------------------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        theta = from_array_record(arrays)
        sampled = self.trainer.sample_train()
        self.failures = []
        messages = []
        for cid in sampled:
            common = self._common(server_round, cid, "source", "train")
            extra = {
                "steps": self.cfg.inner_steps,
                "lr": self.cfg.inner_lr,
                "batch-size": self.cfg.inner_batch_size,
            }
            messages.append(
                client_message(
                    self.directory.entries[cid], MessageType.TRAIN, {**common, **extra}, theta
                )
            )
        self._sent = {str(m.content[CONFIG][CLIENT_ID]): m for m in messages}
        return messages

    def _reply_client(self, msg: Message) -> str:
        """The client a reply answers for: the one its request was sent to."""
        return reply_client(self._sent, msg)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        updates = self.collect_updates(server_round, replies)
        theta = self.trainer.apply([u for _, u in updates])
        return to_array_record(theta), self.train_metrics([u for _, u in updates])

    def train_metrics(self, updates: list[ClientUpdate]) -> MetricRecord:
        """The round's train metrics; also keeps the mean loss for the round event."""
        self.train_loss = float(np.mean([u.loss for u in updates]))
        return MetricRecord(
            {
                "train-loss": self.train_loss,
                "num-clients": len(updates),
                "failures": len(self.failures),
            }
        )

    def collect_updates(
        self, server_round: int, replies: Iterable[Message]
    ) -> list[tuple[Message, ClientUpdate]]:
        """The round's valid replies, each with its parsed update; the rest become failures.

        Raises when fewer than ``min_clients`` are valid. Kept apart from the outer step so a
        wrapper (client-level DP, ``server/secure.py``) can aggregate the same screened replies.
        """
        updates: list[tuple[Message, ClientUpdate]] = []
        seen: set[str] = set()
        for msg in replies:
            cid = self._reply_client(msg)
            seen.add(cid)
            if msg.has_error():
                self._fail(server_round, cid, f"client error: {msg.error.reason}")
                continue
            try:
                record = msg.content.array_records.get("arrays")
                metrics = msg.content.metric_records.get("metrics")
                if record is None or metrics is None:
                    raise FedpktError("reply lacks the 'arrays' or 'metrics' record")
                update = ClientUpdate(
                    client_id=cid,
                    arrays=from_array_record(record),
                    num_examples=_whole(metrics["num-examples"], "num-examples"),
                    loss=float(metrics["train-loss"]),
                )
                self.trainer.validate(update)
                if "epsilon" in metrics:
                    self.record_epsilon(cid, float(metrics["epsilon"]))
            except (FedpktError, KeyError, ValueError, TypeError) as err:
                self._fail(server_round, cid, f"rejected reply: {err}")
                continue
            updates.append((msg, update))
        for cid in self._sent:
            if cid not in seen:
                self._fail(server_round, cid, "no reply before the timeout")
        if len(updates) < self.cfg.min_clients:
            raise FedpktError(
                f"round {server_round}: {len(updates)} valid replies, fewer than "
                f"phase1.min_clients={self.cfg.min_clients}; continue with --resume (which may "
                "lower phase1.min_clients or raise phase1.client_timeout_s)"
            )
        return updates

    def _fail(self, server_round: int, client_id: str, reason: str) -> None:
        log(WARNING, "round %d: client %s left out: %s", server_round, client_id, reason)
        self.failures.append({"client_id": client_id, "reason": reason})

    # -- evaluate -----------------------------------------------------------------------------
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        theta = from_array_record(arrays)
        sampled = self.trainer.sample_eval()
        messages = [
            client_message(
                self.directory.entries[cid],
                MessageType.EVALUATE,
                self._common(server_round, cid, "source", "eval"),
                theta,
            )
            for cid in sampled
        ]
        self._sent = dict(zip(sampled, messages, strict=True))
        return messages

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        losses, counts = [], []
        for msg in replies:
            if msg.has_error():
                self._fail(server_round, self._reply_client(msg), msg.error.reason)
                continue
            metrics = msg.content.metric_records.get("metrics", {})
            loss, count = (
                float(metrics.get("val-loss", np.nan)),
                int(metrics.get("num-examples", 0)),
            )
            if np.isfinite(loss) and count > 0:
                losses.append(loss)
                counts.append(count)
        if not losses:
            return None
        return MetricRecord({"val-loss": float(np.average(losses, weights=counts))})

    # -- the round's record --------------------------------------------------------------------
    def round_event(
        self,
        server_round: int,
        sampled: list[str],
        eval_metrics: MetricRecord | None,
        started: float,
    ) -> dict:
        """The round's ``metrics.jsonl`` event (a wrapper's ``round_info`` is added to it)."""
        failures = list(self.failures)
        return {
            "event": "round",
            "round": server_round,
            "sampled": sampled,
            "train_loss": self.train_loss,
            "val_loss": float(eval_metrics["val-loss"]) if eval_metrics else None,
            "failures": len(failures),
            "epsilon_max": max(self.epsilons.values()) if self.epsilons else None,
            "failure_reasons": failures,
            "seconds": time.perf_counter() - started,
        }

    def finish_round(self, event: dict) -> None:
        """Checkpoint first (a round is logged only once it can be resumed from), then log."""
        self.trainer.save(self.run.checkpoints, extra={"last_event": event})
        self.run.log_event(event)
        if self.on_round is not None:
            self.on_round(event)


def _whole(value: object, key: str) -> int:
    """A reply's count as an int: a whole number (Flower metric records may hold it as a
    float), not a truncated 3.7, NaN or a list."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FedpktError(f"{key}={value!r}; expected a whole number")
    if isinstance(value, float) and not value.is_integer():
        raise FedpktError(f"{key}={value!r}; expected a whole number")
    return int(value)
