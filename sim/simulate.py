"""``fedpkt simulate``: the whole pipeline on one machine through Flower's Simulation Engine.

``simulation.clients_per_node`` personas per virtual SuperNode (node p of N serves manifest
clients p, p+N, ...); each persona reads only its own partition folder. Flower's Simulation
Engine polls every node for every message in flight, so the paper's 1,293 personas on 81 nodes
cost its server thread little, where one node per persona kept a core busy. The same ServerApp
and ClientApp run unchanged under ``flwr run .`` and on real SuperLink/SuperNodes.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from flwr.clientapp.typing import Mod
from flwr.simulation import run_simulation
from safetensors.numpy import load_file

from clients.app import make_client_app
from fedpkt.atomic import atomic_write_json
from fedpkt.config import FedpktConfig
from fedpkt.data.partition import load_client, load_manifest
from fedpkt.errors import FedpktError, os_error
from fedpkt.model.backbone import load_backbone, load_backbone_from_config
from fedpkt.peft import get_method
from fedpkt.preflight import check_run_inputs
from fedpkt.privacy.exposure import client_canaries, exposure_markdown, exposure_table
from fedpkt.report import append_section
from fedpkt.rundir import (
    RunDir,
    check_run_dir,
    create_run_dir,
    disk_full,
    ensure_partitions,
    run_path,
)
from fedpkt.runlock import check_unlocked, hold_run_dir
from server.app import ServerSettings, make_server_app
from sim.ray_cluster import check_resources, ray_session


class _DropDeprecationNotice(logging.Filter):
    """`run_simulation` is the supported in-process API for an app with bound settings;
    Flower's notice that it prefers `flwr run` is noise for fedpkt users."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "DEPRECATED FEATURE" not in record.getMessage()


def quiet_runtime(verbose: bool = False) -> None:
    """Keep the terminal for fedpkt's progress: Flower warnings only (its INFO lines too with
    ``verbose``), no weight-loading bars."""
    import transformers

    flwr_logger = logging.getLogger("flwr")
    flwr_logger.setLevel(logging.INFO if verbose else logging.WARNING)
    if not any(isinstance(f, _DropDeprecationNotice) for f in flwr_logger.filters):
        flwr_logger.addFilter(_DropDeprecationNotice())
    logging.raiseExceptions = False  # a log line that cannot be written is no traceback
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def client_defaults(cfg: FedpktConfig, run: RunDir, data_root: Path) -> dict[str, object]:
    """Node settings every simulated SuperNode starts from."""
    return {
        "data-root": str(data_root),
        "vault-root": str(run.vaults),
        "egress-dir": str(run.egress),
        "record-payloads": cfg.privacy.record_payloads,
    }


def simulated_nodes(cfg: FedpktConfig, num_clients: int) -> int:
    """Virtual SuperNodes for ``num_clients`` personas: ``simulation.clients_per_node`` each,
    except under SecAgg+, whose protocol runs between nodes and so needs one client per node."""
    per_node = 1 if cfg.privacy.secagg else cfg.simulation.clients_per_node
    return math.ceil(num_clients / per_node)


def simulate(
    cfg: FedpktConfig,
    run_dir: str | Path | None = None,
    *,
    phases: str = "all",
    resume: bool = False,
    method: str | None = None,
    on_event: Callable[[dict], None] | None = None,
    num_workers: int | None = None,
    client_mods: list[Mod] | None = None,
    verbose: bool = False,
) -> RunDir:
    """Run phase 1 and/or phase 2 in Flower's Simulation Engine; returns the run directory."""
    quiet_runtime(verbose)
    root = check_simulate(cfg, run_dir, phases=phases, resume=resume)
    # One run directory, one run: the lock comes before anything is written there.
    with hold_run_dir(root):
        try:
            return _simulate(
                cfg, root, phases, resume, method, on_event, num_workers, client_mods, verbose
            )
        except (FedpktError, OSError) as err:
            full = disk_full(root)
            if full is None:
                raise
            first = str(os_error(err) if isinstance(err, OSError) else err)[:200]
            raise FedpktError(
                f"{full}; the run stopped ({first}); free some space, then continue with "
                f"`fedpkt simulate --run-dir {root} --resume`"
            ) from None


def check_simulate(
    cfg: FedpktConfig,
    run_dir: str | Path | None = None,
    *,
    phases: str = "all",
    resume: bool = False,
) -> Path:
    """Everything ``simulate`` can refuse before it writes anything; returns the run directory
    it will use (a new one when ``run_dir`` is None).

    The phases; a GPU nothing can serve; a CUDA backbone on workers that get no GPU; the
    inputs (``fedpkt.preflight``: devices, data, backbone, prefix size); a run directory that
    is in use, holds another experiment, or holds work only ``--resume`` may continue.
    """
    if phases not in ("all", "source", "personalize"):
        raise FedpktError(f"phases='{phases}' is not one of all, source, personalize")
    quiet_runtime()
    check_resources(cfg.simulation)
    check_run_inputs(cfg)
    device = cfg.backbone.device
    if cfg.simulation.gpus_per_client == 0 and device.startswith("cuda"):
        raise FedpktError(
            f"backbone.device='{device}' runs the clients' backbone on a GPU, but "
            "simulation.gpus_per_client=0 gives the simulation workers none; use "
            "--gpus-per-client (e.g. 0.25) or backbone.device='auto'"
        )
    # Build/resolve and load the backbone here, once (workers then only load it; this process
    # keeps it): broken weights or tokenizer are refused before anything is written.
    load_backbone(
        cfg.backbone.name,
        embedded_size=cfg.backbone.embedded_size,
        embedded_recipe=cfg.backbone.embedded_recipe,
        device=cfg.backbone.device,
        dtype=cfg.backbone.dtype,
    )
    root = run_path(cfg, run_dir).absolute()
    check_unlocked(root)
    check_run_dir(cfg, root, resume=resume, phases=phases)
    return root


def _simulate(
    cfg: FedpktConfig,
    root: Path,
    phases: str,
    resume: bool,
    method: str | None,
    on_event: Callable[[dict], None] | None,
    num_workers: int | None,
    client_mods: list[Mod] | None,
    verbose: bool,
) -> RunDir:
    # Absolute paths: workers (on other machines, with --ray-address) get them as they are.
    run = RunDir(create_run_dir(cfg, root, resume=resume).root.absolute())
    data_root = ensure_partitions(cfg, run).absolute()
    num_clients = len(load_manifest(data_root)["clients"])
    workers = num_workers or cfg.simulation.workers or max(1, min(os.cpu_count() or 1, 8))
    num_nodes = simulated_nodes(cfg, num_clients)
    settings = ServerSettings(
        run_dir=run.root,
        phases=phases,
        resume=resume,
        method=method,
        on_event=on_event,
        min_nodes=num_nodes,
    )
    with ray_session(
        cfg.simulation, run.root, data_root, workers, verbose=verbose
    ) as backend_config:
        run_simulation(
            server_app=make_server_app(settings),
            client_app=make_client_app(client_defaults(cfg, run, data_root), client_mods),
            num_supernodes=num_nodes,
            backend_config=backend_config,
        )
    done = run.events("done")
    if not done:
        raise FedpktError(
            f"simulation ended without finishing; see {run.root / 'logs'}; once the cause is "
            f"fixed, continue with `fedpkt simulate --run-dir {run.root} --resume`"
        )
    ran_phase1 = run.source_prefix.is_file() and phases in ("all", "source")
    if cfg.data.canaries and ran_phase1 and (run.root / "report.md").is_file():
        report_exposure(cfg, run, data_root)
    return run


def report_exposure(cfg: FedpktConfig, run: RunDir, data_root: Path, limit: int = 12) -> None:
    """Secret Sharer exposure of the planted canaries under the shared source prefix.

    This is the experimenter's measurement (only whoever planted the canaries knows them), so
    it runs here, after the federation, not on the server. At most ``limit`` canaries, the
    first ones in client order, are ranked; ``exposure.json`` keeps every row.
    """
    canaries = []
    for entry in load_manifest(data_root)["clients"]:
        if entry["part"] == "A" and len(canaries) < limit:
            canaries += client_canaries(load_client(data_root, entry["client_id"]))
    if not canaries:
        return
    backbone = load_backbone_from_config(cfg.backbone, progress=False)
    source = load_file(str(run.source_prefix))
    rows = exposure_table(
        backbone,
        source,
        canaries[:limit],
        num_samples=1000,
        seed=cfg.seed,
        peft=get_method(cfg.prefix.method),
    )
    atomic_write_json(run.root / "exposure.json", [asdict(row) for row in rows])
    dp = f"DP-SGD on (target epsilon {cfg.dp.epsilon})" if cfg.dp.enabled else "DP-SGD off"
    append_section(
        run.root,
        "Canary exposure of the source prefix",
        f"Secret Sharer exposure (Carlini et al., 2019) of canaries planted in Part A training "
        f"data, ranked under the final source prefix; {dp}. Compare with a run that differs "
        f"only in `dp.enabled`.\n\n{exposure_markdown(rows)}",
    )
