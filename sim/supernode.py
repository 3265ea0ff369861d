"""``flower-supernode`` with shorter waits: Flower's own SuperNode, asking more often.

Flower 1.42's SuperNode loop (``flwr.supernode.start_client_internal``) asks the SuperLink for a
message and, when none is waiting, sleeps 3 s before it asks again; while its ClientApp works it
looks for the reply every 0.5 s; and when a message's objects are not all at the SuperLink yet
(the ServerApp pushes them just after the message), it tries again after 1 s, then 2, 4, ...
With a warm worker (``sim.worker``) a message's work often takes less than a second, so those
waits would be most of every exchange: a round's messages reached a SuperNode up to 3 s, and
its input up to 1 s more, after the ServerApp sent them.

``python -m sim.supernode ARGS`` runs Flower's own ``flower-supernode`` entry point with the
same ARGS and two of its loop's waits shortened: every sleep is capped at
``FEDPKT_NODE_POLL_S`` seconds (the launcher's ``--node-poll``, default
:data:`DEFAULT_POLL_S`; 3 or more leaves them as they are), and the object pull retries after
:data:`PULL_BACKOFF_S` (first, largest) instead of (1 s, 10 s). Nothing else changes: the same
code receives, stores and sends every message. The cost is traffic: an idle SuperNode asks the
SuperLink 1/poll times a second instead of once in 3 s.

Both waits are reached through globals of the loop's module (its ``time`` module and its
``pull_objects`` function), which are replaced: ``time`` by a proxy whose ``sleep`` is capped,
``pull_objects`` by itself with other backoff arguments. Those are Flower internals, so this
runs only under the pinned Flower version (``sim.flower_pin``) and checks that both globals are
still there before it starts.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from typing import Any

from sim.flower_pin import flower_version_problem

DEFAULT_POLL_S = 0.2
POLL_ENV = "FEDPKT_NODE_POLL_S"
PULL_BACKOFF_S = (0.02, 0.2)


class CappedSleep:
    """The ``time`` module, except that ``sleep`` waits at most ``cap_s`` seconds."""

    def __init__(self, cap_s: float) -> None:
        self.cap_s = cap_s

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self.cap_s))


def main() -> int:
    problem = flower_version_problem()
    if problem:
        print(problem, file=sys.stderr)
        return 2
    import flwr.supernode.start_client_internal as loop
    from flwr.supercore.inflatable.inflatable_utils import pull_objects
    from flwr.supernode.cli.flower_supernode import flower_supernode

    if getattr(loop, "time", None) is not time or getattr(loop, "pull_objects", None) is not (
        pull_objects
    ):
        print(
            "flwr.supernode.start_client_internal has no 'time' or 'pull_objects' global any "
            "more: the SuperNode's waits cannot be shortened on this Flower",
            file=sys.stderr,
        )
        return 2
    first, cap = PULL_BACKOFF_S
    loop.time = CappedSleep(float(os.environ.get(POLL_ENV, DEFAULT_POLL_S)))
    loop.pull_objects = functools.partial(pull_objects, initial_backoff=first, backoff_cap=cap)
    flower_supernode()
    return 0


if __name__ == "__main__":
    sys.exit(main())
