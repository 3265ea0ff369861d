"""Checks a run makes before it writes anything: every input it reads, refused in one line.

The order of a run (issue 16 §1): the typed config (``fedpkt.config``), then these checks,
then the lock on the run directory (``fedpkt.runlock``) and the run directory's own checks
(``fedpkt.rundir.check_run_dir``), and only then the first write. A bad backbone path, an
unknown or absent device, a missing or empty prepared data folder or a prefix too large for
this machine's memory therefore never leave a half-made run directory behind.
"""

from __future__ import annotations

from pathlib import Path

import psutil

from fedpkt.config import FedpktConfig
from fedpkt.errors import FedpktError, os_error

# Bytes per trainable prefix parameter while it trains: float32 weight, gradient and AdamW's
# two moments.
TRAINING_BYTES_PER_PARAM = 16
# A prefix may take at most this share of the machine's memory (the backbone needs the rest).
PREFIX_MEMORY_SHARE = 0.5


def check_run_inputs(cfg: FedpktConfig) -> None:
    """Devices, prepared data, PERSONA-CHAT path and backbone (its config: cheap) of ``cfg``;
    the embedded backbone is built into the cache if missing (not into any run directory)."""
    check_devices(cfg)
    check_data(cfg)
    check_backbone(cfg)


def check_devices(cfg: FedpktConfig) -> None:
    """``backbone.device`` (and the NLI model's device, when one is used) exist here."""
    _device("backbone.device", cfg.backbone.device)
    if cfg.eval.c_backend == "model":
        _device("eval.nli_device", cfg.eval.nli_device)


def _device(key: str, value: str) -> None:
    from fedpkt.model.backbone import resolve_device  # torch: only once the config is valid

    try:
        resolve_device(value)
    except FedpktError as err:
        raise FedpktError(f"{key}: {err}") from None


def check_data(cfg: FedpktConfig) -> None:
    """A configured ``data.prepared_dir`` holds a manifest with clients; a local PERSONA-CHAT
    ``data.path`` exists."""
    if cfg.data.prepared_dir:
        check_prepared_dir(Path(cfg.data.prepared_dir))
    elif cfg.data.source == "personachat":
        from fedpkt.data.personachat import check_path

        check_path(cfg.data.path)


def check_prepared_dir(root: Path) -> None:
    """``root`` is a folder ``fedpkt data prepare`` wrote, with at least one client."""
    from fedpkt.data.partition import load_manifest

    hint = f"run `fedpkt data prepare --out {root}` first, or leave data.prepared_dir empty"
    if not root.exists():
        raise FedpktError(f"data.prepared_dir '{root}' does not exist; {hint}")
    if not root.is_dir():
        raise FedpktError(f"data.prepared_dir '{root}' is not a directory; {hint}")
    if not (root / "manifest.json").is_file():
        raise FedpktError(f"data.prepared_dir '{root}' has no manifest.json; {hint}")
    try:
        clients = load_manifest(root)["clients"]
    except OSError as err:
        raise os_error(err, "cannot read data.prepared_dir") from None
    if not clients:
        raise FedpktError(f"data.prepared_dir '{root}' lists 0 clients; {hint}")


def check_backbone(cfg: FedpktConfig) -> None:
    """The backbone resolves to a causal-LM directory, the prefix fits in memory, and the
    configured lengths fit its position table."""
    from fedpkt.model.backbone import backbone_path, check_causal_lm
    from fedpkt.model.positions import check_backbone_fits

    path = backbone_path(
        cfg.backbone.name,
        embedded_size=cfg.backbone.embedded_size,
        embedded_recipe=cfg.backbone.embedded_recipe,
    )
    check_prefix_memory(cfg, check_causal_lm(path, cfg.backbone.name))
    check_backbone_fits(cfg)  # lengths beyond the backbone's position table


def check_prefix_memory(cfg: FedpktConfig, model_config: object) -> None:
    """Refuse a reparameterised prefix (``prefix.projection_hidden``) that could not train in
    this machine's memory: its parameters x 16 bytes must stay under half of it."""
    from fedpkt.peft import get_method

    params = get_method(cfg.prefix.method).trainable_params(model_config, cfg.prefix)
    need = params * TRAINING_BYTES_PER_PARAM
    total = psutil.virtual_memory().total
    if need > PREFIX_MEMORY_SHARE * total:
        raise FedpktError(
            f"prefix.projection_hidden={cfg.prefix.projection_hidden} with "
            f"prefix.num_virtual_tokens={cfg.prefix.num_virtual_tokens} gives a prefix of "
            f"{params:,} parameters ({need / 2**30:.1f} GiB to train), more than half of this "
            f"machine's {total / 2**30:.1f} GiB; use a smaller projection_hidden"
        )
