"""The ``flwr`` CLI as Python calls: list SuperNodes, register keys, submit, watch a run.

``fedpkt launch`` talks to its SuperLink's Control API the way a user would, through Flower's
own ``flwr`` executable with ``--format json``, rather than through Flower internals that change
between releases. Each ``FlowerCli`` has a private FLWR_HOME (its ``config.toml`` names one
SuperLink connection, TLS or not), so the user's ``~/.flwr`` is never read or written; every
command and its answer are appended to ``logs/flwr-cli.log``, and a failure is one line.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from pathlib import Path
from typing import Any

import tomli_w

from fedpkt.atomic import atomic_write_text
from fedpkt.errors import FedpktError
from sim.processes import child_env, flower_executable

CONNECTION = "fedpkt"  # the name of the SuperLink connection in the launcher's Flower config


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
