"""What ``fedpkt launch`` was asked for and how the work is divided: pure planning, no processes.

The CLI flags become a ``LaunchOptions``, checked by ``validate_options`` before anything is
started; ``plan_nodes`` deals this machine's shard of the client ids round-robin over the local
SuperNodes and pins each to a GPU (round-robin over ``--gpus``; none means CPU). Everything here
is a function of its inputs (plus the CUDA device count, the installed Flower version and the
address syntax), so it is tested in milliseconds and shared by the CLI, which validates flags
before any progress display.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fedpkt.errors import FedpktError
from sim.flower_pin import flower_version_problem
from sim.network import parse_address

PHASES = ("all", "source", "personalize")


# -- plain inputs ---------------------------------------------------------------------------------
def parse_gpus(text: str | None) -> tuple[int, ...]:
    """``"0,1,3"`` -> ``(0, 1, 3)``; empty or None -> ``()`` (CPU)."""
    if text is None or not text.strip():
        return ()
    gpus: list[int] = []
    for part in text.split(","):
        item = part.strip()
        if not item.isdigit():
            raise FedpktError(
                f"--gpus '{text}': '{item}' is not a GPU index (expected e.g. --gpus 0,1)"
            )
        gpus.append(int(item))
    return tuple(gpus)


def check_gpus(gpus: Sequence[int], available: int) -> None:
    """Every requested index must name a CUDA device this machine has (0..available-1)."""
    for gpu in gpus:
        if gpu >= available:
            have = f"devices 0-{available - 1}" if available else "no CUDA device"
            raise FedpktError(f"GPU index {gpu} does not exist: this machine has {have}")


def cuda_device_count() -> int:
    """CUDA devices visible to this process (torch imported only when GPUs are asked for)."""
    import torch

    return int(torch.cuda.device_count())


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"1/3"`` -> ``(1, 3)``: this machine serves the second of three shards of the clients."""
    if text is None or not text.strip():
        return (0, 1)
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or int(match[2]) < 1 or int(match[1]) >= int(match[2]):
        raise FedpktError(f"--shard '{text}' is not I/K with 0 <= I < K (e.g. --shard 0/2)")
    return int(match[1]), int(match[2])


def round_robin(items: Sequence[str], parts: int) -> list[list[str]]:
    """Deal ``items`` into ``parts`` lists like cards: item i goes to list i mod parts.

    >>> round_robin(["a", "b", "c", "d", "e"], 2)
    [['a', 'c', 'e'], ['b', 'd']]
    """
    if parts < 1:
        raise FedpktError(f"cannot split clients into {parts} parts (expected >= 1)")
    return [list(items[k::parts]) for k in range(parts)]


def gpu_for_node(index: int, gpus: Sequence[int]) -> int | None:
    """The GPU SuperNode ``index`` is pinned to: round-robin over ``gpus``; None means CPU."""
    return gpus[index % len(gpus)] if gpus else None


@dataclass(frozen=True)
class LaunchOptions:
    """What ``fedpkt launch`` was asked for (the CLI flags, validated here)."""

    supernodes: int = 2
    gpus: tuple[int, ...] = ()
    insecure: bool = False
    join: str | None = None
    host: str = "127.0.0.1"
    port: int | None = None
    tls_names: tuple[str, ...] = ()
    ca_cert: Path | None = None
    server_cert: Path | None = None
    server_key: Path | None = None
    node_auth: bool = False
    shard: tuple[int, int] = (0, 1)
    wait_for_nodes: int | None = None
    phases: str = "all"
    resume: bool = False
    startup_timeout_s: float = 180.0
    status_every_s: float = 30.0
    node_poll_s: float = 0.2


@dataclass(frozen=True)
class NodePlan:
    """One SuperNode: its name, GPU (None: CPU) and the clients it serves."""

    name: str
    gpu: int | None
    client_ids: tuple[str, ...]


def validate_options(options: LaunchOptions) -> None:
    """Reject contradictory or impossible flags (or the wrong Flower) before anything starts."""
    problem = flower_version_problem()
    if problem:
        raise FedpktError(problem)
    if options.supernodes < 1:
        raise FedpktError(f"--supernodes {options.supernodes}: expected at least 1")
    if options.phases not in PHASES:
        raise FedpktError(f"--phase '{options.phases}' is not one of {', '.join(PHASES)}")
    if not 0.01 <= options.node_poll_s <= 60:
        raise FedpktError(f"--node-poll {options.node_poll_s}: expected 0.01-60 seconds")
    if options.port is not None and not 1 <= options.port <= 65535:
        raise FedpktError(f"--port {options.port} is not in 1-65535")
    if options.insecure and options.node_auth:
        raise FedpktError("--node-auth needs TLS: drop --insecure")
    if options.insecure and (options.server_cert or options.server_key or options.ca_cert):
        raise FedpktError("--insecure contradicts the given TLS files: use one or the other")
    if options.join is not None:
        parse_address(options.join)
        if options.server_cert or options.server_key:
            raise FedpktError(
                "--join starts SuperNodes only: they need --ca-cert, not --server-cert/--server-key"
            )
        if options.wait_for_nodes is not None:
            raise FedpktError("--wait-for-nodes belongs on the machine that runs the SuperLink")
    elif options.wait_for_nodes is not None and options.wait_for_nodes < options.supernodes:
        raise FedpktError(
            f"--wait-for-nodes {options.wait_for_nodes} is fewer than --supernodes "
            f"{options.supernodes} started here"
        )
    if options.gpus:
        check_gpus(options.gpus, cuda_device_count())


def plan_nodes(client_ids: Sequence[str], options: LaunchOptions) -> list[NodePlan]:
    """Which clients and GPU each local SuperNode gets (this machine's shard, dealt round-robin)."""
    index, count = options.shard
    mine = round_robin(list(client_ids), count)[index]
    if len(mine) < options.supernodes:
        raise FedpktError(
            f"--supernodes {options.supernodes} is more than the {len(mine)} clients this "
            f"machine serves (shard {index}/{count} of {len(client_ids)}); use fewer SuperNodes"
        )
    shares = round_robin(mine, options.supernodes)
    return [
        NodePlan(f"supernode-{k}", gpu_for_node(k, options.gpus), tuple(shares[k]))
        for k in range(options.supernodes)
    ]
