"""The run directory: one folder per run holding everything a command produced.

Layout (docs/design.md): ``config.toml`` (resolved), ``checkpoints/``, ``metrics.jsonl`` (one line
per round/client event), ``report.md``, ``results.{csv,json}``, ``egress/``, ``audit.json``,
``plots/`` and ``data/`` (the prepared client partitions, each client reading only its own
folder, with its ``vaults/``).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedpkt.atomic import atomic_write_text
from fedpkt.config import FedpktConfig, config_to_toml, load_config, tomllib
from fedpkt.errors import FedpktError, os_error
from fedpkt.jsonl import append_line, read_lines


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
        """Append one JSON line to ``metrics.jsonl``: whole and fsynced (``fedpkt.jsonl``), so
        a logged result survives a crash right after, which phase-2 resume relies on."""
        append_line(self.metrics_path, {"time": time.time(), **event})

    def events(self, kind: str | None = None, *, tolerant: bool = False) -> list[dict[str, Any]]:
        """The logged events, optionally only those with ``event == kind``.

        A damaged line is an error naming its number (a torn last line, from a crash mid-write,
        is skipped); ``tolerant`` skips damaged lines instead.
        """
        rows = read_lines(self.metrics_path, "metrics file", tolerant=tolerant).objects
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
    prepare_partitions(root, cfg.data, cfg.seed)
    return root


def run_path(cfg: FedpktConfig, run_dir: str | Path | None = None, prefix: str = "run") -> Path:
    """``run_dir``, or a new ``<run_root>/<prefix>-<stamp>-s<seed>`` when None."""
    if run_dir is not None:
        return Path(run_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(cfg.run_root) / f"{prefix}-{stamp}-s{cfg.seed}"


# Keys that say how a run executes, not what it computes: a run resumed with ``--resume`` may
# change them (a longer client timeout, fewer clients a round needs, other workers or GPUs).
RESUMABLE_KEYS = frozenset(
    {
        "run_root",
        "backbone.device",
        "phase1.client_timeout_s",
        "phase1.min_clients",
        "phase2.cohort_size",
        "phase2.personas_per_message",
        "eval.nli_device",
        "eval.nli_batch_size",
        "privacy.record_payloads",
        "simulation.clients_per_node",
        "simulation.workers",
        "simulation.gpus_per_client",
        "simulation.ray_address",
    }
)
# Keys that shape the client partitions a run prepares into its own data/.
_DATA_KEYS = ("seed", "data.source", "data.scale", "data.path", "data.few_shot_threshold")
_DATA_KEYS += ("data.part_b_fraction", "data.canaries", "data.personachat_variant")
_DATA_KEYS += ("data.revision", "data.data_dir")
WORK_EVENTS = frozenset({"round", "client", "phase1_skipped", "setting_done"})


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_changes(old_text: str, new_text: str) -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose value differs between two config.toml texts: key -> (old, new)."""
    try:
        old = _flat(tomllib.loads(old_text))
    except tomllib.TOMLDecodeError:
        old = {}
    new = _flat(tomllib.loads(new_text))
    keys = sorted(set(old) | set(new))
    return {k: (old.get(k), new.get(k)) for k in keys if old.get(k) != new.get(k)}


def has_finished_work(run: RunDir) -> bool:
    """Whether the run holds results a config change could contradict (rounds, personas...)."""
    if run.source_prefix.is_file() or any(run.checkpoints.glob("round-*.json")):
        return True
    if not run.metrics_path.is_file():
        return False
    text = run.metrics_path.read_text(encoding="utf-8", errors="replace")
    return any(f'"event": "{kind}"' in text for kind in WORK_EVENTS)


def _describe(changes: dict[str, tuple[Any, Any]], limit: int = 4) -> str:
    shown = [f"{k}: {old!r} -> {new!r}" for k, (old, new) in list(changes.items())[:limit]]
    more = len(changes) - limit
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def _check_change(run: RunDir, changes: dict[str, tuple[Any, Any]], resume: bool) -> None:
    """Refuse a config change that would mix two experiments in one run directory."""
    where = f"run directory '{run.root}' was started with another config ({_describe(changes)})"
    if not has_finished_work(run):
        shaped = [k for k in changes if k in _DATA_KEYS]
        if shaped and (run.data / "manifest.json").is_file():
            raise FedpktError(
                f"{where}; its data/ was prepared with the old {', '.join(shaped)}: "
                "use a new --run-dir"
            )
        return  # nothing finished yet: the corrected config simply replaces the old one
    fixed = [k for k in changes if k not in RESUMABLE_KEYS]
    if fixed:
        raise FedpktError(
            f"{where}; {', '.join(fixed)} shaped the work it has done: use a new --run-dir "
            "(a resumed run may change only keys that do not change results, such as "
            "phase1.client_timeout_s, phase1.min_clients, backbone.device and simulation.*)"
        )
    if not resume:
        raise FedpktError(f"{where}; pass --resume to continue it with these settings")


def _regular(path: Path, what: str) -> Path:
    """``path`` if it is a regular file (a FIFO there would block every reader forever)."""
    if not path.is_file():
        raise FedpktError(f"{what} '{path}' is not a regular file")
    return path


def _read_config_text(run: RunDir) -> str | None:
    if not run.config_path.exists():
        return None
    try:
        return _regular(run.config_path, "run config").read_text(encoding="utf-8")
    except OSError as err:
        raise os_error(err, "cannot read the run's config") from None
    except UnicodeDecodeError:
        raise FedpktError(
            f"'{run.config_path}' is not UTF-8 text; expected a TOML config"
        ) from None


# A run needs at least this much free space where its run directory goes (its data, logs,
# checkpoints and results take more; this refuses only a disk that is already full).
MIN_FREE_BYTES = 16 * 2**20
FULL_BYTES = 2**20  # under this, a failed run is reported as a full disk


def _free_bytes(root: Path) -> tuple[Path, int]:
    """(the nearest existing folder of ``root``, the bytes free on its filesystem)."""
    existing = root.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        return existing, shutil.disk_usage(existing).free
    except OSError as err:
        raise os_error(err, "cannot read the free space of the run directory") from None


def check_free_space(root: Path) -> None:
    """Refuse a run directory whose filesystem is already (nearly) full."""
    where, free = _free_bytes(root)
    if free < MIN_FREE_BYTES:
        raise FedpktError(
            f"'{where}' has {free / 2**20:.1f} MiB free; a run directory needs at least "
            f"{MIN_FREE_BYTES // 2**20} MiB: free some space, or use another --run-dir"
        )


def disk_full(root: Path) -> str | None:
    """'no space left ...' when the filesystem of ``root`` is full (how to report a run that
    failed of it, whichever process hit the error first), else None."""
    where, free = _free_bytes(root)
    if free >= FULL_BYTES:
        return None
    return f"no space left on the device of '{where}' ({free // 1024} KiB free)"


def phase1_runs(cfg: FedpktConfig, phases: str) -> bool:
    """Whether a run of ``phases`` trains the source prefix (random init skips phase 1)."""
    return phases == "source" or (phases == "all" and cfg.phase2.init == "source")


def check_run_dir(
    cfg: FedpktConfig, root: str | Path, *, resume: bool = False, phases: str | None = None
) -> None:
    """Everything a run would refuse about an existing run directory, checked before anything
    is written: not a directory, a config that would mix two experiments, and (for a federated
    run of ``phases``) finished work that only ``--resume`` may continue."""
    run = RunDir(Path(root))
    check_free_space(run.root)
    if not run.root.exists():
        return
    if not run.root.is_dir():
        raise FedpktError(f"run directory '{run.root}' exists and is not a directory")
    old, text = _read_config_text(run), config_to_toml(cfg)
    if old is not None and old != text:
        _check_change(run, config_changes(old, text), resume)
    if resume:
        check_resumable(run)
    if phases is None or resume:
        return
    rounds = any(run.checkpoints.glob("round-*.json")) or run.events("round")
    if phase1_runs(cfg, phases) and rounds:
        raise FedpktError(
            f"'{run.root}' already has phase-1 rounds; pass --resume to continue it, or "
            "use a new --run-dir"
        )
    done = {e.get("client_id") for e in run.events("client")}
    if phases in ("all", "personalize") and done:
        raise FedpktError(
            f"'{run.root}' already has phase-2 results for {len(done)} personas; pass --resume "
            "to personalize only the others, or use a new --run-dir"
        )


def check_resumable(run: RunDir) -> None:
    """Read and check everything a resume builds on, before it does any work, naming the bad
    line of the bad file: every event of ``metrics.jsonl`` (a torn last line is dropped: the
    work it logged is redone), the newest phase-1 checkpoint and the source prefix."""
    from fedpkt.report import ClientRecord, RoundRecord

    parsers = {"round": RoundRecord.from_event, "client": ClientRecord.from_event}
    lines = read_lines(run.metrics_path, "metrics file")
    for number, event in lines.rows:
        parse = parsers.get(str(event.get("event")))
        if parse is None:
            continue
        try:
            parse(event)
        except FedpktError as err:
            raise FedpktError(
                f"metrics file '{run.metrics_path}' line {number}: {err}; the file is damaged: "
                "restore it, or start again in a new run directory"
            ) from None
    states = sorted(run.checkpoints.glob("round-*.json")) if run.checkpoints.is_dir() else []
    for state in states[-1:]:
        _check_json(state, "phase-1 checkpoint")
        if state.with_suffix(".safetensors").is_file():
            _check_safetensors(state.with_suffix(".safetensors"), "phase-1 checkpoint")
    if run.source_prefix.is_file():
        _check_safetensors(run.source_prefix, "source prefix")


def _check_json(path: Path, what: str) -> None:
    try:
        json.loads(_regular(path, what).read_text(encoding="utf-8"))
    except OSError as err:
        raise os_error(err, f"cannot read the {what}") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise FedpktError(
            f"{what} '{path}' is not valid JSON; delete it (and its .safetensors) to resume "
            "from the round before, or use a new run directory"
        ) from None


def _check_safetensors(path: Path, what: str) -> None:
    from safetensors.numpy import load

    try:
        load(_regular(path, what).read_bytes())
    except OSError as err:
        raise os_error(err, f"cannot read the {what}") from None
    except Exception as err:  # safetensors raises its own error types for a damaged file
        raise FedpktError(
            f"{what} '{path}' is damaged ({type(err).__name__}); delete it to redo that step, "
            "or use a new run directory"
        ) from None


def create_run_dir(
    cfg: FedpktConfig,
    run_dir: str | Path | None = None,
    prefix: str = "run",
    *,
    resume: bool = False,
) -> RunDir:
    """Make (or reuse) a run directory and write the resolved config into it.

    A reused directory with finished work must hold the same resolved config, except for
    ``RESUMABLE_KEYS`` under ``resume``: resuming under settings that shaped the finished work
    would silently mix two experiments. A directory with nothing finished yet (a run that
    failed before its first round) takes the corrected config. A change is logged as a
    ``config_changed`` event. Settings the backbone cannot take (lengths beyond its position
    table: ``check_backbone_fits``) are refused first, before anything is written.
    """
    from fedpkt.model.positions import check_backbone_fits  # torch/transformers: only here

    check_backbone_fits(cfg)
    run = RunDir(run_path(cfg, run_dir, prefix))
    check_run_dir(cfg, run.root, resume=resume)
    text = config_to_toml(cfg)
    old = _read_config_text(run)
    if old == text:
        return run
    if old is not None:
        changes = {k: list(v) for k, v in config_changes(old, text).items()}
        run.log_event({"event": "config_changed", "changes": changes})
    try:
        atomic_write_text(run.config_path, text)
    except OSError as err:
        raise os_error(err, "cannot write the run's config") from None
    return run


FINISHED = "a finished run"


def kept_summary(root: str | Path) -> str | None:
    """What a stopped run's directory holds, in words; None when it holds nothing of a run.

    >>> kept_summary("/nonexistent") is None
    True
    """
    run = RunDir(Path(root))
    if not run.config_path.is_file():
        return None
    events = run.events(tolerant=True)
    if any(e.get("event") == "done" for e in events):
        return FINISHED
    parts = []
    if any("setting" in e for e in events):  # fedpkt baselines: only whole settings count
        events = [e for e in events if e.get("event") == "setting_done"]
    rounds = {e.get("round") for e in events if e.get("event") == "round"}
    if rounds:
        planned = _config_value(run, "phase1", "rounds")
        parts.append(f"{len(rounds)}" + (f" of {planned}" if planned else "") + " phase-1 rounds")
    if run.source_prefix.is_file():
        parts.append("the source prefix")
    starts = [e for e in events if e.get("event") == "phase2_start"]
    done = {e.get("client_id") for e in events if e.get("event") == "client"}
    if starts or done:
        total = starts[-1].get("personas") if starts else None
        parts.append(f"{len(done)}" + (f" of {total}" if total else "") + " phase-2 results")
    settings = {e.get("setting") for e in events if e.get("event") == "setting_done"}
    if settings:
        parts.append(f"{len(settings)} finished settings ({', '.join(sorted(map(str, settings)))})")
    if not parts:
        has_data = (run.data / "manifest.json").is_file()
        parts.append("its config" + (" and prepared client data" if has_data else ""))
    return ", ".join(parts)


def _config_value(run: RunDir, section: str, key: str) -> Any:
    try:
        return tomllib.loads(run.config_path.read_text(encoding="utf-8"))[section][key]
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, KeyError, TypeError):
        return None
