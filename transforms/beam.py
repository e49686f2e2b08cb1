"""The Beam engine: dpbeam's kernels in batched DoFns, one shuffle by privacy unit, partials merged by a CombineFn.

Where things run. The driver (the process that calls :func:`run_aggregation`) only lists the source files, builds the
pipeline and reads back one summary; workers do all the row work, on Arrow record batches (no per-row Python):

1. read the source: Parquet with Beam's ``ReadAllFromParquetBatched`` (files split by row group), CSV one file per
   call with the local engine's reader (:meth:`dpbeam.source.Source.batches`), so both engines see the same values;
2. ``prepare_with_units`` per batch (encode; two unit-hash columns for unit-level jobs);
3. unit-level jobs: each prepared batch is split by ``partition_of`` into sub-batches keyed by partition id, one
   ``GroupByKey`` (the only shuffle) brings every row of a unit to one partition, whose batches are concatenated and
   bounded by ``bound_prepared`` (whole units, so the same rows as every other engine);
4. ``aggregation.partial`` per batch, merged by :class:`SummaryCombineFn` (``aggregation.merge``), so only one summary
   reaches the driver and driver memory does not grow with rows.

Progress is counted in files of the source listing (a Beam counter of files handed to the readers), never in rows:
the engines' counters are printed and kept by the runner, outside the DP release.

The summary holds exact counts: it is trusted-side data. :func:`run_aggregation` moves it to the driver through one
pickled file under ``temp_location`` (deleted after reading); noise is added by the driver, never here.
"""

from __future__ import annotations

import functools
import pickle
import posixpath
import shutil
import tempfile
import uuid
from typing import Any, Iterable, Iterator, Sequence, TypeVar

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.parquetio import ReadAllFromParquetBatched
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineRunner, PipelineState

from dpbeam import lake
from dpbeam.aggregate import (
    Aggregation,
    MarginalCounts,
    NullUnits,
    bound_prepared,
    one_batch,
    partition_of,
    prepare_with_units,
)
from dpbeam.bounding import BoundingKey
from dpbeam.domain import TableDomain
from dpbeam.errors import reraise_worker_error
from dpbeam.marginals import Clique
from dpbeam.progress import Advance
from dpbeam.source import Source

S = TypeVar("S")
METRICS_NAMESPACE = "dpbeam"
FILES_READ = "files_read"
DEFAULT_PARTITIONS = 64


# ----------------------------------------------------------------------------------------------------------------------
# DoFns and the CombineFn (built on the driver, pickled, run on workers)


class _TableToBatches(beam.DoFn):
    """Workers: a pyarrow Table (one Parquet row group) -> its non-empty record batches."""

    def process(self, table: pa.Table) -> Iterator[pa.RecordBatch]:
        for batch in table.to_batches():
            if batch.num_rows:
                yield batch


class _CountFile(beam.DoFn):
    """Workers: a file path passes through; the files counter (public: the listing) counts it."""

    def process(self, path: str) -> Iterator[str]:
        Metrics.counter(METRICS_NAMESPACE, FILES_READ).inc()
        yield path


class _ReadFile(beam.DoFn):
    """Workers: one file of the source -> its record batches, read by the local engine's reader."""

    def __init__(self, source: Source, columns: Sequence[str]):
        self.source = source
        self.columns = list(columns)

    def process(self, path: str) -> Iterator[pa.RecordBatch]:
        yield from self.source.split_batches((path, None), self.columns)


class _Prepare(beam.DoFn):
    """Workers: a source batch (or Table) -> prepared batches (codes, + unit hashes for unit-level jobs)."""

    def __init__(self, aggregation: Aggregation, unit_column: str | None, key: BoundingKey,
                 null_units: NullUnits = "drop"):
        self.aggregation, self.unit_column, self.key, self.null_units = aggregation, unit_column, key, null_units

    def process(self, batch: pa.RecordBatch | pa.Table) -> Iterator[pa.RecordBatch]:
        batches = batch.to_batches() if isinstance(batch, pa.Table) else [batch]
        for b in batches:
            if b.num_rows:
                yield prepare_with_units(self.aggregation, b, self.unit_column, self.key, self.null_units)


class _SplitByPartition(beam.DoFn):
    """Workers: a prepared unit-level batch -> (partition id, sub-batch) for each partition it has rows of."""

    def __init__(self, partitions: int):
        self.partitions = partitions

    def process(self, prepared: pa.RecordBatch) -> Iterator[tuple[int, pa.RecordBatch]]:
        part = partition_of(prepared, self.partitions)
        order = np.argsort(part, kind="stable")
        ids, starts = np.unique(part[order], return_index=True)
        ends = np.append(starts[1:], len(order))
        for pid, start, end in zip(ids.tolist(), starts, ends):
            yield pid, prepared.take(pa.array(order[start:end]))


class _BoundPartition(beam.DoFn):
    """Workers: all prepared batches of one partition (whole units) -> one batch of the kept rows, <= k per unit.
    Holds the partition's prepared rows in memory: raise ``partitions`` if one is too large for a worker."""

    def __init__(self, aggregation: Aggregation, k: int, key: BoundingKey):
        self.aggregation, self.k, self.key = aggregation, k, key

    def process(self, element: tuple[int, Iterable[pa.RecordBatch]]) -> Iterator[pa.RecordBatch]:
        _, batches = element
        whole = one_batch(list(batches))
        yield bound_prepared(self.aggregation, whole, self.k, self.key)


class SummaryCombineFn(beam.CombineFn):
    """Bounded prepared batches -> the aggregation's merged summary. Workers compute partials and merge them;
    accumulators are summaries, so a shuffle or the driver only ever sees summaries, never rows."""

    def __init__(self, aggregation: Aggregation):
        self.aggregation = aggregation

    def create_accumulator(self) -> Any:
        return self.aggregation.zero()

    def add_input(self, accumulator: Any, batch: pa.RecordBatch) -> Any:
        return self.aggregation.merge(accumulator, self.aggregation.partial(batch))

    def merge_accumulators(self, accumulators: Iterable[Any]) -> Any:
        return functools.reduce(self.aggregation.merge, accumulators, self.aggregation.zero())

    def extract_output(self, accumulator: Any) -> Any:
        return accumulator

    def get_accumulator_coder(self) -> beam.coders.Coder:
        return beam.coders.PickleCoder()


class _WriteSummary(beam.DoFn):
    """The one worker holding the combined summary: pickle it to ``uri`` for the driver to read."""

    def __init__(self, uri: str):
        self.uri = uri

    def process(self, summary: Any) -> None:
        fs, path = lake.filesystem(self.uri)
        with fs.open(path, "wb") as f:
            pickle.dump(summary, f, protocol=pickle.HIGHEST_PROTOCOL)


# ----------------------------------------------------------------------------------------------------------------------
# Composable transforms (applied on the driver, run on workers)


def beam_path(source: Source, path: str) -> str:
    """A source file path as Beam's filesystems name it (local paths bare, others with their scheme)."""
    protocol = source.fs.protocol
    local = protocol in ("file", "local") or (isinstance(protocol, tuple) and "file" in protocol)
    return path if local else source.fs.unstrip_protocol(path)


class ReadSource(beam.PTransform):
    """PBegin -> RecordBatch of ``columns`` of the source's rows. Workers read; the driver only lists files."""

    def __init__(self, source: Source, columns: Sequence[str]):
        super().__init__()
        self.source, self.columns = source, list(columns)

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        if self.source.format == "parquet":
            files = pbegin | "Files" >> beam.Create([beam_path(self.source, f) for f in self.source.files])
            files = files | "CountFiles" >> beam.ParDo(_CountFile())
            # file path (str)
            tables = files | "ReadParquet" >> ReadAllFromParquetBatched(columns=self.columns)
            # pyarrow.Table: one row group of one file, the job's columns
            batches = tables | "ToBatches" >> beam.ParDo(_TableToBatches())
        else:
            files = pbegin | "Files" >> beam.Create(list(self.source.files))
            files = files | "CountFiles" >> beam.ParDo(_CountFile())
            # file path (str)
            batches = files | "ReadCsv" >> beam.ParDo(_ReadFile(self.source, self.columns))
        # RecordBatch of source rows: the job's columns (+ the unit column)
        return batches


class PrepareBatches(beam.PTransform):
    """RecordBatch (or pyarrow Table) of source rows -> RecordBatch of prepared rows: the aggregation's encoded
    columns, plus ``__unit_h1``/``__unit_h2`` (keyed unit hashes) when ``unit_column`` is given; rows with a null
    unit are dropped or refused by ``null_units`` (:func:`dpbeam.aggregate.drop_null_units`). Workers."""

    def __init__(self, aggregation: Aggregation, unit_column: str | None, key: BoundingKey,
                 null_units: NullUnits = "drop"):
        super().__init__()
        self.aggregation, self.unit_column, self.key, self.null_units = aggregation, unit_column, key, null_units

    def expand(self, batches: beam.PCollection) -> beam.PCollection:
        prepare = _Prepare(self.aggregation, self.unit_column, self.key, self.null_units)
        prepared = batches | "Prepare" >> beam.ParDo(prepare)
        # RecordBatch of prepared rows: code columns (+ __unit_h1, __unit_h2), one row per source row with a unit
        return prepared


class BoundContributions(beam.PTransform):
    """RecordBatch of prepared unit-level rows -> RecordBatch of the kept rows, at most k per privacy unit, the same
    rows as every other engine. One shuffle (GroupByKey on ``partitions`` partition ids), batch-wise. Workers."""

    def __init__(self, aggregation: Aggregation, k: int, key: BoundingKey, partitions: int = DEFAULT_PARTITIONS):
        super().__init__()
        if partitions < 1:
            raise ValueError(f"partitions must be at least 1, got {partitions}")
        self.aggregation, self.k, self.key, self.partitions = aggregation, k, key, partitions

    def expand(self, prepared: beam.PCollection) -> beam.PCollection:
        keyed = prepared | "SplitByPartition" >> beam.ParDo(_SplitByPartition(self.partitions))
        # (partition_id, RecordBatch of prepared rows of the units hashed to partition_id)
        grouped = keyed | "GroupByPartition" >> beam.GroupByKey()
        # (partition_id, iterable of RecordBatch): every prepared row of every unit of the partition
        bounded = grouped | "Bound" >> beam.ParDo(_BoundPartition(self.aggregation, self.k, self.key))
        # RecordBatch of kept prepared rows (<= k per unit), one per non-empty partition
        return bounded


class Summarize(beam.PTransform):
    """RecordBatch of bounded prepared rows -> a PCollection of one element, the merged exact summary (the
    aggregation's ``zero()`` on empty input). Partials and merges run on workers."""

    def __init__(self, aggregation: Aggregation):
        super().__init__()
        self.aggregation = aggregation

    def expand(self, bounded: beam.PCollection) -> beam.PCollection:
        summary = bounded | "Combine" >> beam.CombineGlobally(SummaryCombineFn(self.aggregation))
        # one summary (e.g. {clique: exact count cube})
        return summary


class Aggregate(beam.PTransform):
    """RecordBatch of source rows (the aggregation's columns, + ``unit_column``) -> one exact summary over the
    bounded table: PrepareBatches, then BoundContributions for unit-level jobs, then Summarize."""

    def __init__(
        self,
        aggregation: Aggregation,
        unit_column: str | None,
        k: int,
        key: BoundingKey,
        partitions: int = DEFAULT_PARTITIONS,
        null_units: NullUnits = "drop",
    ):
        super().__init__()
        self.aggregation, self.unit_column, self.k, self.key, self.partitions = (
            aggregation, unit_column, k, key, partitions,
        )
        self.null_units = null_units

    def expand(self, batches: beam.PCollection) -> beam.PCollection:
        agg = self.aggregation
        rows = batches | "PrepareBatches" >> PrepareBatches(agg, self.unit_column, self.key, self.null_units)
        # RecordBatch of prepared rows
        if self.unit_column is not None:
            rows = rows | "BoundContributions" >> BoundContributions(agg, self.k, self.key, self.partitions)
            # RecordBatch of kept prepared rows, <= k per unit
        summary = rows | "Summarize" >> Summarize(agg)
        # one summary
        return summary


class MeasureMarginals(Aggregate):
    """RecordBatch of source rows -> one ``{clique: exact count cube}`` over the bounded table (``MarginalCounts``).
    Exact counts: keep them on the trusted side; the driver adds noise (:mod:`dpbeam.privacy`), not this transform."""

    def __init__(
        self,
        domain: TableDomain,
        cliques: Sequence[Clique],
        unit_column: str | None,
        k: int,
        key: BoundingKey,
        partitions: int = DEFAULT_PARTITIONS,
        null_units: NullUnits = "drop",
    ):
        super().__init__(MarginalCounts(domain, cliques), unit_column, k, key, partitions, null_units)


# ----------------------------------------------------------------------------------------------------------------------
# The engine entry point (driver)


def pipeline_runner(runner: str | PipelineRunner) -> str | PipelineRunner:
    """A runner for ``beam.Pipeline``. "FnApiRunner" and "DirectRunner" give the FnApiRunner (what Beam's
    DirectRunner runs batch pipelines on, minus its attempt to fetch the Prism binary); "BundleBasedDirectRunner"
    the bundle-based direct runner; any other name (e.g. "DataflowRunner") or runner object passes through."""
    if not isinstance(runner, str):
        return runner
    if runner in ("FnApiRunner", "DirectRunner"):
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return FnApiRunner()
    if runner == "BundleBasedDirectRunner":
        from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner

        return BundleBasedDirectRunner()
    return runner


def _files_read(result: beam.runners.runner.PipelineResult) -> int | None:
    """Source files handed to the readers, from the pipeline's counter (None where the runner reports no metrics)."""
    try:
        found = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE).with_name(FILES_READ))
    except NotImplementedError:
        return None
    values = [c.committed if c.committed is not None else c.attempted for c in found["counters"]]
    return int(sum(v for v in values if v is not None))


def run_aggregation(
    source: Source,
    aggregation: Aggregation[S],
    unit_column: str | None,
    k: int,
    key: BoundingKey,
    advance: Advance | None = None,
    null_units: NullUnits = "drop",
    runner: str | PipelineRunner = "FnApiRunner",
    partitions: int = DEFAULT_PARTITIONS,
    temp_location: str | None = None,
    **pipeline_options: Any,
) -> S:
    """The merged summary of ``aggregation`` over the bounded source table, computed by one Beam pipeline.

    ``runner``: see :func:`pipeline_runner`. ``partitions``: shuffle partitions of unit-level jobs. ``temp_location``:
    an fsspec URI (a trusted-side bucket on a cluster; it is also passed to Beam as its ``temp_location``) where one
    worker writes the pickled summary for the driver to read and delete; default a fresh local temporary directory,
    removed afterwards. Other keyword arguments are Beam ``PipelineOptions`` (``direct_num_workers=2``,
    ``direct_running_mode="multi_processing"``, ``project=...``). ``advance`` ticks the files read once the pipeline is done (out of the listing's files).
    ``null_units``: rows whose unit is null (see :func:`dpbeam.aggregate.drop_null_units`).
    Driver: builds the pipeline, waits for it, reads the one summary."""
    columns = aggregation.columns + ([unit_column] if unit_column else [])
    own_dir = None
    if temp_location is None:
        own_dir = temp_location = tempfile.mkdtemp(prefix="dpbeam-beam-")
    else:
        pipeline_options["temp_location"] = temp_location
    uri = f"{temp_location.rstrip('/')}/dpbeam-summary-{uuid.uuid4().hex}.pkl"
    fs, path = lake.filesystem(uri)
    try:
        pipeline = beam.Pipeline(runner=pipeline_runner(runner), options=PipelineOptions(flags=[], **pipeline_options))
        read = pipeline | "ReadSource" >> ReadSource(source, columns)
        # RecordBatch of source rows: the job's columns (+ the unit column)
        summary = read | "Aggregate" >> Aggregate(aggregation, unit_column, k, key, partitions, null_units)
        # one summary
        _ = summary | "WriteSummary" >> beam.ParDo(_WriteSummary(uri))
        # nothing: the summary is in one file under temp_location
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
        if advance is not None:
            advance.set_total(len(source.files), "files")
        try:
            result = pipeline.run()
            state = result.wait_until_finish()
        except Exception as err:
            reraise_worker_error(err)
            raise
        if state is not None and state != PipelineState.DONE:
            raise RuntimeError(f"the Beam pipeline ended in state {state}")
        if not fs.exists(path):
            raise RuntimeError(
                f"the Beam pipeline finished but its summary is not at {uri}; with a remote runner, pass "
                "temp_location= a location its workers and this driver share (e.g. gs://trusted-bucket/tmp)"
            )
        with fs.open(path, "rb") as f:
            out = pickle.load(f)
    finally:
        if fs.exists(path):
            fs.rm(path)
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)
    files = _files_read(result)
    if advance is not None and files is not None:
        advance(min(files, len(source.files)))  # a retried bundle may count twice
    return out


__all__ = [
    "Aggregate",
    "BoundContributions",
    "MeasureMarginals",
    "PrepareBatches",
    "ReadSource",
    "Summarize",
    "SummaryCombineFn",
    "beam_path",
    "pipeline_runner",
    "run_aggregation",
]
