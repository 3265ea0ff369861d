"""The Flower minor version ``fedpkt launch`` speaks, and the check that refuses any other.

The launch workers (``sim.worker``) claim and answer ClientApp tasks on a SuperNode's local
Runtime API with Flower's own internal calls (``sim.runtime_tasks``). Those are not a public
API and change between minor releases (1.21 removed the long-running ``flwr-clientapp``, 1.42
moved the Runtime API to HTTP), so ``fedpkt launch`` and each worker check the installed
Flower first and stop with one line when it is not the tested minor version.

This module imports nothing from fedpkt: the worker runs it before it loads the app's own copy
of the fedpkt packages from the FAB.
"""

from __future__ import annotations

from importlib import metadata

FLOWER_MINOR = "1.42"
"""The Flower minor version the worker protocol was written and tested against."""


def installed_flower() -> str:
    """The installed ``flwr`` distribution's version ('' when it is not installed)."""
    try:
        return metadata.version("flwr")
    except metadata.PackageNotFoundError:
        return ""


def flower_version_problem(found: str | None = None) -> str | None:
    """One line saying why the installed Flower cannot be used, or None when it can.

    >>> flower_version_problem("1.42.0") is None
    True
    >>> flower_version_problem("1.43.0")[:40]
    'fedpkt launch needs Flower 1.42.x (its S'
    """
    version = installed_flower() if found is None else found
    if version.split(".")[:2] == FLOWER_MINOR.split("."):
        return None
    return (
        f"fedpkt launch needs Flower {FLOWER_MINOR}.x (its SuperNode Runtime API, which the "
        f"ClientApp workers speak), found {version or 'no flwr'}; "
        f"install 'flwr>={FLOWER_MINOR},<1.{int(FLOWER_MINOR.split('.')[1]) + 1}'"
    )
