"""Errors dpbeam raises before any privacy budget is spent.

Every error names the field or column at fault and says what to change. They are raised while the job is
being planned (spec parsing, schema checks, output checks), so a failing job writes nothing and spends nothing.
"""

from __future__ import annotations


class DPBeamError(Exception):
    """Base class of dpbeam's own errors."""


class SpecError(DPBeamError, ValueError):
    """The job spec is invalid: a field is missing, out of range, or contradicts the source."""


class SourceError(DPBeamError, ValueError):
    """The source cannot be read as the spec describes it (missing, empty, wrong schema)."""


class OutputExistsError(DPBeamError, FileExistsError):
    """The output location already holds a table and overwrite was not asked for."""


class BudgetError(DPBeamError, ValueError):
    """A mechanism asked for more privacy budget than the plan has left."""
