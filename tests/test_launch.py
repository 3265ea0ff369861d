"""`fedpkt launch` without a federation: planning, bad input, TLS files and process cleanup.

Everything here runs in seconds; the real SuperLink/SuperNode runs are in test_launch_e2e.py.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from cryptography import x509
from typer.testing import CliRunner

from cli.main import app
from fedpkt.errors import FedpktError
from sim.certs import (
    certificate_names,
    ensure_certificates,
    ensure_node_keys,
    given_certificates,
)
from sim.launch import (
    LaunchOptions,
    MetricsFollower,
    ProcessSet,
    check_gpus,
    check_reachable,
    ensure_port_free,
    free_port,
    gpu_for_node,
    launch,
    parse_address,
    parse_gpus,
    parse_shard,
    plan_nodes,
    round_robin,
    validate_options,
)
from tests.conftest import tiny_config

CLIENTS = [f"A-{i:04d}" for i in range(5)] + ["B-0000", "C-0000"]


def launch_processes(root: Path) -> list[psutil.Process]:
    """Living processes whose command line or FLWR_HOME points into ``root`` (zombies are dead)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "environ", "status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE or proc.pid == os.getpid():
            continue
        text = (
            " ".join(proc.info["cmdline"] or [])
            + " "
            + (proc.info["environ"] or {}).get("FLWR_HOME", "")
        )
        if str(root) in text:
            found.append(proc)
    return found


# -- planning -----------------------------------------------------------------------------------
def test_round_robin_deals_like_cards() -> None:
    """7 clients over 3 nodes: positions 0,3,6 / 1,4 / 2,5."""
    assert round_robin(CLIENTS, 3) == [
        ["A-0000", "A-0003", "C-0000"],
        ["A-0001", "A-0004"],
        ["A-0002", "B-0000"],
    ]


def test_gpus_are_assigned_round_robin_and_none_means_cpu() -> None:
    """4 nodes over GPUs (0, 1) -> 0, 1, 0, 1; no GPUs -> CPU (None) for every node."""
    assert [gpu_for_node(k, (0, 1)) for k in range(4)] == [0, 1, 0, 1]
    assert [gpu_for_node(k, ()) for k in range(2)] == [None, None]


def test_plan_nodes_splits_this_machines_shard() -> None:
    """Shard 1/2 of 7 clients is positions 1,3,5; over 2 nodes: (1,5) and (3,)."""
    plans = plan_nodes(CLIENTS, LaunchOptions(supernodes=2, shard=(1, 2), gpus=()))
    assert [p.client_ids for p in plans] == [("A-0001", "B-0000"), ("A-0003",)]
    assert [p.name for p in plans] == ["supernode-0", "supernode-1"]


def test_more_supernodes_than_clients_is_an_error() -> None:
    with pytest.raises(FedpktError, match="--supernodes 8 is more than the 7 clients"):
        plan_nodes(CLIENTS, LaunchOptions(supernodes=8))


def test_parse_gpus_reads_indices_and_rejects_words() -> None:
    assert parse_gpus("0, 2,3") == (0, 2, 3)
    assert parse_gpus(None) == ()
    with pytest.raises(FedpktError, match="'x' is not a GPU index"):
        parse_gpus("0,x")


def test_missing_gpu_index_is_named() -> None:
    """Two devices exist (0, 1): asking for 0,2 names GPU 2."""
    check_gpus((0, 1), 2)
    with pytest.raises(
        FedpktError, match="GPU index 2 does not exist: this machine has devices 0-1"
    ):
        check_gpus((0, 2), 2)
    with pytest.raises(FedpktError, match="GPU index 0 does not exist: this machine has no CUDA"):
        check_gpus((0,), 0)


def test_parse_shard_and_address() -> None:
    assert parse_shard("1/3") == (1, 3)
    assert parse_shard(None) == (0, 1)
    with pytest.raises(FedpktError, match="--shard '3/3'"):
        parse_shard("3/3")
    assert parse_address("10.0.0.5:9092") == ("10.0.0.5", 9092)
    assert parse_address("[::1]:9092") == ("::1", 9092)
    with pytest.raises(FedpktError, match="not HOST:PORT"):
        parse_address("10.0.0.5")
    with pytest.raises(FedpktError, match="port 70000 is not in 1-65535"):
        parse_address("host:70000")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (LaunchOptions(supernodes=0), "expected at least 1"),
        (LaunchOptions(phases="both"), "--phase 'both'"),
        (LaunchOptions(insecure=True, node_auth=True), "--node-auth needs TLS"),
        (LaunchOptions(insecure=True, ca_cert=Path("ca.pem")), "--insecure contradicts"),
        (LaunchOptions(join="h:1", server_key=Path("k")), "they need --ca-cert"),
        (LaunchOptions(supernodes=3, wait_for_nodes=2), "--wait-for-nodes 2 is fewer"),
        (LaunchOptions(node_poll_s=0.0), "--node-poll 0.0: expected 0.01-60 seconds"),
    ],
)
def test_contradictory_flags_are_refused(options: LaunchOptions, message: str) -> None:
    with pytest.raises(FedpktError, match=message):
        validate_options(options)


def test_cli_refuses_another_flower_minor_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The workers speak Flower 1.42's Runtime API: 1.43 is refused before anything starts."""
    monkeypatch.setattr("sim.flower_pin.installed_flower", lambda: "1.43.0")
    result = CliRunner().invoke(app, ["launch", "--supernodes", "1", "--run-dir", str(tmp_path)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1
    assert "needs Flower 1.42.x" in lines[0] and "found 1.43.0" in lines[0]
    assert not (tmp_path / "config.toml").exists()


# -- bad input stops before anything runs ------------------------------------------------------
def test_port_in_use_is_one_line_error(tmp_path: Path) -> None:
    """A listening socket holds the port: launch refuses it before it writes or starts
    anything (issue 16 §1)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(FedpktError, match=f"port {port} on 127.0.0.1 is in use"):
            ensure_port_free("127.0.0.1", port)
        with pytest.raises(FedpktError, match=f"port {port} on 127.0.0.1 is in use"):
            launch(tiny_config(), LaunchOptions(supernodes=2, port=port), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    assert launch_processes(tmp_path) == []


def test_unreachable_superlink_is_one_line_error(tmp_path: Path) -> None:
    """Nothing listens on a fresh free port: --join names the address and starts nothing."""
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(FedpktError, match=f"SuperLink address '{address}' is unreachable"):
        check_reachable(address, timeout=2)
    options = LaunchOptions(supernodes=1, join=address, insecure=True)
    with pytest.raises(FedpktError, match="is unreachable"):
        launch(tiny_config(), options, tmp_path / "run")
    assert launch_processes(tmp_path) == []


def test_cli_missing_gpu_exits_2_with_one_line(tmp_path: Path) -> None:
    """On this CPU-only machine GPU 0 does not exist; the CLI prints one line, exit code 2."""
    import torch

    missing = torch.cuda.device_count()
    result = CliRunner().invoke(
        app, ["launch", "--supernodes", "1", "--gpus", str(missing), "--run-dir", str(tmp_path)]
    )
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1
    assert f"GPU index {missing} does not exist" in lines[0]
    assert not (tmp_path / "config.toml").exists()


# -- TLS files ---------------------------------------------------------------------------------
def test_certificates_cover_loopback_and_extra_names(tmp_path: Path) -> None:
    files = ensure_certificates(tmp_path / "certs", ["node1.example", "10.1.2.3"])
    cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    assert certificate_names(cert) == {"127.0.0.1", "localhost", "node1.example", "10.1.2.3"}
    cert.verify_directly_issued_by(ca)
    assert files.server_key.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "certs" / "ca.key").stat().st_mode & 0o777 == 0o600


def test_certificates_are_reused_until_a_new_name_is_needed(tmp_path: Path) -> None:
    first = ensure_certificates(tmp_path, [])
    ca_bytes, cert_bytes = first.ca_cert.read_bytes(), first.server_cert.read_bytes()
    ensure_certificates(tmp_path, ["localhost"])
    assert first.server_cert.read_bytes() == cert_bytes  # already covered: untouched
    ensure_certificates(tmp_path, ["other.example"])
    assert first.ca_cert.read_bytes() == ca_bytes  # same CA, so joined machines keep working
    assert first.server_cert.read_bytes() != cert_bytes


def test_generated_certificate_passes_a_real_tls_handshake(tmp_path: Path) -> None:
    """A TLS server with server.pem/.key is verified by a client trusting only ca.pem."""
    files = ensure_certificates(tmp_path, [])
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(files.server_cert, files.server_key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            tls.sendall(b"ok")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client_ctx = ssl.create_default_context(cafile=str(files.ca_cert))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.recv(2) == b"ok"
    thread.join(timeout=5)
    listener.close()


def test_partly_given_tls_files_are_refused(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    with pytest.raises(FedpktError, match="--server-cert, --server-key missing"):
        given_certificates(ca, None, None)
    with pytest.raises(FedpktError, match=r"--server-cert '.*nope\.pem' does not exist"):
        given_certificates(ca, tmp_path / "nope.pem", ca)


def test_node_keys_are_openssh_ec_p384(tmp_path: Path) -> None:
    """What flower-supernode --auth-supernode-private-key and flwr supernode register read."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import (
        load_ssh_private_key,
        load_ssh_public_key,
    )

    keys = ensure_node_keys(tmp_path, "supernode-0")
    private = load_ssh_private_key(keys.private_key.read_bytes(), None)
    public = load_ssh_public_key(keys.public_key.read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.curve.name == "secp384r1"
    assert keys.private_key.stat().st_mode & 0o777 == 0o600


# -- process hygiene and following ---------------------------------------------------------------
def test_stop_kills_groups_and_detached_descendants(tmp_path: Path) -> None:
    """A child that starts a grandchild in a new session (as Flower's SuperLink does with its
    SuperExec) escapes the process group; stop() still ends it."""
    script = (
        "import subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'],"
        " start_new_session=True)\n"
        "time.sleep(120)\n"
    )
    processes = ProcessSet(tmp_path / "processes.json")
    started = processes.start(
        "parent", [sys.executable, "-c", script], dict(os.environ), tmp_path / "parent.log"
    )
    deadline = time.monotonic() + 20
    while not psutil.Process(started.pid).children() and time.monotonic() < deadline:
        time.sleep(0.1)
    processes.refresh()
    tree = [psutil.Process(started.pid), *psutil.Process(started.pid).children(recursive=True)]
    assert len(tree) == 2
    assert os.getsid(tree[1].pid) != os.getsid(tree[0].pid)
    processes.stop(grace=5)
    _, alive = psutil.wait_procs(tree, timeout=5)
    assert [p for p in alive if p.status() != psutil.STATUS_ZOMBIE] == []
    record = json.loads((tmp_path / "processes.json").read_text())["processes"]
    assert record[0]["name"] == "parent" and record[0]["exit_code"] is not None


def test_metrics_follower_returns_only_new_whole_lines(tmp_path: Path) -> None:
    """Lines present before the follower starts are old (resume); a half line waits."""
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"event": "round", "round": 1}\n')
    follower = MetricsFollower(path)
    with path.open("a") as handle:
        handle.write('{"event": "round", "round": 2}\n{"event": "do')
    assert follower.poll() == [{"event": "round", "round": 2}]
    with path.open("a") as handle:
        handle.write('ne"}\n')
    assert follower.poll() == [{"event": "done"}]
    assert follower.poll() == []


def test_flower_executables_are_found_in_this_environment() -> None:
    from sim.launch import flower_executable

    for name in ("flower-superlink", "flower-supernode", "flwr"):
        assert Path(flower_executable(name)).is_file()
    version = subprocess.run(
        [flower_executable("flwr"), "--version"], capture_output=True, text=True, timeout=60
    )
    assert "1.42" in version.stdout
