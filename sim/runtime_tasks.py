"""ClientApp tasks on a Flower 1.42 SuperNode's Runtime API: claim, pull, answer, fail.

A SuperNode started with ``--isolation process`` stores every message it receives from the
SuperLink as a *task* and waits for some process to claim it on its local Runtime API (HTTP,
``--port``). Flower's own ``flower-superexec`` claims it and starts one ``flwr-clientapp``
process per task; ``sim.worker`` claims it itself and answers it in a warm interpreter. Both
speak the same calls, which are Flower's wherever Flower has them
(``flwr.supernode.runtime.run_clientapp``'s ``push_message`` and ``push_task_output``; its
``pull_task_input`` is restated with a shorter backoff, see :data:`PULL_BACKOFF_S`), so the
messages, object trees and context updates are what ``flwr-clientapp`` sends:

1. ``AcquireTask`` (for ClientApp tasks) claims the oldest pending task and returns a token;
2. with the token: ``PullTaskInput`` (context, run, FAB) and ``PullMessages`` (the message);
   ``SendTaskHeartbeat`` while the ClientApp runs (the SuperNode answers a task whose
   heartbeats stop with ``CLIENT_APP_CRASHED`` after 60 s);
3. ``PushMessages`` (the reply) and ``PushTaskOutput`` (final status and the updated context,
   which carries e.g. the SecAgg+ mod's state to the next message).

These are Flower internals, hence the version pin (``sim.flower_pin``). Nothing from the
fedpkt packages is imported here.
"""

from __future__ import annotations

import base64
import threading
from dataclasses import dataclass

import httpx
from flwr.app import Context, Error, Message, RecordDict
from flwr.app.message import make_message
from flwr.common.constant import SubStatus
from flwr.common.serde import context_from_proto, fab_from_proto, run_from_proto
from flwr.common.serde_utils import metadata_from_proto, metadata_to_proto
from flwr.proto.message_pb2 import Metadata as ProtoMetadata  # pylint: disable=E0611
from flwr.proto.node_pb2 import Node  # pylint: disable=E0611
from flwr.proto.runtime_pb2 import (  # pylint: disable=E0611
    AcquireTaskRequest,
    PullAppMessagesRequest,
    PullTaskInputRequest,
    SendTaskHeartbeatRequest,
)
from flwr.supercore.constant import TaskType
from flwr.supercore.fab import Fab
from flwr.supercore.inflatable.inflatable_protobuf_utils import (
    make_confirm_message_received_fn_protobuf,
    make_pull_object_fn_protobuf,
)
from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
from flwr.supercore.interceptors import (
    RuntimeTokenHttpInterceptor,
    RuntimeVersionHttpInterceptor,
)
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.run import Run
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.task_identity import TaskIdentity
from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

HEARTBEAT_EVERY_S = 10.0
"""Seconds between task heartbeats (the SuperNode gives up on a task after 60 s without)."""
PULL_BACKOFF_S = (0.02, 0.2)
"""First and largest wait between tries for a message object the SuperNode has not received
yet. A task is claimable as soon as the SuperNode starts downloading its message from the
SuperLink; ``flwr-clientapp`` waits 1 s, then 2, 4, ... (Flower's defaults: it starts seconds
later anyway), which would add about a second to every message of a warm worker."""


@dataclass(frozen=True)
class Claim:
    """A claimed ClientApp task: its token (the key to every later call) and what it is for."""

    token: str
    task_id: int
    run_id: int
    fab_hash: str


def request_metadata_text(message: Message) -> str:
    """A request's metadata as text (base64 protobuf): enough to answer it after a crash."""
    return base64.b64encode(metadata_to_proto(message.metadata).SerializeToString()).decode()


def request_from_metadata(text: str) -> Message:
    """The content-less request rebuilt from :func:`request_metadata_text` (to reply to it)."""
    proto = ProtoMetadata.FromString(base64.b64decode(text))
    return make_message(metadata=metadata_from_proto(proto), content=RecordDict())


class RuntimeTasks:
    """The claiming side: one client for ``AcquireTask`` on the SuperNode at ``address``."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.client = RuntimeHttpClient.from_server_address(
            server_address=address,
            insecure=True,  # the SuperNode's Runtime API listens on 127.0.0.1 without TLS
            root_certificates=None,
            interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
        )

    def claim(self) -> Claim | None:
        """Claim the oldest pending ClientApp task; None when there is none (or no answer)."""
        try:
            res = self.client.AcquireTask(
                AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
            )
        except httpx.HTTPError:
            return None
        if not (res.HasField("task") and res.token):
            return None
        return Claim(res.token, res.task.task_id, res.task.run_id, res.task.fab_hash)

    def session(self, token: str) -> TaskSession:
        return TaskSession(self.address, token)

    def close(self) -> None:
        self.client.close()


class TaskSession:
    """The calls one claimed task makes with its token, and its heartbeat thread."""

    def __init__(self, address: str, token: str) -> None:
        self.retry = make_simple_http_retry_invoker()
        self.client = RuntimeHttpClient.from_server_address(
            server_address=address,
            insecure=True,
            root_certificates=None,
            interceptors=[
                RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                RuntimeTokenHttpInterceptor(token),
            ],
            retry_invoker=self.retry,
        )
        self._stop = threading.Event()
        self._beats: threading.Thread | None = None

    # -- heartbeats ---------------------------------------------------------------------------
    def heartbeat(self) -> bool:
        """One heartbeat; False when the SuperNode did not take it (no answer, or task gone)."""
        try:
            return bool(self.client.SendTaskHeartbeat(SendTaskHeartbeatRequest()).success)
        except httpx.HTTPError:
            return False

    def start_heartbeats(self, every_s: float = HEARTBEAT_EVERY_S) -> None:
        def beat() -> None:
            while not self._stop.wait(every_s):
                self.heartbeat()

        self.heartbeat()
        self._beats = threading.Thread(target=beat, name="task-heartbeat", daemon=True)
        self._beats.start()

    # -- the task -----------------------------------------------------------------------------
    def pull(self) -> tuple[Message, Context, Run, Fab]:
        """The task's message, the run series' context, the run and the FAB.

        ``flwr.supernode.runtime.run_clientapp.pull_task_input`` with a short backoff for the
        message's objects (:data:`PULL_BACKOFF_S`); the calls are the same.
        """
        res = self.client.PullTaskInput(PullTaskInputRequest())
        TaskIdentity.task_id = res.task_id
        TaskIdentity.run_id = res.run.run_id
        TaskIdentity.node_id = res.context.node_id
        context = context_from_proto(res.context)
        run = run_from_proto(res.run)
        fab = fab_from_proto(res.fab)
        pulled = self.client.PullMessages(PullAppMessagesRequest())
        if not pulled.messages_list:
            raise RuntimeError("No messages received from Runtime API")
        node = Node(node_id=context.node_id)
        tree = pulled.message_object_trees[0]
        first, cap = PULL_BACKOFF_S
        message = pull_and_inflate_object_from_tree(
            tree,
            make_pull_object_fn_protobuf(self.client.PullObject, node, context.run_id),
            make_confirm_message_received_fn_protobuf(
                self.client.ConfirmMessageReceived, node, context.run_id
            ),
            return_type=Message,
            initial_backoff=first,
            backoff_cap=cap,
        )
        message.metadata.__dict__["_message_id"] = tree.object_id  # not in the deflated form
        return message, context, run, fab

    def reply(self, reply: Message, context: Context) -> None:
        push_message(self.client, reply, context)

    def finish(self, context: Context | None, ok: bool, details: str = "") -> None:
        """Final status and (when given) the updated context; best effort, as in Flower."""
        status = SubStatus.COMPLETED if ok else SubStatus.FAILED
        push_task_output(self.client, context, status, details)

    def fail(self, request: Message, code: int, reason: str) -> None:
        """Answer ``request`` with an error reply and finish the task as failed."""
        bare = Context(
            run_id=request.metadata.run_id,
            node_id=request.metadata.dst_node_id,
            node_config={},
            state=RecordDict(),
            run_config={},
        )
        self.reply(Message(Error(code=code, reason=reason), reply_to=request), bare)
        self.finish(None, ok=False, details=reason)

    def close(self) -> None:
        self._stop.set()
        if self._beats is not None:
            self._beats.join(timeout=2)
        self.retry.max_tries = 1  # never block on a SuperNode that is gone
        self.client.close()
