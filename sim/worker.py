"""A warm ClientApp worker beside one SuperNode: imports and backbone once, not per message.

In its default mode a Flower 1.42 SuperNode hands every message to ``flower-superexec``, which
starts a new ``flwr-clientapp`` process for it: Python, torch and transformers imported and the
backbone loaded again for each message. ``fedpkt launch`` starts each SuperNode with
``--isolation process`` instead and, beside it, this worker (``python -m sim.worker``), which
claims the SuperNode's ClientApp tasks on its local Runtime API (``sim.runtime_tasks``, the
same calls ``flwr-clientapp`` makes) and runs them one after another in this interpreter:

1. claim the oldest pending task (polled every ``--poll`` seconds);
2. pull its message, context and FAB; heartbeat while it runs;
3. for the first task only: install the FAB and load its ClientApp (``clients.app:app``, the
   same object with the same mods: egress log, SecAgg+, DP), checking that every package of the
   app was imported from the FAB;
4. run the ClientApp on the message, push the reply and the updated context.

Whatever ``clients.app`` caches lives as long as the worker: the backbone, each client's
``LocalClient`` and tokenised data. One interpreter serves one run of one FAB: a task from
another run or with another FAB hash is handed over to a fresh interpreter (``os.execv``, same
pid and log), so an app is never served by modules imported for an older one.

Failures. An exception in the ClientApp becomes an error reply, as in ``flwr-clientapp``; after
a CUDA error the worker also exits (exit code 75) rather than reuse a broken CUDA context. The
task held is written to ``--state`` before each step (token, stage, the request's metadata;
mode 0600). A worker that dies (SIGKILL, OOM) is restarted by the launcher (``sim.launch``), and
the new one first answers its predecessor's task as failed (``CLIENT_APP_CRASHED``), so that the
round goes on at once instead of after the SuperNode's 60 s heartbeat expiry.

Each task adds one JSON line to ``--timings``: ids, message type and round, the request's
``created_at`` (the ServerApp's clock), when it was claimed, received and replied, and
``compute_s`` (the ClientApp call alone); ``bench/launch.py`` derives the per-message overhead
from them.

Nothing from the fedpkt packages is imported here: the app's own copy is loaded from the FAB.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import threading
import time
from logging import ERROR, INFO, WARNING
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sim.flower_pin import flower_version_problem

if TYPE_CHECKING:
    from flwr.clientapp import ClientApp

    from sim.runtime_tasks import Claim, RuntimeTasks

PRELOAD = (
    "torch",
    "transformers",
    "transformers.modeling_utils",
    "transformers.models.auto.modeling_auto",
    "transformers.models.gpt2.modeling_gpt2",
    "transformers.generation",
    "transformers.optimization",
    "peft",
    "flwr.clientapp",
)
"""Third-party modules imported while no task waits (never the app's own packages, which come
from the FAB; opacus neither: the app imports it only when DP is on)."""
EXIT_VERSION = 2
EXIT_CUDA = 75
IDLE_POLL_S = 0.2


# -- the held-task record -------------------------------------------------------------------------
def write_held(path: Path, record: dict[str, Any]) -> None:
    """Replace the held-task record atomically (0600: it holds the task's token)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(record, handle)
    os.replace(tmp, path)


def read_held(path: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


def clear_held(path: Path) -> None:
    path.unlink(missing_ok=True)


def cuda_broken(err: BaseException) -> bool:
    """Whether an exception leaves the CUDA context unfit for the next message."""
    text = f"{type(err).__name__}: {err}"
    return "CUDA error" in text or "OutOfMemoryError" in text or "CUBLAS_STATUS" in text


def packages_outside(app_dir: Path, modules: dict[str, Any]) -> dict[str, str]:
    """Top-level packages of the app at ``app_dir`` that were imported from somewhere else.

    A worker must run the FAB's code: a package of the app already imported from the source
    tree (or from an older FAB) would be reused by Python instead of the FAB's copy. The
    worker's own package (``sim``) is exempt: the ClientApp never imports it (import contract).
    """
    root = app_dir.resolve()
    own = (__package__ or __name__).split(".")[0]
    found: dict[str, str] = {}
    for child in sorted(app_dir.iterdir()):
        if not (child / "__init__.py").is_file() or child.name not in modules or child.name == own:
            continue
        origin = getattr(modules[child.name], "__file__", None) or ""
        if not Path(origin).resolve().is_relative_to(root):
            found[child.name] = origin
    return found


def log_line(level: int, text: str, *args: Any, **kwargs: Any) -> None:
    from flwr.common.logger import log

    log(level, "[worker] " + text, *args, **kwargs)


class Worker:
    """Claims this SuperNode's ClientApp tasks and runs them in this interpreter."""

    def __init__(self, tasks: RuntimeTasks, state: Path, timings: Path, poll_s: float) -> None:
        self.tasks = tasks
        self.state = state
        self.timings = timings
        self.poll_s = poll_s
        self.bound: tuple[int, str] | None = None  # (run id, FAB hash) this interpreter serves
        self.app: ClientApp | None = None
        self.stale = False  # the app failed to load: the next task gets a fresh interpreter

    # -- the loop ---------------------------------------------------------------------------------
    def serve_forever(self) -> None:
        log_line(INFO, "serving ClientApp tasks from %s", self.tasks.address)
        while True:
            if not self.serve_one():
                time.sleep(self.poll_s)

    def serve_one(self) -> bool:
        """Claim the next task and run it here, or hand it over; False when none was pending."""
        claim = self.tasks.claim()
        if claim is None:
            return False
        if self.stale or (self.bound is not None and self.bound != (claim.run_id, claim.fab_hash)):
            self.hand_over(claim)
        self.run_task(claim)
        return True

    def hand_over(self, claim: Claim) -> None:
        """Give a claimed task to a fresh interpreter in this process (never returns)."""
        log_line(
            INFO,
            "task of run %s (FAB %s) is not this interpreter's (run %s): restarting fresh",
            claim.run_id,
            claim.fab_hash[:12],
            self.bound[0] if self.bound else "-",
        )
        self.hold(claim, "handover")
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])

    def hold(self, claim: Claim, stage: str, **extra: Any) -> None:
        record = {
            "stage": stage,
            "token": claim.token,
            "task_id": claim.task_id,
            "run_id": claim.run_id,
            "fab_hash": claim.fab_hash,
            **extra,
        }
        write_held(self.state, record)

    # -- one task --------------------------------------------------------------------------------
    def run_task(self, claim: Claim) -> None:
        from flwr.app import Error, Message

        timing: dict[str, Any] = {
            "task_id": claim.task_id,
            "run_id": claim.run_id,
            "claimed": time.time(),
        }
        self.hold(claim, "claimed")
        session = self.tasks.session(claim.token)
        exit_code: int | None = None
        try:
            session.start_heartbeats()
            try:
                message, context, run, fab = session.pull()
            except Exception as err:  # the task is gone: expired or stopped
                log_line(ERROR, "task %s: could not pull its input: %s", claim.task_id, err)
                timing.update(ok=False, details=f"pull failed: {err}")
                clear_held(self.state)
                return
            meta = message.metadata
            timing.update(
                received=time.time(),
                message_id=meta.message_id,
                type=meta.message_type,
                group=meta.group_id,
                node_id=meta.dst_node_id,
                created=meta.created_at,
            )
            from sim.runtime_tasks import request_metadata_text

            request = request_metadata_text(message)
            self.hold(claim, "running", request=request, type=meta.message_type)
            started = time.perf_counter()
            try:
                app = self.app_for(claim, run, fab, timing)
                started = time.perf_counter()
                reply = app(message=message, context=context)
                ok, details = True, ""
            except Exception as err:  # as flwr-clientapp: an error reply
                code, details = self.error_of(err)
                log_line(ERROR, "ClientApp raised an exception", exc_info=err)
                reply = Message(Error(code=code, reason=details), reply_to=message)
                ok = False
                if cuda_broken(err):
                    exit_code = EXIT_CUDA
            timing["compute_s"] = time.perf_counter() - started
            session.reply(reply, context)
            timing["replied"] = time.time()
            self.hold(claim, "replied")
            session.finish(context, ok, details)
            timing.update(finished=time.time(), ok=ok)
            clear_held(self.state)  # answered; after anything unexpected a successor answers
        finally:
            session.close()
            self.record(timing)
        if exit_code is not None:
            log_line(ERROR, "CUDA error: exiting so that the launcher starts a fresh worker")
            sys.exit(exit_code)

    def error_of(self, err: BaseException) -> tuple[int, str]:
        from flwr.clientapp.client_app import LoadClientAppError
        from flwr.common.constant import ErrorCode

        if isinstance(err, LoadClientAppError):
            return ErrorCode.LOAD_CLIENT_APP_EXCEPTION, f"could not load the ClientApp: {err}"
        return ErrorCode.CLIENT_APP_RAISED_EXCEPTION, f"{type(err)}:<'{err}'>"

    def app_for(self, claim: Claim, run: Any, fab: Any, timing: dict[str, Any]) -> ClientApp:
        """The FAB's ClientApp, installed and imported on this interpreter's first task."""
        if self.app is not None:
            return self.app
        from flwr.cli.install import install_from_fab
        from flwr.clientapp.client_app import LoadClientAppError
        from flwr.clientapp.utils import get_load_client_app_fn
        from flwr.common.config import get_project_dir

        self.bound = (claim.run_id, claim.fab_hash)
        self.stale = True  # until the load below succeeds
        started = time.perf_counter()
        install_from_fab(fab.content, skip_prompt=True)
        app_dir = get_project_dir(run.fab_id, run.fab_version, fab.hash_str)
        load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
        app = load(run.fab_id, run.fab_version, fab.hash_str)
        outside = packages_outside(app_dir, dict(sys.modules))
        if outside:
            raise LoadClientAppError(
                "packages of the app were imported from outside its FAB "
                f"({', '.join(f'{k}: {v}' for k, v in outside.items())}), expected {app_dir}"
            )
        self.app, self.stale = app, False
        timing["load_s"] = time.perf_counter() - started
        log_line(INFO, "run %s: ClientApp loaded from %s", claim.run_id, app_dir)
        return app

    def record(self, timing: dict[str, Any]) -> None:
        self.timings.parent.mkdir(parents=True, exist_ok=True)
        with self.timings.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(timing, sort_keys=True) + "\n")

    # -- what a predecessor left ----------------------------------------------------------------
    def recover(self, predecessor_exit: str) -> bool:
        """Run a handed-over task, or answer a dead predecessor's task as failed.

        Returns True when a task was handed over (the interpreter is then bound to its run).
        """
        from sim.runtime_tasks import Claim

        held = read_held(self.state)
        if held is None:
            return False
        claim = Claim(held["token"], held["task_id"], held["run_id"], held["fab_hash"])
        if held["stage"] == "handover":
            self.run_task(claim)
            return True
        self.answer_failed(claim, held, predecessor_exit)
        return False

    def answer_failed(self, claim: Claim, held: dict[str, Any], predecessor_exit: str) -> None:
        from flwr.common.constant import ErrorCode

        from sim.runtime_tasks import request_from_metadata

        reason = (
            f"the fedpkt worker running this message stopped (exit code {predecessor_exit}) "
            f"before replying; see {self.timings.parent / (self.state.stem + '.log')}"
        )
        session = self.tasks.session(claim.token)
        session.retry.max_tries = 1
        try:
            if held["stage"] == "replied":
                session.finish(None, ok=False, details=reason)
            else:
                if held["stage"] == "claimed":
                    request = session.pull()[0]
                else:
                    request = request_from_metadata(held["request"])
                session.fail(request, ErrorCode.CLIENT_APP_CRASHED, reason)
            log_line(WARNING, "task %s of the previous worker answered as failed", claim.task_id)
            self.record({"task_id": claim.task_id, "run_id": claim.run_id, "recovered": True})
        except Exception as err:  # expired: the SuperNode answers it
            log_line(
                WARNING,
                "could not answer task %s of the previous worker (%s); the SuperNode does "
                "when its heartbeat expires",
                claim.task_id,
                err,
            )
        finally:
            session.close()
            clear_held(self.state)


# -- the process ----------------------------------------------------------------------------------
def preload() -> None:
    """Import the heavy third-party modules while no task is waiting for them."""
    started = time.perf_counter()
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError as err:
            log_line(WARNING, "preload of %s failed: %s", name, err)
    log_line(INFO, "preloaded %s in %.1f s", ", ".join(PRELOAD), time.perf_counter() - started)


def watch_supernode(pid: int) -> None:
    """Exit as soon as the SuperNode this worker serves is gone (as flower-superexec does)."""

    def watch() -> None:
        while True:
            time.sleep(0.5)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                log_line(WARNING, "SuperNode (pid %s) is gone: exiting", pid)
                os._exit(0)
            except PermissionError:
                continue

    threading.Thread(target=watch, name="supernode-watch", daemon=True).start()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    summary = (__doc__ or "").split("\n")[0]
    parser = argparse.ArgumentParser(prog="python -m sim.worker", description=summary)
    parser.add_argument("--runtime", required=True, help="HOST:PORT of the SuperNode Runtime API")
    parser.add_argument("--supernode-pid", type=int, required=True)
    parser.add_argument("--state", type=Path, required=True, help="the held-task record")
    parser.add_argument("--timings", type=Path, required=True, help="JSON lines, one per task")
    parser.add_argument("--poll", type=float, default=IDLE_POLL_S, help="idle poll (s)")
    parser.add_argument("--predecessor-exit", default="unknown", help="exit code of the last")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = flower_version_problem()
    if problem:
        print(problem, file=sys.stderr)
        return EXIT_VERSION
    from sim.runtime_tasks import RuntimeTasks  # Flower internals: only once the pin holds

    watch_supernode(args.supernode_pid)
    worker = Worker(RuntimeTasks(args.runtime), args.state, args.timings, args.poll)
    if not worker.recover(args.predecessor_exit):
        preload()
    worker.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
