"""The base of every config section: strict types, unknown keys refused, assignments validated.

Apart from ``fedpkt.config`` so that a strategy plug-in (``fedpkt.strategies``) can declare its
own parameter section without importing the config that collects the plug-ins.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Base for every section: unknown keys are errors, assignments are validated.

    Strict types: an integer field takes an integer only (not ``true``, not ``1e3``, not
    ``"3"``), a number field a finite number (``inf`` and ``nan`` are refused), a switch
    ``true`` or ``false``. Every numeric field has a documented range (``ge``/``le``).
    """

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, frozen=False, strict=True, allow_inf_nan=False
    )
