"""Data checks that can fail, all run in the job's first pass over the data, before any noise is drawn.

A run never aborts on data after its first noise draw: an abort then would be a data-dependent signal outside the
DP release. So every data condition that stops a job is checked in whichever pass reads the data first, and every
other data condition is handled deterministically (clamping, null codes, "other" codes, dropped null units). What is
checked here: each column the job reads parses as its declared type (CSV sources; reading the column is the check),
and columns the spec declares ``nullable: false`` hold no nulls. Errors name the column, never a value or a count.
"""

from __future__ import annotations

from typing import Generic, Sequence, TypeVar

import numpy as np
import pyarrow as pa

from dpbeam.aggregate import Aggregation
from dpbeam.errors import SourceError

S = TypeVar("S")


def null_in_non_nullable(column: str) -> SourceError:
    return SourceError(
        f"column '{column}' holds nulls but the spec says nullable: false; set columns.{column}.nullable: true "
        "(or leave nullable out to follow the source schema)"
    )


class FirstPassChecks(Generic[S]):
    """``aggregation``, reading also ``columns`` (so that each parses) and refusing nulls in ``non_nullable``.

    The summary is the wrapped aggregation's, unchanged: the extra columns are read and checked, then dropped."""

    def __init__(self, aggregation: Aggregation[S], columns: Sequence[str], non_nullable: Sequence[str]):
        self.aggregation = aggregation
        self.non_nullable = list(non_nullable)
        self.columns = list(dict.fromkeys([*aggregation.columns, *columns]))

    def prepare(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        for c in self.non_nullable:
            if batch.column(c).null_count:
                raise null_in_non_nullable(c)
        return self.aggregation.prepare(batch)

    def row_keys(self, prepared: pa.RecordBatch) -> np.ndarray:
        return self.aggregation.row_keys(prepared)

    def partial(self, prepared: pa.RecordBatch) -> S:
        return self.aggregation.partial(prepared)

    def merge(self, a: S, b: S) -> S:
        return self.aggregation.merge(a, b)

    def zero(self) -> S:
        return self.aggregation.zero()
