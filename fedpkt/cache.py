"""The user's cache directory, and building a cached directory exactly once.

Things fedpkt derives deterministically (the embedded backbone, prepared corpora) are built on
first use and kept under ``$FEDPKT_CACHE`` (default ``~/.cache/fedpkt``), one folder per
fingerprint of their recipe. Several processes may ask for the same folder at once (pytest
workers, Ray actors, a CLI in another terminal), so :func:`materialize` builds under a file lock
into a temporary folder and renames it into place: a reader sees either no folder or a complete
one, and only one process does the work.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

from fedpkt.errors import FedpktError

CACHE_ENV = "FEDPKT_CACHE"
_TMP_MARK = ".tmp-"


def cache_dir() -> Path:
    """The root cache folder: ``$FEDPKT_CACHE`` if set, else ``~/.cache/fedpkt`` (created).

    Read from the environment on every call (not at import) so that a test or a launcher can
    point a process at another cache by setting the variable.
    """
    raw = os.environ.get(CACHE_ENV, "").strip()
    root = Path(raw).expanduser() if raw else Path.home() / ".cache" / "fedpkt"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FedpktError(
            f"cache directory '{root}' cannot be created ({err.strerror}); "
            f"set {CACHE_ENV} to a writable folder"
        ) from None
    return root


def cache_path(*parts: str) -> Path:
    """A path inside the cache root (not created); e.g. ``cache_path("backbones", "x")``."""
    return cache_dir().joinpath(*parts)


def materialize(target: Path, build: Callable[[Path], None], *, force: bool = False) -> bool:
    """Make ``target`` exist as a complete folder, calling ``build(tmp_dir)`` at most once.

    ``build`` fills an empty temporary folder beside ``target``; the folder is then renamed to
    ``target`` (atomic on one filesystem), so ``target`` existing means it is complete. The
    build runs under ``<target>.lock``; a process that waited for the lock finds the folder
    built and returns without building. ``force`` rebuilds even if ``target`` exists (the old
    folder is swapped out after the new one is complete). Leftover temporary folders from a
    killed build are removed. Returns True if this call built the folder.
    """
    target = Path(target)
    if target.is_dir() and not force:
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if target.is_dir() and not force:
            return False
        _remove_stale_temporaries(target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}{_TMP_MARK}", dir=target.parent))
        try:
            build(tmp)
            if target.is_dir():
                old = target.with_name(f".{target.name}{_TMP_MARK}old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(target, old)
                os.replace(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return True


def _remove_stale_temporaries(target: Path) -> None:
    """Delete half-built folders a killed build left; only called while holding the lock."""
    for stale in target.parent.glob(f".{target.name}{_TMP_MARK}*"):
        shutil.rmtree(stale, ignore_errors=True)
