"""``fedpkt launch``: the fedpkt app on a real Flower federation of OS processes.

Where ``fedpkt simulate`` runs virtual SuperNodes inside one process, this starts Flower's own
executables from the installed environment: one ``flower-superlink`` and N
``flower-supernode`` processes, each SuperNode pinned to one GPU (``CUDA_VISIBLE_DEVICES``,
round-robin over ``--gpus``) and serving its own share of the client partitions (round-robin
over the manifest's client ids, passed as the node config's ``client-ids``). It then submits
the app with ``flwr run`` and follows ``RUN/metrics.jsonl`` until the ServerApp logs ``done``.
The run directory ends up with the same files as ``fedpkt simulate``.

Flower 1.42 serves the Fleet, Control and Runtime APIs of a SuperLink on one HTTP(S) port
(``--host``/``--port``); each SuperNode also opens a local Runtime port for its ClientApps.
Every port is picked free unless given.

Process hygiene is the point of most of this module: every process starts in its own process
group; Flower's detached helpers (the SuperLink's SuperExec and the ServerApps it spawns) are
tracked through psutil as descendants. On success, failure, Ctrl-C or SIGTERM everything
started is stopped — SIGTERM to each group, then SIGKILL to whatever is left — and waited for.

Files (all under the run directory)::

    certs/                 ca.pem, server.pem/.key (generated unless given), nodes/ auth keys
    logs/                  superlink.log, supernode-K.log, serverapp.log, flwr-cli.log
    launch/processes.json  what was started: name, pid, process group, argv, log, GPU, clients
    launch/supernode-K.toml  the node config of SuperNode K
    launch/run-config.toml   the run config handed to ``flwr run``
    launch/flwr/<name>/    FLWR_HOME of each process (installed app copies), never ~/.flwr
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil
import tomli_w

from fedpkt.atomic import atomic_write_json, atomic_write_text
from fedpkt.config import FedpktConfig
from fedpkt.data.partition import load_manifest
from fedpkt.errors import FedpktError
from fedpkt.rundir import RunDir, create_run_dir, ensure_partitions
from sim.certs import (
    TlsFiles,
    ensure_certificates,
    ensure_node_keys,
    given_certificates,
    require_pem,
)

CONNECTION = "fedpkt"  # the name of the SuperLink connection in the launcher's Flower config
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "0.0.0.0", "::", "::1")
PHASES = ("all", "source", "personalize")
Event = dict[str, Any]


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


def parse_address(text: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6]:port"`` -> ``(host, port)``."""
    match = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d+)|([^:\s\[\]]+):(\d+)", text.strip())
    if not match:
        raise FedpktError(f"address '{text}' is not HOST:PORT (e.g. 10.0.0.5:9092)")
    host = match[1] or match[3]
    port = int(match[2] or match[4])
    if not 1 <= port <= 65535:
        raise FedpktError(f"address '{text}': port {port} is not in 1-65535")
    return host, port


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def connect_host(bind_host: str) -> str:
    """The address a local client uses for a server bound to ``bind_host``."""
    return "127.0.0.1" if bind_host in ("0.0.0.0", "::", "localhost") else bind_host


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port the OS reports free on ``host`` right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def ensure_port_free(host: str, port: int) -> None:
    """Fail with one line when ``port`` cannot be bound on ``host`` (what the server would do)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise FedpktError(
                    f"port {port} on {host} is in use (expected a free port; "
                    "leave --port out to pick one)"
                ) from None
            raise FedpktError(f"cannot bind {format_address(host, port)}: {err.strerror}") from None


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail with one line unless a TCP connection to ``address`` opens within ``timeout``."""
    host, port = parse_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise FedpktError(
            f"SuperLink address '{address}' is unreachable ({reason}); "
            "expected HOST:PORT of a running SuperLink"
        ) from None


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((connect_host(host), port), timeout=1.0):
            return True
    except OSError:
        return False


def flower_bin_dir() -> Path:
    """Where Flower's executables are: beside this interpreter (the venv's ``bin``)."""
    return Path(sys.executable).parent


def flower_executable(name: str) -> str:
    """Absolute path of one Flower executable; the venv's first, then ``PATH``."""
    local = flower_bin_dir() / name
    if local.is_file():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise FedpktError(
            f"Flower executable '{name}' not found beside {sys.executable} nor on PATH "
            "(expected flwr>=1.42 installed in this environment)"
        )
    return found


def app_directory() -> Path:
    """The fedpkt project folder ``flwr run`` builds the app from (its pyproject.toml)."""
    root = Path(__file__).resolve().parent.parent
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file() or "[tool.flwr.app" not in pyproject.read_text(encoding="utf-8"):
        raise FedpktError(
            f"'{root}' has no pyproject.toml with [tool.flwr.app]; fedpkt launch needs the "
            "fedpkt source tree (an editable install)"
        )
    return root


def last_line(path: Path, default: str = "(empty log)") -> str:
    """The last non-blank line of a log file, stripped of ANSI colours (for one-line errors)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return default
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    return lines[-1] if lines else default


# -- processes ----------------------------------------------------------------------------------
@dataclass
class Started:
    """One process the launcher started, in its own process group (pgid == pid)."""

    name: str
    popen: subprocess.Popen[bytes]
    argv: list[str]
    log: Path
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None


def _alive(proc: psutil.Process) -> bool:
    """Running and not a zombie (a zombie is dead, only waiting for its parent to reap it)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class ProcessSet:
    """The processes of one launch: start them, watch them, and stop every one of them.

    ``refresh`` remembers every descendant seen (Flower detaches some helpers into their own
    sessions, so process groups alone do not cover them); ``stop`` signals the groups and the
    remembered descendants and waits until none is alive.
    """

    def __init__(self, record: Path) -> None:
        self.record = record
        self.started: list[Started] = []
        self._descendants: dict[int, psutil.Process] = {}
        self._logs: list[IO[bytes]] = []

    def start(
        self, name: str, argv: list[str], env: dict[str, str], log: Path, **info: Any
    ) -> Started:
        log.parent.mkdir(parents=True, exist_ok=True)
        handle = log.open("ab")
        self._logs.append(handle)
        popen = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own session and process group: Ctrl-C reaches only us
        )
        started = Started(name, popen, argv, log, dict(info))
        self.started.append(started)
        self.write_record()
        return started

    def get(self, name: str) -> Started:
        return next(s for s in self.started if s.name == name)

    def write_record(self) -> None:
        rows = [
            {
                "name": s.name,
                "pid": s.pid,
                "pgid": s.pid,
                "argv": s.argv,
                "log": str(s.log),
                "exit_code": s.popen.returncode,
                **s.info,
            }
            for s in self.started
        ]
        atomic_write_json(self.record, {"processes": rows})

    def refresh(self) -> None:
        """Remember the current descendants of every started process."""
        for s in self.started:
            if not s.running():
                continue
            try:
                for child in psutil.Process(s.pid).children(recursive=True):
                    self._descendants.setdefault(child.pid, child)
            except psutil.Error:
                continue

    def _living(self) -> list[psutil.Process]:
        self.refresh()
        procs: dict[int, psutil.Process] = {}
        for s in self.started:
            if s.running():
                with contextlib.suppress(psutil.Error):
                    procs[s.pid] = psutil.Process(s.pid)
        procs.update(self._descendants)
        return [p for p in procs.values() if _alive(p)]

    def _signal_all(self, sig: signal.Signals) -> None:
        for s in self.started:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(s.pid, sig)  # the group outlives its leader: still reachable
        for proc in self._descendants.values():
            with contextlib.suppress(psutil.Error):
                if _alive(proc):
                    proc.send_signal(sig)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM every group and descendant, SIGKILL what is left after ``grace`` seconds."""
        self.refresh()
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self._living() and time.monotonic() < deadline:
            time.sleep(0.2)
        for _ in range(3):
            if not self._living():
                break
            self._signal_all(signal.SIGKILL)
            time.sleep(0.5)
        for s in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                s.popen.wait(timeout=5)
        self.write_record()
        for handle in self._logs:
            handle.close()
        self._logs.clear()


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into KeyboardInterrupt so the same cleanup path runs for all three."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def _shielded() -> Iterator[None]:
    """Ignore Ctrl-C and SIGTERM while cleaning up, so a second Ctrl-C cannot strand processes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in signals}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# -- the flwr CLI -------------------------------------------------------------------------------
class FlowerCli:
    """``flwr`` subcommands against one SuperLink, with a private FLWR_HOME (never ~/.flwr)."""

    def __init__(self, home: Path, address: str, ca_cert: Path | None, log: Path) -> None:
        self.home = home
        self.address = address
        self.log = log
        connection: dict[str, Any] = {"address": address}
        if ca_cert is None:
            connection["insecure"] = True
        else:
            connection["root-certificates"] = str(ca_cert)
        text = tomli_w.dumps({"superlink": {"default": CONNECTION, CONNECTION: connection}})
        atomic_write_text(home / "config.toml", text)

    def call(self, args: list[str], timeout: float = 120.0) -> dict[str, Any]:
        """Run ``flwr ARGS CONNECTION --format json``; the parsed JSON, or a one-line error."""
        argv = [flower_executable("flwr"), *args, CONNECTION, "--format", "json"]
        env = {**child_env(), "FLWR_HOME": str(self.home)}
        try:
            done = subprocess.run(
                argv, env=env, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL
            )
        except subprocess.TimeoutExpired:
            raise FedpktError(f"'flwr {args[0]}' did not answer within {timeout:.0f} s") from None
        out = done.stdout.decode("utf-8", errors="replace")
        with self.log.open("a", encoding="utf-8") as handle:
            handle.write(f"$ flwr {' '.join(args)}\n{out}{done.stderr.decode(errors='replace')}\n")
        start = out.find("{")
        try:
            reply = json.loads(out[start:]) if start >= 0 else {}
        except json.JSONDecodeError:
            reply = {}
        if not reply.get("success"):
            message = str(reply.get("error-message", "")) or out or done.stderr.decode()
            lines = [line.strip() for line in message.splitlines() if line.strip()]
            detail = lines[-1] if lines else f"exit code {done.returncode}"
            raise FedpktError(f"'flwr {args[0]}' against {self.address} failed: {detail}")
        return reply

    def online_nodes(self) -> int:
        nodes = self.call(["supernode", "list"], timeout=60).get("nodes", [])
        return sum(1 for node in nodes if node.get("status") == "online")

    def register(self, public_key: Path) -> str:
        return str(self.call(["supernode", "register", str(public_key)], timeout=60)["node-id"])

    def submit(self, app: Path, run_config: Path) -> int:
        reply = self.call(["run", str(app), "--run-config", str(run_config)], timeout=300)
        return int(reply["run-id"])

    def status(self, run_id: int) -> tuple[str, str]:
        """(status, details) of one run, e.g. ("finished:failed", "ServerApp failed with ...")."""
        runs = self.call(["list", "--run-id", str(run_id)], timeout=60).get("runs", [])
        if not runs:
            return "unknown", ""
        return str(runs[0].get("status", "unknown")), str(runs[0].get("status-details", ""))

    def save_log(self, run_id: int, path: Path) -> None:
        """Write the ServerApp's log (``flwr log RUN --show``) to ``path``; best effort."""
        argv = [flower_executable("flwr"), "log", str(run_id), CONNECTION, "--show"]
        env = {**child_env(), "FLWR_HOME": str(self.home)}
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            done = subprocess.run(
                argv, env=env, capture_output=True, timeout=60, stdin=subprocess.DEVNULL
            )
            atomic_write_text(path, done.stdout.decode("utf-8", errors="replace"))


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of every Flower process: venv executables first, no phoning home."""
    env = dict(os.environ)
    env["PATH"] = f"{flower_bin_dir()}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    env.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    env.update(extra or {})
    return env


# -- following the run ---------------------------------------------------------------------------
class MetricsFollower:
    """New complete lines of ``metrics.jsonl`` since the follower was made (resume-safe)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.is_file() else 0

    def poll(self) -> list[Event]:
        if not self.path.is_file():
            return []
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            chunk = handle.read()
        end = chunk.rfind(b"\n") + 1  # only whole lines: the writer appends line by line
        self.offset += end
        return [json.loads(line) for line in chunk[:end].splitlines() if line.strip()]


# -- the launch ------------------------------------------------------------------------------------
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


@dataclass(frozen=True)
class NodePlan:
    """One SuperNode: its name, GPU (None: CPU) and the clients it serves."""

    name: str
    gpu: int | None
    client_ids: tuple[str, ...]


def validate_options(options: LaunchOptions) -> None:
    """Reject contradictory or impossible flags before anything is started."""
    if options.supernodes < 1:
        raise FedpktError(f"--supernodes {options.supernodes}: expected at least 1")
    if options.phases not in PHASES:
        raise FedpktError(f"--phase '{options.phases}' is not one of {', '.join(PHASES)}")
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


def node_config(cfg: FedpktConfig, run: RunDir, client_ids: Sequence[str]) -> dict[str, Any]:
    """The node config one SuperNode serves from (the same keys ``fedpkt simulate`` binds)."""
    return {
        "data-root": str(run.data_root(cfg).resolve()),
        "vault-root": str(run.vaults.resolve()),
        "egress-dir": str(run.egress.resolve()),
        "record-payloads": cfg.privacy.record_payloads,
        "client-ids": ",".join(client_ids),
    }


class Launch:
    """One launch: owns the processes, the Flower CLI and the run directory's launch files."""

    def __init__(
        self,
        cfg: FedpktConfig,
        run: RunDir,
        options: LaunchOptions,
        on_event: Callable[[Event], None] | None = None,
        on_message: Callable[[str], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.run = run
        self.options = options
        self.on_event = on_event or (lambda event: None)
        self.say = on_message or (lambda text: None)
        self.root = run.root.resolve()
        self.launch_dir = self.root / "launch"
        self.logs = self.root / "logs"
        self.processes = ProcessSet(self.launch_dir / "processes.json")
        self.tls: TlsFiles | None = None
        self.ca_cert: Path | None = None
        self.cli: FlowerCli | None = None
        self.address = ""
        self.reported_exits: set[str] = set()

    def home(self, name: str) -> Path:
        path = self.launch_dir / "flwr" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- TLS -------------------------------------------------------------------------------------
    def prepare_tls(self) -> None:
        o = self.options
        if o.insecure:
            self.say("TLS off (--insecure): traffic between the processes is not encrypted")
            return
        if o.join is not None:
            ca = o.ca_cert or (self.root / "certs" / "ca.pem")
            if not ca.is_file():
                raise FedpktError(
                    f"--join {o.join}: no CA certificate at '{ca}'; pass --ca-cert with the "
                    "SuperLink's ca.pem (RUN/certs/ca.pem on its machine) or --insecure"
                )
            self.ca_cert = require_pem("--ca-cert", ca)
            return
        if o.ca_cert or o.server_cert or o.server_key:
            self.tls = given_certificates(o.ca_cert, o.server_cert, o.server_key)
        else:
            names = [*o.tls_names]
            if o.host not in LOOPBACK_HOSTS:
                names.append(o.host)
            self.tls = ensure_certificates(self.root / "certs", names)
        self.ca_cert = self.tls.ca_cert
        self.say(f"TLS on: CA {self.ca_cert}")

    # -- SuperLink -------------------------------------------------------------------------------
    def start_superlink(self) -> None:
        o = self.options
        port = o.port if o.port is not None else free_port(o.host)
        ensure_port_free(o.host, port)
        argv = [flower_executable("flower-superlink"), "--host", o.host, "--port", str(port)]
        argv += ["--disable-runtime-dependency-installation"]  # no network: never `uv sync`
        if self.tls is None:
            argv += ["--insecure"]
        else:
            argv += ["--ssl-ca-certfile", str(self.tls.ca_cert)]
            argv += ["--ssl-certfile", str(self.tls.server_cert)]
            argv += ["--ssl-keyfile", str(self.tls.server_key)]
        if o.node_auth:
            argv += ["--enable-supernode-auth"]
        env = child_env({"FLWR_HOME": str(self.home("superlink"))})
        link = self.processes.start("superlink", argv, env, self.logs / "superlink.log", port=port)
        deadline = time.monotonic() + o.startup_timeout_s
        while not _port_open(o.host, port):
            if not link.running():
                text = link.log.read_text(encoding="utf-8", errors="replace").lower()
                if "address already in use" in text:  # taken between our check and its bind
                    raise FedpktError(f"port {port} on {o.host} is in use (expected a free port)")
                raise FedpktError(
                    f"SuperLink exited with code {link.popen.returncode} while starting: "
                    f"{last_line(link.log)}"
                )
            if time.monotonic() > deadline:
                raise FedpktError(
                    f"SuperLink did not open port {port} within {o.startup_timeout_s:.0f} s; "
                    f"see {link.log}"
                )
            time.sleep(0.3)
        self.address = format_address(connect_host(o.host), port)
        self.say(f"SuperLink listening on {format_address(o.host, port)} (log {link.log})")

    # -- SuperNodes ------------------------------------------------------------------------------
    def start_supernodes(self, plans: list[NodePlan]) -> None:
        o = self.options
        for plan in plans:
            config_path = self.launch_dir / f"{plan.name}.toml"
            atomic_write_text(
                config_path, tomli_w.dumps(node_config(self.cfg, self.run, plan.client_ids))
            )
            port = free_port("127.0.0.1")
            argv = [flower_executable("flower-supernode"), "--superlink", self.address]
            argv += ["--port", str(port), "--node-config", str(config_path)]
            argv += (
                ["--insecure"]
                if self.ca_cert is None
                else ["--root-certificates", str(self.ca_cert)]
            )
            if o.node_auth:
                keys = ensure_node_keys(self.root / "certs" / "nodes", plan.name)
                assert self.cli is not None
                node_id = self.cli.register(keys.public_key)
                self.say(f"{plan.name}: authentication key registered (node id {node_id})")
                argv += ["--auth-supernode-private-key", str(keys.private_key)]
            visible = "" if plan.gpu is None else str(plan.gpu)
            env = child_env(
                {"FLWR_HOME": str(self.home(plan.name)), "CUDA_VISIBLE_DEVICES": visible}
            )
            self.processes.start(
                plan.name,
                argv,
                env,
                self.logs / f"{plan.name}.log",
                gpu=plan.gpu,
                client_ids=list(plan.client_ids),
                runtime_port=port,
            )
            device = "CPU" if plan.gpu is None else f"GPU {plan.gpu}"
            clients = ", ".join(plan.client_ids)
            self.say(f"{plan.name} on {device}: {len(plan.client_ids)} clients ({clients})")

    def check_nodes_alive(self, plans: list[NodePlan]) -> None:
        for plan in plans:
            node = self.processes.get(plan.name)
            if not node.running():
                raise FedpktError(
                    f"{plan.name} exited with code {node.popen.returncode} while starting: "
                    f"{last_line(node.log)}"
                )

    def wait_for_online(self, plans: list[NodePlan], expected: int) -> None:
        """Poll the SuperLink until ``expected`` SuperNodes are online (the handshake asks them)."""
        assert self.cli is not None
        deadline = time.monotonic() + self.options.startup_timeout_s
        online = 0
        while online < expected:
            self.check_nodes_alive(plans)
            self.check_superlink()
            if time.monotonic() > deadline:
                raise FedpktError(
                    f"only {online} of {expected} SuperNodes connected to {self.address} within "
                    f"{self.options.startup_timeout_s:.0f} s; see {self.logs}"
                )
            time.sleep(2.0)
            online = self.cli.online_nodes()
        self.say(f"{online} SuperNodes online")

    def wait_for_connected(self, plans: list[NodePlan]) -> None:
        """Join mode: each SuperNode logs its node id once the remote SuperLink accepted it."""
        deadline = time.monotonic() + self.options.startup_timeout_s
        pending = {plan.name for plan in plans}
        while pending:
            self.check_nodes_alive(plans)
            for name in sorted(pending):
                log = self.processes.get(name).log
                if "SuperNode ID:" in log.read_text(encoding="utf-8", errors="replace"):
                    pending.discard(name)
            if pending and time.monotonic() > deadline:
                raise FedpktError(
                    f"{', '.join(sorted(pending))} did not connect to {self.options.join} within "
                    f"{self.options.startup_timeout_s:.0f} s; see {self.logs}"
                )
            time.sleep(0.5)
        self.say(f"{len(plans)} SuperNodes connected to {self.options.join}")

    # -- watching ---------------------------------------------------------------------------------
    def check_superlink(self) -> None:
        with contextlib.suppress(StopIteration):
            link = self.processes.get("superlink")
            if not link.running():
                raise FedpktError(
                    f"SuperLink exited with code {link.popen.returncode}: {last_line(link.log)}"
                )

    def report_node_exits(self) -> int:
        """Warn once per SuperNode that has exited; return how many still run."""
        running = 0
        for s in self.processes.started:
            if not s.name.startswith("supernode"):
                continue
            if s.running():
                running += 1
            elif s.name not in self.reported_exits:
                self.reported_exits.add(s.name)
                self.processes.write_record()
                self.on_event(
                    {"event": "supernode_exited", "name": s.name, "exit_code": s.popen.returncode}
                )
                self.say(
                    f"{s.name} exited (code {s.popen.returncode}); the run goes on without its "
                    f"clients: {', '.join(s.info.get('client_ids', []))}"
                )
        return running

    def follow(self, run_id: int, follower: MetricsFollower) -> None:
        """Stream the run's events until it logs ``done``; fail fast when it cannot finish."""
        assert self.cli is not None
        next_status = time.monotonic() + self.options.status_every_s
        while True:
            for event in follower.poll():
                self.on_event(event)
                if event.get("event") == "done":
                    return
            self.processes.refresh()
            self.check_superlink()
            remote_nodes = (self.options.wait_for_nodes or 0) > self.options.supernodes
            if self.report_node_exits() == 0 and not remote_nodes:
                raise FedpktError(f"every SuperNode has exited; see {self.logs}")
            if time.monotonic() >= next_status:
                next_status = time.monotonic() + self.options.status_every_s
                status, details = self.cli.status(run_id)
                if status.startswith("finished"):
                    for event in follower.poll():  # the last lines may have landed meanwhile
                        self.on_event(event)
                        if event.get("event") == "done":
                            return
                    self.cli.save_log(run_id, self.logs / "serverapp.log")
                    detail = details or "no details"
                    raise FedpktError(
                        f"run {run_id} ended as '{status}' before finishing: {detail} "
                        f"(log {self.logs / 'serverapp.log'})"
                    )
            time.sleep(1.0)

    def wait_finished(self, run_id: int, timeout: float = 60.0) -> str:
        """After ``done``: let Flower mark the run finished, then keep the ServerApp log."""
        assert self.cli is not None
        deadline = time.monotonic() + timeout
        status = "unknown"
        while time.monotonic() < deadline:
            status, _ = self.cli.status(run_id)
            if status.startswith("finished"):
                break
            time.sleep(2.0)
        self.cli.save_log(run_id, self.logs / "serverapp.log")
        return status

    # -- the two modes ---------------------------------------------------------------------------
    def serve(self, plans: list[NodePlan]) -> None:
        """SuperLink + SuperNodes here, then submit the app and follow it to the end."""
        o = self.options
        self.start_superlink()
        self.cli = FlowerCli(
            self.home("cli"), self.address, self.ca_cert, self.logs / "flwr-cli.log"
        )
        self.start_supernodes(plans)
        expected = o.wait_for_nodes or o.supernodes
        if expected > o.supernodes:
            self.say(f"waiting for {expected - o.supernodes} more SuperNodes (--join elsewhere)")
        self.wait_for_online(plans, expected)
        run_config = self.launch_dir / "run-config.toml"
        atomic_write_text(
            run_config,
            tomli_w.dumps(
                {
                    "config": str(self.run.config_path.resolve()),
                    "set": "",
                    "run-dir": str(self.root),
                    "phases": o.phases,
                    "resume": o.resume,
                }
            ),
        )
        follower = MetricsFollower(self.run.metrics_path)
        run_id = self.cli.submit(app_directory(), run_config)
        self.say(f"submitted run {run_id} (phases: {o.phases})")
        self.follow(run_id, follower)
        status = self.wait_finished(run_id)
        self.say(f"run {run_id} {status}")

    def join(self, plans: list[NodePlan]) -> None:
        """SuperNodes only, against a SuperLink elsewhere; serve until Ctrl-C or they all stop."""
        o = self.options
        assert o.join is not None
        check_reachable(o.join)
        self.address = o.join
        if o.node_auth:
            self.cli = FlowerCli(self.home("cli"), o.join, self.ca_cert, self.logs / "flwr-cli.log")
        self.start_supernodes(plans)
        self.wait_for_connected(plans)
        self.say("serving; Ctrl-C stops these SuperNodes")
        while self.report_node_exits() > 0:
            self.processes.refresh()
            time.sleep(1.0)
        raise FedpktError(f"every SuperNode has exited; see {self.logs}")


def launch(
    cfg: FedpktConfig,
    options: LaunchOptions,
    run_dir: str | Path | None = None,
    *,
    on_event: Callable[[Event], None] | None = None,
    on_message: Callable[[str], None] | None = None,
) -> RunDir:
    """Run fedpkt on real SuperLink/SuperNode processes (or join SuperNodes to one elsewhere).

    Prepares the run directory and the client partitions, starts the processes, submits the
    app and follows it to the end; whatever happens, every process started is stopped before
    this returns or raises. Returns the run directory (``report.md``, ``results.json``, ...).
    """
    validate_options(options)
    run = create_run_dir(cfg, run_dir, prefix="launch")
    data_root = ensure_partitions(cfg, run)
    client_ids = [entry["client_id"] for entry in load_manifest(data_root)["clients"]]
    plans = plan_nodes(client_ids, options)
    # Build (embedded) or resolve the backbone once here, so the SuperNodes' ClientApp
    # processes only load it instead of racing to build it; a bad name fails before any start.
    from fedpkt.model.backbone import backbone_path

    backbone_path(cfg.backbone.name, embedded_size=cfg.backbone.embedded_size, progress=False)
    session = Launch(cfg, run, options, on_event, on_message)
    session.prepare_tls()
    with _terminate_as_interrupt():
        try:
            if options.join is None:
                session.serve(plans)
            else:
                session.join(plans)
        finally:
            count = len(session.processes.started)
            with _shielded():
                session.processes.stop()
            if count:
                (on_message or (lambda text: None))(f"stopped {count} processes")
    return run
