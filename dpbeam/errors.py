"""Errors dpbeam raises before any privacy budget is spent.

Every error names the field or column at fault and says what to change. They are raised while the job is
being planned (spec parsing, schema checks, output checks) or in the first pass over the data, so a failing job writes
nothing and spends nothing. A message never carries a value, a row number, a count or a size taken from the data:
errors are printed and logged outside the DP release (see CONTRIBUTING.md).
"""

from __future__ import annotations

import re


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


_ERRORS = {c.__name__: c for c in (DPBeamError, SpecError, SourceError, OutputExistsError, BudgetError)}
_WORKER_ERROR = re.compile(r"dpbeam\.errors\.(" + "|".join(_ERRORS) + r"): ([^\r\n]+)")


def worker_error(err: BaseException) -> DPBeamError | None:
    """The dpbeam error that an engine's worker raised, when ``err`` is the engine's wrapper of it (Spark's
    PythonException or Py4JJavaError, the RuntimeError of a multi-process Beam runner), rebuilt from the worker's
    traceback text in the wrapper: the last dpbeam error named there, whose message is dpbeam's own one line. None
    when ``err`` is a dpbeam error already, or wraps none. Only dpbeam's message is taken from the text; the rest of
    it (Arrow's messages, for one) may quote data."""
    if isinstance(err, DPBeamError):
        return None
    found = _WORKER_ERROR.findall(str(err))
    if not found:
        return None
    name, message = found[-1]
    return _ERRORS[name](message.strip())


def reraise_worker_error(err: BaseException) -> None:
    """Raise the dpbeam error a worker raised (see :func:`worker_error`) from ``err``; return if there is none."""
    found = worker_error(err)
    if found is not None:
        raise found from err
