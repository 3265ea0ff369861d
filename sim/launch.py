"""``fedpkt launch``: the fedpkt app on a real Flower federation of OS processes.

Where ``fedpkt simulate`` runs virtual SuperNodes inside one process, this starts Flower's own
code as OS processes: one ``flower-superlink`` and N SuperNodes (Flower's, through
``sim.supernode`` for shorter waits, with ``--isolation process``), each with one warm ClientApp
worker beside it (``sim.worker``, started and restarted by ``sim.worker_pool``) that serves all
of that SuperNode's messages. Each SuperNode and its worker are pinned to one GPU
(``CUDA_VISIBLE_DEVICES``, round-robin over ``--gpus``) and serve their own share of the client
partitions (round-robin over the manifest's client ids, passed as the node config's
``client-ids``). The app is submitted with ``flwr run`` while the SuperNodes start (the
ServerApp waits for ``min-nodes``), and ``RUN/metrics.jsonl`` is followed until the ServerApp
logs ``done``. The run directory ends up with the same files as ``fedpkt simulate``.

Flower 1.42 serves the Fleet, Control and Runtime APIs of a SuperLink on one HTTP(S) port
(``--host``/``--port``); each SuperNode also opens a local Runtime port, where its worker
claims the ClientApp tasks. Every port is picked free unless given. The worker protocol is a
Flower internal: ``validate_options`` refuses any Flower but 1.42 (``sim.flower_pin``).

On success, failure, Ctrl-C or SIGTERM everything started is stopped — SIGTERM to each group,
then SIGKILL to whatever is left — and waited for. This module is the orchestration only: the
steps of one launch (``Launch``) and ``launch()``, which always stops what it started. Its parts
live beside it, one job each: ``sim.launch_plan`` (options, validation, which clients and GPU
each SuperNode gets), ``sim.network`` (addresses and ports), ``sim.processes`` (process groups,
descendants, ``processes.json``), ``sim.worker_pool`` (the workers), ``sim.flower_cli`` (the
``flwr`` CLI) and ``sim.certs`` (TLS). Their public names are re-exported here, so
``from sim.launch import X`` keeps working.

Files (all under the run directory)::

    certs/                 ca.pem, server.pem/.key (generated unless given), nodes/ auth keys
    logs/                  superlink.log, supernode-K.log, worker-K.log, serverapp.log,
                           flwr-cli.log; worker-K.tasks.jsonl (one timing line per message)
    launch/processes.json  what was started: name, pid, process group, argv, log, GPU, clients,
                           exit code, CPU seconds, restarts
    launch/supernode-K.toml  the node config of SuperNode K
    launch/run-config.toml   the run config handed to ``flwr run``
    launch/workers/        the task each worker holds, while it holds one
    launch/flwr/<name>/    FLWR_HOME of each SuperNode and its worker (installed app copies),
                           of the SuperLink and the CLI; never ~/.flwr
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import tomli_w

from fedpkt.atomic import atomic_write_text
from fedpkt.config import FedpktConfig
from fedpkt.data.partition import load_manifest
from fedpkt.errors import FedpktError
from fedpkt.preflight import check_run_inputs
from fedpkt.rundir import RunDir, check_run_dir, create_run_dir, ensure_partitions, run_path
from fedpkt.runlock import check_unlocked, hold_run_dir
from sim.certs import (
    TlsFiles,
    ensure_certificates,
    ensure_node_keys,
    given_certificates,
    require_pem,
)
from sim.flower_cli import CONNECTION, FlowerCli
from sim.launch_plan import (
    PHASES,
    LaunchOptions,
    NodePlan,
    check_gpus,
    cuda_device_count,
    gpu_for_node,
    parse_gpus,
    parse_shard,
    plan_nodes,
    round_robin,
    validate_options,
)
from sim.network import (
    check_reachable,
    check_superlink,
    connect_host,
    ensure_port_free,
    format_address,
    free_port,
    parse_address,
    port_open,
)
from sim.processes import (
    ProcessSet,
    Started,
    child_env,
    flower_bin_dir,
    flower_executable,
    last_line,
)
from sim.supernode import POLL_ENV
from sim.worker_pool import WorkerPool, worker_name

__all__ = [  # this module's own names and the re-exports of what used to be defined here
    "CONNECTION",
    "LOOPBACK_HOSTS",
    "PHASES",
    "Event",
    "FlowerCli",
    "Interrupted",
    "Launch",
    "LaunchOptions",
    "MetricsFollower",
    "NodePlan",
    "ProcessSet",
    "Started",
    "app_directory",
    "check_gpus",
    "check_reachable",
    "child_env",
    "connect_host",
    "cuda_device_count",
    "ensure_port_free",
    "flower_bin_dir",
    "flower_executable",
    "format_address",
    "free_port",
    "gpu_for_node",
    "last_line",
    "launch",
    "node_config",
    "parse_address",
    "parse_gpus",
    "parse_shard",
    "plan_nodes",
    "port_open",
    "round_robin",
    "terminate_as_interrupt",
    "validate_options",
]

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "0.0.0.0", "::", "::1")
Event = dict[str, Any]


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


class Interrupted(KeyboardInterrupt):
    """A stop signal, as a KeyboardInterrupt that remembers which one (the exit code)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Turn SIGINT/SIGTERM/SIGHUP into :class:`Interrupted` so one cleanup path runs for all.

    SIGINT is set too, not left to Python's default: a launcher started as a background job
    of a script inherits SIGINT *ignored* (POSIX shells do that, and Python keeps it), and
    Ctrl-C or ``kill -INT`` must still stop every process it started.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Interrupted(signum)

    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, handler) for sig in signals}
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
        self.workers = WorkerPool(self.processes, self.root, self.say, self.on_event)
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
        while not port_open(o.host, port):
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
            # Flower's flower-supernode, its idle poll shortened (sim/supernode.py).
            argv = [sys.executable, "-m", "sim.supernode", "--superlink", self.address]
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
            # `process` isolation: the SuperNode starts no flower-superexec; its tasks go to
            # the fedpkt worker started beside it (sim.worker), one warm process per node.
            argv += ["--isolation", "process"]
            visible = "" if plan.gpu is None else str(plan.gpu)
            home = self.home(plan.name)
            env = child_env(
                {
                    "FLWR_HOME": str(home),
                    "CUDA_VISIBLE_DEVICES": visible,
                    POLL_ENV: str(o.node_poll_s),
                }
            )
            node = self.processes.start(
                plan.name,
                argv,
                env,
                self.logs / f"{plan.name}.log",
                gpu=plan.gpu,
                client_ids=list(plan.client_ids),
                runtime_port=port,
            )
            self.workers.start(plan, node, port, home, o.node_poll_s)
            device = "CPU" if plan.gpu is None else f"GPU {plan.gpu}"
            clients = ", ".join(plan.client_ids)
            self.say(
                f"{plan.name} on {device}: {len(plan.client_ids)} clients ({clients}), "
                f"served by {worker_name(plan.name)}"
            )

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
            self.workers.check()
            if time.monotonic() > deadline:
                raise FedpktError(
                    f"only {online} of {expected} SuperNodes connected to {self.address} within "
                    f"{self.options.startup_timeout_s:.0f} s; see {self.logs}"
                )
            time.sleep(2.0)
            online = self.cli.online_nodes()
        self.say(f"{online} SuperNodes online")

    def wait_for_connected(self, plans: list[NodePlan], done: str) -> None:
        """Each SuperNode logs its node id once the SuperLink accepted it: cheaper than asking
        the SuperLink (``flwr supernode list``), where every node to wait for is local."""
        deadline = time.monotonic() + self.options.startup_timeout_s
        pending = {plan.name for plan in plans}
        while pending:
            self.check_nodes_alive(plans)
            self.workers.check()
            for name in sorted(pending):
                log = self.processes.get(name).log
                if "SuperNode ID:" in log.read_text(encoding="utf-8", errors="replace"):
                    pending.discard(name)
            if pending and time.monotonic() > deadline:
                raise FedpktError(
                    f"{', '.join(sorted(pending))} did not connect to {self.address} within "
                    f"{self.options.startup_timeout_s:.0f} s; see {self.logs}"
                )
            time.sleep(0.5)
        self.say(done)

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
            self.workers.check()
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
            time.sleep(0.5)
        self.cli.save_log(run_id, self.logs / "serverapp.log")
        return status

    # -- the two modes ---------------------------------------------------------------------------
    def serve(self, plans: list[NodePlan]) -> None:
        """SuperLink, the app submitted, SuperNodes and workers here; follow the run to its end.

        The run is submitted before the SuperNodes start, so that building the FAB and starting
        the ServerApp overlap with their start-up: the ServerApp waits for ``min-nodes`` nodes
        before its handshake asks them which clients they serve.
        """
        o = self.options
        self.start_superlink()
        self.cli = FlowerCli(
            self.home("cli"), self.address, self.ca_cert, self.logs / "flwr-cli.log"
        )
        expected = o.wait_for_nodes or o.supernodes
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
                    "min-nodes": expected,
                    "node-wait-s": o.startup_timeout_s,
                }
            ),
        )
        follower = MetricsFollower(self.run.metrics_path)
        run_id = self.cli.submit(app_directory(), run_config)
        self.say(f"submitted run {run_id} (phases: {o.phases})")
        self.start_supernodes(plans)
        if expected > o.supernodes:
            self.say(f"waiting for {expected - o.supernodes} more SuperNodes (--join elsewhere)")
            self.wait_for_online(plans, expected)
        else:
            self.wait_for_connected(plans, f"{expected} SuperNodes online")
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
        self.wait_for_connected(plans, f"{len(plans)} SuperNodes connected to {o.join}")
        self.say("serving; Ctrl-C stops these SuperNodes")
        while self.report_node_exits() > 0:
            self.processes.refresh()
            self.workers.check()
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
    root = check_launch(cfg, options, run_dir)
    with hold_run_dir(root):
        return _launch(cfg, options, root, on_event, on_message)


def check_launch(cfg: FedpktConfig, options: LaunchOptions, run_dir: str | Path | None) -> Path:
    """Everything ``launch`` can refuse before it writes or starts anything; returns the run
    directory it will use: the flags, the inputs (``fedpkt.preflight``), a given ``--port``
    that is taken, and for ``--join`` a CA certificate and an address that answers as a
    SuperLink; then a run directory in use or holding another experiment."""
    validate_options(options)
    check_run_inputs(cfg)
    root = run_path(cfg, run_dir, prefix="launch").absolute()
    if options.join is None:
        if options.port is not None:
            ensure_port_free(options.host, options.port)
    else:
        ca = None
        if not options.insecure:
            ca = options.ca_cert or (root / "certs" / "ca.pem")
            if not ca.is_file():
                raise FedpktError(
                    f"--join {options.join}: no CA certificate at '{ca}'; pass --ca-cert with "
                    "the SuperLink's ca.pem (RUN/certs/ca.pem on its machine) or --insecure"
                )
            require_pem("--ca-cert", ca)
        check_superlink(options.join, ca)
    check_unlocked(root)
    phases = None if options.join is not None else options.phases
    check_run_dir(cfg, root, resume=options.resume, phases=phases)
    return root


def _launch(
    cfg: FedpktConfig,
    options: LaunchOptions,
    root: Path,
    on_event: Callable[[Event], None] | None,
    on_message: Callable[[str], None] | None,
) -> RunDir:
    run = create_run_dir(cfg, root, resume=options.resume)
    data_root = ensure_partitions(cfg, run)
    client_ids = [entry["client_id"] for entry in load_manifest(data_root)["clients"]]
    plans = plan_nodes(client_ids, options)
    # Build (embedded) or resolve the backbone once here, so the SuperNodes' ClientApp
    # processes only load it instead of racing to build it; a bad name fails before any start.
    from fedpkt.model.backbone import backbone_path

    backbone_path(
        cfg.backbone.name,
        embedded_size=cfg.backbone.embedded_size,
        embedded_recipe=cfg.backbone.embedded_recipe,
        progress=False,
    )
    session = Launch(cfg, run, options, on_event, on_message)
    session.prepare_tls()
    with terminate_as_interrupt():
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
