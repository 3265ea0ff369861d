"""The log file of a `fedpkt simulate` run, ``RUN/logs/simulate.log``.

The ClientApps run in Ray worker processes, on this machine or on the nodes of a Ray cluster.
Each worker appends Flower's log records (among them ``client A-0001: backbone on cuda ...``)
to this one file in the run directory, through a Ray worker setup hook that finds the file's
path in its environment (:data:`RUN_LOG_ENV`). The driver adds its own lines (which Ray
instance ran the clients) and Flower's warnings and errors (a client's failure is a traceback
there). The file keeps every line, with its host and process; while the run lasts, Flower's
records go to the file only (unless ``fedpkt simulate --verbose``), so the terminal keeps the
progress bars and fedpkt's one-line messages.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from fedpkt.errors import FedpktError, os_error

RUN_LOG_ENV = "FEDPKT_RUN_LOG"
# Loggers whose records go to the file: Flower's (the ClientApp and ServerApp log through it)
# and this package's (the driver's account of the Ray instance).
LOGGERS = ("flwr", "sim")


def run_log_path(run_root: Path) -> Path:
    """Where a simulate run's log file is."""
    return run_root / "logs" / "simulate.log"


def _file_handler(path: str | Path) -> logging.Handler | None:
    """An appending INFO handler on ``path``, or None if the file cannot be opened here."""
    try:
        handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    except OSError:
        return None
    fmt = f"%(asctime)s %(levelname)s {socket.gethostname()} pid %(process)d: %(message)s"
    handler.setFormatter(logging.Formatter(fmt))
    handler.setLevel(logging.INFO)
    return handler


def attach_worker_handler() -> None:
    """Ray worker setup hook: this worker's Flower records also go to the run's log file.

    Runs in every worker process of the run's Ray job, before any task. A worker that cannot
    open the file (a node without the run directory) logs nowhere new; the node check in
    :mod:`sim.ray_cluster` reports that node.
    """
    import flwr.common.logger  # noqa: F401  (sets up the "flwr" logger as the ClientApp has it)

    path = os.environ.get(RUN_LOG_ENV)
    handler = _file_handler(path) if path else None
    if handler is not None:
        logging.getLogger("flwr").addHandler(handler)


@contextlib.contextmanager
def driver_log(path: Path, verbose: bool = False) -> Iterator[None]:
    """While the run lasts, the driver's records from :data:`LOGGERS` also go to ``path``.

    Flower's logger keeps its level (`quiet_runtime` sets WARNING), so the driver adds its
    warnings and errors; this package's loggers log INFO, to the file only.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise os_error(err, "cannot make the run's logs/ folder") from None
    handler = _file_handler(path)
    if handler is None:
        raise FedpktError(f"cannot open the run log '{path}'")
    loggers = [logging.getLogger(name) for name in LOGGERS]
    saved = [(lg, lg.level, lg.propagate, list(lg.handlers)) for lg in loggers]
    logging.getLogger("sim").setLevel(logging.INFO)
    for logger in loggers:
        # The file only: the terminal has the progress bars and fedpkt's one-line errors
        # (Flower prints a client's failure as a traceback, once per message).
        if not verbose:
            logger.propagate = False
            for console in [h for h in logger.handlers if _is_console(h)]:
                logger.removeHandler(console)
        logger.addHandler(handler)
    try:
        yield
    finally:
        for logger, level, propagate, handlers in saved:
            logger.handlers[:] = handlers
            logger.setLevel(level)
            logger.propagate = propagate
        with contextlib.suppress(OSError):  # a full disk: the run's own error says so
            handler.close()


def _is_console(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and not isinstance(
        handler, logging.FileHandler
    )
