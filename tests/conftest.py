"""Shared fixtures: the reduced configuration every end-to-end test runs on."""

from __future__ import annotations

from typing import Any

import pytest

from fedpkt.config import FedpktConfig, load_config

# The reduced run: tiny embedded backbone, tiny synthetic corpus, a few rounds. Small enough
# for CI on 2 cores, large enough for the learning effects the tests assert.
TINY: dict[str, Any] = {
    "backbone.embedded_size": "tiny",
    "data.scale": "tiny",
    "prefix.num_virtual_tokens": 4,
    "prefix.projection_hidden": 32,
    "phase1.rounds": 3,
    "phase1.clients_per_round": 3,
    "phase1.min_clients": 1,
    "phase1.eval_clients": 3,
    "phase1.client_timeout_s": 300.0,
    "phase2.max_epochs": 3,
    "generation.num_beams": 2,
    "generation.max_new_tokens": 8,
}


def tiny_config(**values: Any) -> FedpktConfig:
    """The embedded preset reduced for tests; keyword args are dotted keys with '__' for '.'."""
    merged = {**TINY, **{key.replace("__", "."): value for key, value in values.items()}}
    return load_config("embedded", values=merged)


def cli_sets(values: dict[str, Any]) -> list[str]:
    """The same values as repeated ``--set key=value`` CLI arguments (TOML literals)."""
    args: list[str] = []
    for key, value in values.items():
        literal = f"'{value}'" if isinstance(value, str) else str(value).lower()
        args += ["--set", f"{key}={literal}"]
    return args


@pytest.fixture
def tiny_cfg() -> FedpktConfig:
    return tiny_config()
