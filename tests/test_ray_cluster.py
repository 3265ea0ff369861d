"""`fedpkt simulate` on Ray: GPU shares, joining a running Ray cluster, the run's log file.

The cluster tests start a real Ray head (`ray start --head --block`) in its own process group,
bound to 127.0.0.1 only, and always kill that group afterwards; they never run `ray stop`,
which would stop every Ray instance on the machine. Ray maps a 127.0.0.1 node address to the
machine's outward address unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (its single-machine
mode, read when ``ray`` is imported), so the head and the drivers that join it get that
variable, and the drivers run as `fedpkt simulate` subprocesses: this pytest process never
connects to that head.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from fedpkt.config import SimulationConfig, load_config
from fedpkt.errors import FedpktError
from sim.ray_cluster import (
    NODE_CHECK_MARKER,
    check_nodes_see,
    client_slots,
    probe_paths,
    worker_env,
)
from sim.run_log import RUN_LOG_ENV, attach_worker_handler
from tests.conftest import TINY, cli_sets

ROOT = Path(__file__).resolve().parent.parent
RAY = Path(sys.executable).with_name("ray")
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
# tiny_config() as CLI flags, one phase-1 round and two personas in phase 2.
SHORT = cli_sets({**TINY, "phase1.rounds": 1, "phase2.max_clients": 2})

runner = CliRunner()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), output
    return lines[0]


# -- configuration ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["simulation.gpus_per_client=-0.5"], "simulation.gpus_per_client"),
        (["simulation.gpus_per_client=2"], "simulation.gpus_per_client"),
        (["simulation.ray_address='10.0.0.1'"], "simulation.ray_address"),
        (["simulation.ray_address='ray://10.0.0.1:10001'"], "simulation.ray_address"),
        (["simulation.gpus_per_client=0.5", "backbone.device='cpu'"], "backbone.device"),
    ],
)
def test_bad_gpu_or_address_settings_are_one_line_naming_the_key(
    overrides: list[str], named: str
) -> None:
    with pytest.raises(FedpktError) as err:
        load_config(None, overrides)
    assert "\n" not in str(err.value) and named in str(err.value)


def test_gpu_share_and_address_flags_set_the_simulation_section() -> None:
    cfg = load_config(
        None, values={"simulation.gpus_per_client": 0.25, "simulation.ray_address": "h:6379"}
    )
    assert (cfg.simulation.gpus_per_client, cfg.simulation.ray_address) == (0.25, "h:6379")
    assert (SimulationConfig().gpus_per_client, SimulationConfig().ray_address) == (0.0, "")


# -- pieces -------------------------------------------------------------------------------------
def test_client_slots_count_as_flowers_actor_pool() -> None:
    """8 CPUs and 2 GPUs at 0.5 GPU a client: min(8 / 1, 2 / 0.5) = 4; no GPU: none."""
    gpu_share = SimulationConfig(gpus_per_client=0.5)
    assert client_slots({"CPU": 8.0, "GPU": 2.0}, gpu_share) == 4
    assert client_slots({"CPU": 8.0}, gpu_share) == 0
    assert client_slots({"CPU": 8.0, "GPU": 2.0}, SimulationConfig()) == 8


def test_workers_without_a_gpu_share_see_no_gpu(tmp_path: Path) -> None:
    """gpus_per_client=0 hides every GPU (clients on the CPU); a share leaves it to Ray."""
    cpu_only = worker_env(SimulationConfig(), tmp_path / "run.log")
    assert cpu_only["CUDA_VISIBLE_DEVICES"] == ""
    assert cpu_only[RUN_LOG_ENV] == str(tmp_path / "run.log")
    assert str(ROOT) in cpu_only["PYTHONPATH"].split(os.pathsep)
    assert "CUDA_VISIBLE_DEVICES" not in worker_env(SimulationConfig(gpus_per_client=0.5), tmp_path)


def test_worker_setup_hook_appends_flower_records_to_the_run_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "simulate.log"
    monkeypatch.setenv(RUN_LOG_ENV, str(log))
    flwr_logger = logging.getLogger("flwr")
    before, level = list(flwr_logger.handlers), flwr_logger.level
    attach_worker_handler()
    flwr_logger.setLevel(logging.INFO)  # a worker's level (`quiet_runtime` may have run here)
    try:
        flwr_logger.info("client X: backbone on cuda (float32), CUDA_VISIBLE_DEVICES='0'")
    finally:
        flwr_logger.setLevel(level)
        for handler in set(flwr_logger.handlers) - set(before):
            flwr_logger.removeHandler(handler)
            handler.close()
    text = log.read_text()
    assert "INFO" in text and f"pid {os.getpid()}" in text and "backbone on cuda" in text


def test_node_check_passes_where_the_run_directory_is_shared(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "manifest.json").write_text("{}")
    (tmp_path / NODE_CHECK_MARKER).write_text("t0k3n")
    assert probe_paths(str(tmp_path / NODE_CHECK_MARKER), "t0k3n", str(tmp_path / "data")) == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == [NODE_CHECK_MARKER, "data"]


def test_node_check_names_what_a_node_does_not_see(tmp_path: Path) -> None:
    marker = tmp_path / NODE_CHECK_MARKER
    assert "does not see the run directory" in probe_paths(str(marker), "t", str(tmp_path))
    marker.write_text("another token")  # a local directory of the same name
    assert "sees another" in probe_paths(str(marker), "t", str(tmp_path))
    marker.write_text("t")
    assert "does not see the client data" in probe_paths(str(marker), "t", str(tmp_path / "d"))


@pytest.mark.e2e
def test_node_check_on_real_ray_names_the_node_and_the_path(tmp_path: Path) -> None:
    """A local Ray instance is a cluster of one node; give it a data root that is not there."""
    import ray

    env = worker_env(SimulationConfig(), tmp_path / "simulate.log")
    ray.init(address="local", num_cpus=1, include_dashboard=False, runtime_env={"env_vars": env})
    try:
        with pytest.raises(FedpktError) as err:
            check_nodes_see(tmp_path, tmp_path / "absent", SimulationConfig())
    finally:
        ray.shutdown()
    message = str(err.value)
    assert "\n" not in message and message.startswith("Ray node ") and "(id " in message
    assert f"does not see the client data '{tmp_path / 'absent'}'" in message
    assert not (tmp_path / NODE_CHECK_MARKER).exists()


# -- refusals before anything is written --------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_share_without_a_gpu_is_one_line_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["simulate", "--gpus-per-client", "0.5", *SHORT])
    assert result.exit_code == 2, result.output
    assert "gpus_per_client=0.5" in _one_error_line(result.output)
    assert list(tmp_path.iterdir()) == []  # no run directory, no data


def test_ray_address_where_nothing_listens_is_one_line_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["simulate", "--ray-address", f"127.0.0.1:{_free_port()}"])
    assert result.exit_code == 2, result.output
    assert "nothing answers" in _one_error_line(result.output)
    assert list(tmp_path.iterdir()) == []


# -- a real Ray cluster -------------------------------------------------------------------------
def _group_alive(pgid: int) -> list[int]:
    alive = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                alive.append(proc.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return alive


def _stop_group(head: subprocess.Popen) -> None:
    """SIGTERM to the head's process group, SIGKILL to whatever is left after 30 s."""
    with_deadline = time.monotonic() + 30
    try:
        os.killpg(head.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    while _group_alive(head.pid) and time.monotonic() < with_deadline:
        time.sleep(0.5)
    if _group_alive(head.pid):
        os.killpg(head.pid, signal.SIGKILL)
    head.wait(timeout=30)


@pytest.fixture(scope="module")
def ray_head() -> Iterator[str]:
    """A Ray head on 127.0.0.1 with 2 CPUs and no GPU; its address. Stopped (process group
    killed) after the module's tests, whatever they did."""
    if not RAY.is_file():
        pytest.skip(f"no ray executable beside {sys.executable}")
    temp = Path(tempfile.mkdtemp(prefix="fedpkt-ray-"))  # short: Ray puts sockets under it
    port = _free_port()
    argv = [str(RAY), "start", "--head", "--block", f"--port={port}", "--num-cpus=2"]
    argv += ["--num-gpus=0", "--include-dashboard=false", "--node-ip-address=127.0.0.1"]
    argv += [f"--ray-client-server-port={_free_port()}", f"--temp-dir={temp}"]
    argv += ["--disable-usage-stats"]
    log = temp / "head.log"
    with log.open("w") as out:
        head = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **LOOPBACK_ENV},
            start_new_session=True,  # its own process group, killed as one below
        )
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log.read_text(errors="replace"):
            assert head.poll() is None, f"ray start exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"no Ray head after 120 s: {log.read_text()}"
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        _stop_group(head)
        left = _group_alive(head.pid)
        shutil.rmtree(temp, ignore_errors=True)
        assert left == [], f"Ray head processes left: {left}"


def _simulate(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """The real CLI as a user runs it on a node of the cluster."""
    env = {**os.environ, **LOOPBACK_ENV}
    env.pop("RAY_ADDRESS", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "cli.main", "simulate", *args]
    return subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )


@pytest.mark.e2e
def test_simulate_joins_a_running_ray_cluster(ray_head: str, tmp_path: Path) -> None:
    """`--ray-address`: the run's clients run on the cluster's workers; the nodes were
    checked for the run directory; every client's placement line is in the run log."""
    run_dir = tmp_path / "run"
    done = _simulate("--ray-address", ray_head, "--run-dir", str(run_dir), *SHORT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = json.loads((run_dir / "results.json").read_text())["rows"]
    assert rows and {row["part"] for row in rows} <= {"B", "C"}
    log = (run_dir / "logs" / "simulate.log").read_text()
    assert f"ray: the Ray cluster at {ray_head}, 1 node(s): 127.0.0.1 (2 CPU, 0 GPU)" in log
    placed = [line for line in log.splitlines() if "backbone on" in line]
    assert placed and all("backbone on cpu" in line for line in placed), placed
    assert not (run_dir / NODE_CHECK_MARKER).exists()


@pytest.mark.e2e
def test_gpu_share_on_a_cluster_without_gpus_is_one_line_and_writes_nothing(
    ray_head: str, tmp_path: Path
) -> None:
    done = _simulate("--ray-address", ray_head, "--gpus-per-client", "0.25", cwd=tmp_path)
    assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-3000:]
    line = _one_error_line(done.stdout + done.stderr)
    assert f"the Ray cluster at {ray_head} has no GPU" in line
    assert list(tmp_path.iterdir()) == []
