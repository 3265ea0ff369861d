"""Which persona each part of a phase-2 *cohort* reply belongs to.

A phase-2 request names a cohort of personas (``client-ids``); its reply holds one MetricRecord
per persona, named ``metrics/<client id>`` (:func:`persona_metrics_record`), and, when some
personas failed, one ConfigRecord ``failed`` mapping each failed persona's id to a one-line
reason. This module is the one place that naming convention is written down: ``wire``
re-exports it for the server and clients, the egress mod uses :func:`owner_of` to give every
logged record its persona, and ``fedpkt audit`` checks each persona's part against the contract.

A record that no persona of the request owns (another name, an id outside the cohort, a
``failed`` key for an unknown id) belongs to nobody: it is logged, and it breaks the contract.
"""

from __future__ import annotations

from collections.abc import Collection

PERSONA_METRICS_PREFIX = "metrics/"
"""Record-name prefix of one persona's metrics in a phase-2 reply."""
FAILED = "failed"
"""Record name of the phase-2 ConfigRecord {client id: one-line reason} of failed personas."""
FAILED_REASON_CHARS = 500
"""The longest ``failed`` reason the contract allows (one line, no newline)."""


def persona_metrics_record(client_id: str) -> str:
    """The record name of one persona's metrics in a phase-2 reply: ``metrics/<client id>``."""
    return f"{PERSONA_METRICS_PREFIX}{client_id}"


def persona_of_record(name: str) -> str | None:
    """The client id a phase-2 record name belongs to, or None for any other record."""
    if name.startswith(PERSONA_METRICS_PREFIX) and len(name) > len(PERSONA_METRICS_PREFIX):
        return name[len(PERSONA_METRICS_PREFIX) :]
    return None


def owner_of(record: str, key: str, cohort: Collection[str]) -> str | None:
    """The persona of ``cohort`` that owns one (record, key) of a reply, or None (nobody).

    ``metrics/<id>`` belongs to ``id`` whatever it holds (the contract then checks what it
    holds); a key of ``failed`` belongs to the persona it names. E.g. with cohort {B-0, B-1}:
    (metrics/B-1, f1) -> B-1; (failed, B-0) -> B-0; (metrics/C-9, f1), (failed, C-9) and
    (metrics, f1) -> None.
    """
    owner = key if record == FAILED else persona_of_record(record)
    return owner if owner is not None and owner in cohort else None
