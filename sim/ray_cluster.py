"""The Ray instance `fedpkt simulate` runs its ClientApps on: a local one, or a cluster it joins.

fedpkt connects the driver to Ray itself. Flower's Ray backend, finding Ray initialised, uses
that connection as it is (``RayBackend.init_ray`` calls ``ray.init`` only when Ray is not
initialised) and closes it at the end of the run (``RayBackend.terminate``). Connecting here
is what lets a run

- join a running cluster (``simulation.ray_address``): ``ray.init(address=...)`` refuses the
  ``num_cpus`` a local instance is started with, so the two are connected differently;
- give every worker, on every node, one environment (the job's ``runtime_env``): the driver's
  ``sys.path`` as PYTHONPATH (as Flower's backend does), no visible GPU when none is asked
  for, and the run's log file (:mod:`sim.run_log`);
- refuse in one line what cannot work: a GPU asked for where there is none (before anything is
  written) and, on a cluster, a node that does not see the run directory.

A worker given a GPU share (``simulation.gpus_per_client`` > 0) gets ``CUDA_VISIBLE_DEVICES``
from Ray, naming the GPU Ray assigned it; its backbone (``backbone.device`` auto or cuda) is
then on that GPU, and its log line says so.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray
import ray.exceptions
import torch
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from fedpkt.atomic import atomic_write_text
from fedpkt.config import SimulationConfig
from fedpkt.errors import FedpktError
from sim.run_log import RUN_LOG_ENV, driver_log, run_log_path
from sim.stopping import reclaim_signals

logger = logging.getLogger(__name__)

# Settings a run's workers take from the driver's environment where the driver has them.
FORWARDED_ENV = ("FEDPKT_CACHE", "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_VERBOSITY")
WORKER_SETUP_HOOK = "sim.run_log.attach_worker_handler"
CONNECT_TIMEOUT_S = 5.0
NODE_CHECK_TIMEOUT_S = 120.0
NODE_CHECK_MARKER = ".ray-node-check"
SHARED_FS = (
    "with --ray-address the run directory and the data must be on a filesystem every node "
    "mounts at the same path"
)


def client_resources(sim: SimulationConfig) -> dict[str, float]:
    """What Ray reserves for each ClientApp worker (Flower's ``client_resources``)."""
    return {"num_cpus": 1, "num_gpus": sim.gpus_per_client}


def check_resources(sim: SimulationConfig) -> None:
    """Refuse, before the run directory is made, a GPU request that nothing can serve.

    Local: torch must see a CUDA device. Cluster: the head must answer, and its nodes must
    offer a GPU and room for at least one client (the connection is closed again).
    """
    if sim.ray_address:
        with _joined(sim.ray_address, {}):
            _check_capacity(sim)
    elif sim.gpus_per_client > 0 and not torch.cuda.is_available():
        raise FedpktError(
            f"simulation.gpus_per_client={sim.gpus_per_client:g} asks for a GPU per client, but "
            "torch sees no CUDA device on this machine; use --gpus-per-client 0, or "
            "--ray-address to join a Ray cluster that has GPUs"
        )


@contextlib.contextmanager
def ray_session(
    sim: SimulationConfig, run_root: Path, data_root: Path, workers: int, verbose: bool = False
) -> Iterator[dict[str, Any]]:
    """Ray connected for one run; yields the ``backend_config`` for Flower's ``run_simulation``.

    Local: a new Ray instance with ``workers`` CPUs (never one already running on the machine:
    ``address="local"``). Cluster: joins ``sim.ray_address`` and checks that every node that
    may host a client sees ``run_root`` and ``data_root``. The driver's account of it goes to
    the run log. Ray is disconnected afterwards whatever happens (Flower's backend does it at
    the end of a run; this covers a run that fails before the backend exists). The workers'
    output reaches the console only with ``verbose``; it is always in the run log.
    """
    log = run_log_path(run_root.absolute())
    runtime_env = {
        "env_vars": worker_env(sim, log),
        "worker_process_setup_hook": WORKER_SETUP_HOOK,
    }
    with driver_log(log, verbose):
        try:
            if sim.ray_address:
                with _joined(sim.ray_address, runtime_env, keep=True, verbose=verbose):
                    _check_capacity(sim)
                    check_nodes_see(run_root.absolute(), data_root.absolute(), sim)
            else:
                ray.init(
                    address="local",
                    num_cpus=workers,
                    include_dashboard=False,
                    logging_level=logging.WARNING,
                    log_to_driver=verbose,  # worker logs: always in the run log
                    runtime_env=runtime_env,
                )
                _check_capacity(sim)
            reclaim_signals()  # ray.init took SIGTERM over; fedpkt's stop handler comes back
            logger.info(describe_cluster(sim))
            yield {"client_resources": client_resources(sim)}
        finally:
            if ray.is_initialized():
                ray.shutdown()


def worker_env(sim: SimulationConfig, run_log: Path) -> dict[str, str]:
    """The environment every worker of the run starts with, on every node."""
    # As Flower's RayBackend.init_ray: workers import what the driver imports (this checkout).
    paths = [os.path.abspath(p) for p in sys.path]
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    env = {"PYTHONPATH": os.pathsep.join(paths), RUN_LOG_ENV: str(run_log)}
    env.update({name: os.environ[name] for name in FORWARDED_ENV if name in os.environ})
    if sim.gpus_per_client == 0:
        # No GPU asked for: clients run on the CPU, as `fedpkt launch` without --gpus.
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


@contextlib.contextmanager
def _joined(
    address: str, runtime_env: dict[str, Any], keep: bool = False, verbose: bool = False
) -> Iterator[None]:
    """The driver connected to the cluster at ``address``; disconnected after unless ``keep``
    (then only on an error)."""
    _check_answers(address)
    try:
        with warnings.catch_warnings():  # Ray's tip on RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"ray\.")
            ray.init(
                address=address,
                logging_level=logging.WARNING,
                log_to_driver=verbose,  # worker logs: always in the run log
                runtime_env=runtime_env,
            )
    except (ConnectionError, RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FedpktError(
            f"simulation.ray_address='{address}': cannot join the Ray cluster there ({first}); "
            "run fedpkt on one of its nodes"
        ) from None
    try:
        yield
    except BaseException:
        ray.shutdown()
        raise
    if not keep:
        ray.shutdown()


def _check_answers(address: str) -> None:
    """One line, not Ray's endless retries, when nothing listens at the head's address.

    Ray reaches a loopback head address through this machine's node address, so that is the
    one tried.
    """
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if host in ("127.0.0.1", "localhost", "::1"):
        host = ray.util.get_node_ip_address()
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        raise FedpktError(
            f"simulation.ray_address='{address}': nothing answers at {host}:{port} "
            f"({err.strerror or err}); start the head there with `ray start --head --port {port}`"
        ) from None


def client_slots(node_resources: dict[str, float], sim: SimulationConfig) -> int:
    """How many client workers a node's resources hold, counted as Flower's actor pool does:
    8 CPUs and 2 GPUs at 0.5 GPU a client hold min(8 / 1, 2 / 0.5) = 4; no GPU holds none."""
    slots = int(node_resources.get("CPU", 0) / 1)
    if sim.gpus_per_client > 0:
        gpus = node_resources.get("GPU", 0)
        slots = min(slots, int(gpus / sim.gpus_per_client)) if gpus else 0
    return slots


def _nodes() -> list[dict[str, Any]]:
    """The Ray nodes alive now (a node that left keeps a row, with no resources)."""
    return [node for node in ray.nodes() if node.get("Alive") and node.get("Resources")]


def _where(sim: SimulationConfig) -> str:
    return f"the Ray cluster at {sim.ray_address}" if sim.ray_address else "the local Ray instance"


def _check_capacity(sim: SimulationConfig) -> None:
    nodes = _nodes()
    total = ray.cluster_resources()
    if sim.gpus_per_client > 0 and not total.get("GPU"):
        raise FedpktError(
            f"simulation.gpus_per_client={sim.gpus_per_client:g} asks for a GPU per client, but "
            f"{_where(sim)} has no GPU ({total.get('CPU', 0):g} CPUs on {len(nodes)} node(s)); "
            "start its nodes on machines with GPUs, or use --gpus-per-client 0"
        )
    if not any(client_slots(node["Resources"], sim) for node in nodes):
        raise FedpktError(
            f"no node of {_where(sim)} has room for one client worker (1 CPU and "
            f"{sim.gpus_per_client:g} GPU); its nodes offer {total.get('CPU', 0):g} CPUs and "
            f"{total.get('GPU', 0):g} GPUs"
        )


def describe_cluster(sim: SimulationConfig) -> str:
    """One line for the run log: where the clients run and how many workers fit."""
    parts, slots = [], 0
    for node in _nodes():
        res = node["Resources"]
        slots += client_slots(res, sim)
        parts.append(
            f"{node['NodeManagerAddress']} ({res.get('CPU', 0):g} CPU, {res.get('GPU', 0):g} GPU)"
        )
    return (
        f"ray: {_where(sim)}, {len(parts)} node(s): {', '.join(parts)}; each client worker gets "
        f"1 CPU and {sim.gpus_per_client:g} GPU: {slots} worker(s)"
    )


def probe_paths(marker: str, token: str, data_root: str) -> str:
    """What is wrong with the run's paths as seen from this process ('' if nothing).

    ``marker`` is a file the driver wrote into the run directory with ``token`` in it: a node
    that reads the same token sees the driver's run directory, not a local one of that name.
    """
    path = Path(marker)
    try:
        seen = path.read_text(encoding="utf-8")
    except OSError:
        return f"does not see the run directory '{path.parent}'"
    if seen != token:
        return f"sees another '{path.parent}' than the driver (its check file differs)"
    probe = path.with_name(f"{path.name}.{socket.gethostname()}.{os.getpid()}")
    try:
        probe.write_text(token, encoding="utf-8")
        probe.unlink()
    except OSError as err:
        return f"cannot write in the run directory '{path.parent}' ({err.strerror})"
    if not (Path(data_root) / "manifest.json").is_file():
        return f"does not see the client data '{data_root}' (no manifest.json)"
    return ""


def check_nodes_see(run_root: Path, data_root: Path, sim: SimulationConfig) -> None:
    """Every alive node that may host a client reads the driver's check file in ``run_root``,
    writes there and finds ``data_root``'s manifest; otherwise one line naming the node."""
    nodes = [node for node in _nodes() if client_slots(node["Resources"], sim)]
    if not nodes:
        return  # nothing can host a client: _check_capacity says so
    marker, token = run_root / NODE_CHECK_MARKER, secrets.token_hex(16)
    atomic_write_text(marker, token)
    probe = ray.remote(num_cpus=0, max_retries=0)(probe_paths)
    try:
        refs = [
            probe.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
            ).remote(str(marker), token, str(data_root))
            for node in nodes
        ]
        _, late = ray.wait(refs, num_returns=len(refs), timeout=NODE_CHECK_TIMEOUT_S)
        for node, ref in zip(nodes, refs, strict=True):
            problem = _node_answer(ref, late)
            if problem:
                raise FedpktError(
                    f"Ray node {node['NodeManagerAddress']} (id {node['NodeID'][:12]}) "
                    f"{problem}; {SHARED_FS}"
                )
    finally:
        marker.unlink(missing_ok=True)


def _node_answer(ref: ray.ObjectRef, late: list[ray.ObjectRef]) -> str:
    if ref in late:
        ray.cancel(ref, force=True)
        return f"did not answer the run-directory check within {NODE_CHECK_TIMEOUT_S:g} s"
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return f"could not run fedpkt's check ({first})"
