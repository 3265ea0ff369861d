"""The run directory: one folder per run holding everything a command produced.

Layout (DESIGN.md): ``config.toml`` (resolved), ``checkpoints/``, ``metrics.jsonl`` (one line
per round/client event), ``report.md``, ``results.{csv,json}``, ``egress/``, ``audit.json``,
``plots/`` and ``data/`` (the prepared client partitions, each client reading only its own
folder, with its ``vaults/``).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedpkt.atomic import atomic_write_text
from fedpkt.config import FedpktConfig, config_to_toml, load_config
from fedpkt.errors import FedpktError


@dataclass(frozen=True)
class RunDir:
    """Paths of one run directory."""

    root: Path

    @property
    def config_path(self) -> Path:
        return self.root / "config.toml"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def source_prefix(self) -> Path:
        return self.checkpoints / "source.safetensors"

    @property
    def metrics_path(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def egress(self) -> Path:
        return self.root / "egress"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def vaults(self) -> Path:
        return self.root / "data" / "vaults"

    def data_root(self, cfg: FedpktConfig) -> Path:
        """Where the client partitions are: the configured prepared dir, or ``data/``."""
        return Path(cfg.data.prepared_dir) if cfg.data.prepared_dir else self.data

    def config(self) -> FedpktConfig:
        """The run's resolved configuration."""
        if not self.config_path.is_file():
            raise FedpktError(f"'{self.root}' is not a fedpkt run directory (no config.toml)")
        return load_config(self.config_path)

    def log_event(self, event: dict[str, Any]) -> None:
        """Append one JSON line to ``metrics.jsonl`` (O_APPEND keeps lines whole; fsync makes
        a logged result survive a crash right after, which phase-2 resume relies on)."""
        self.root.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"time": time.time(), **event}, sort_keys=True) + "\n"
        fd = os.open(self.metrics_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The logged events, optionally only those with ``event == kind``."""
        if not self.metrics_path.is_file():
            return []
        rows = [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line]
        return [r for r in rows if kind is None or r.get("event") == kind]


def ensure_partitions(cfg: FedpktConfig, run: RunDir) -> Path:
    """Prepare the client partitions once per run directory (or use ``data.prepared_dir``)."""
    from fedpkt.data.partition import prepare_partitions

    root = run.data_root(cfg)
    if (root / "manifest.json").is_file():
        return root
    if cfg.data.prepared_dir:
        raise FedpktError(
            f"data.prepared_dir '{root}' has no manifest.json; run `fedpkt data prepare` first"
        )
    prepare_partitions(
        source=cfg.data.source,
        scale=cfg.data.scale,
        path=cfg.data.path or None,
        seed=cfg.seed,
        canaries=cfg.data.canaries,
        few_shot_threshold=cfg.data.few_shot_threshold,
        # Synthetic scales fix their Part B size; real PERSONA-CHAT uses the configured share.
        part_b=cfg.data.part_b_fraction if cfg.data.source == "personachat" else None,
        variant=cfg.data.personachat_variant,
        revision=cfg.data.revision,
        data_dir=cfg.data.data_dir,
        out=root,
    )
    return root


def run_path(cfg: FedpktConfig, run_dir: str | Path | None = None, prefix: str = "run") -> Path:
    """``run_dir``, or a new ``<run_root>/<prefix>-<stamp>-s<seed>`` when None."""
    if run_dir is not None:
        return Path(run_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(cfg.run_root) / f"{prefix}-{stamp}-s{cfg.seed}"


def create_run_dir(
    cfg: FedpktConfig, run_dir: str | Path | None = None, prefix: str = "run"
) -> RunDir:
    """Make (or reuse, for resume) a run directory and write the resolved config into it.

    A reused directory must hold the same resolved config: resuming under different settings
    would silently mix two experiments. Settings the backbone cannot take (lengths beyond its
    position table: ``check_backbone_fits``) are refused first, before anything is written.
    """
    from fedpkt.model.positions import check_backbone_fits  # torch/transformers: only here

    check_backbone_fits(cfg)
    run = RunDir(run_path(cfg, run_dir, prefix))
    if run.root.exists() and not run.root.is_dir():
        raise FedpktError(f"run directory '{run.root}' exists and is not a directory")
    text = config_to_toml(cfg)
    if run.config_path.is_file():
        if run.config_path.read_text() != text:
            raise FedpktError(
                f"run directory '{run.root}' holds a different config.toml; "
                "use a new --run-dir or the same settings"
            )
    else:
        atomic_write_text(run.config_path, text)
    return run
