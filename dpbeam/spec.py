"""The job spec: YAML in, typed and validated models out.

A spec says where the sensitive table is, who the privacy unit is, how much budget a run may spend, the public
domain of every column, how to synthesize and where to write. Everything checkable without reading data is checked
here; checks against the source's schema live in :mod:`dpbeam.plan`. Both run before any budget is spent.

Example::

    source: {uri: users.parquet}
    privacy: {unit: {column: user_id}, epsilon: 1.0, delta: 1.0e-9, max_rows_per_unit: 10}
    columns:
      country: {kind: categorical, values: [DE, FR, US]}
      age: {kind: integer, bounds: [18, 99], bins: 9}
    output: {uri: gs://lake/synthetic/users}
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dpbeam.errors import SpecError

MAX_DELTA = 1e-3


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Column(_Model):
    """Fields every column kind has.

    ``nullable``: whether nulls get their own code. Default: the source schema's nullability of the field (public
    metadata), so a column the schema allows nulls in never needs a spec change. Set ``false`` on a nullable field
    you know holds no nulls: a null found there then stops the job in its first pass over the data, before any noise
    is drawn. ``arrow_type``: for CSV sources, the Arrow type the column is read as (default from the kind:
    categorical string, integer int64, float float64, datetime timestamp[us], boolean bool). CSV types never come from
    the values. For Parquet and catalog tables the schema is the table's metadata; a given arrow_type must match it.
    """

    nullable: bool | None = None
    arrow_type: str | None = None

    @field_validator("arrow_type")
    @classmethod
    def _parseable(cls, v: str | None) -> str | None:
        if v is not None:
            from dpbeam.domain import arrow_type_from_str

            try:
                arrow_type_from_str(v)
            except (ValueError, KeyError, TypeError):
                raise ValueError(f"arrow_type {v!r} is not an Arrow type name; use e.g. string, int64, float64, "
                                 "date32, timestamp[us], bool") from None
        return v


# ----------------------------------------------------------------------------------------------------------------------
# Columns


class CategoricalColumn(_Column):
    """A column of discrete values. ``values`` is the public domain; values seen in the data but not listed map
    to one "other" code. Without ``values`` the domain must be discovered with DP (needs a discovery budget)."""

    kind: Literal["categorical"]
    values: list[Union[str, int, bool]] | None = None
    other_label: str | None = Field(
        default=None, description="How the 'other' code is written out; null when not set (strings get '__other__')."
    )

    @field_validator("values")
    @classmethod
    def _distinct(cls, v: list | None) -> list | None:
        if v is not None:
            if len(v) == 0:
                raise ValueError("values is empty: list the public values, or leave it out to discover them with DP")
            if len(set(map(repr, v))) != len(v):
                raise ValueError("values has duplicates: list each value once")
        return v


class IntegerColumn(_Column):
    """Integers within public ``bounds`` [lo, hi] (inclusive; values outside are clamped).

    ``bins``: a number of equal-width bins or the list of bin edges (first = lo, last = hi + 1); by default one bin
    per value when the range holds at most 128 values, otherwise 32 equal-width bins."""

    kind: Literal["integer"]
    bounds: tuple[int, int] | None = None
    bins: int | list[int] | None = None

    @model_validator(mode="before")
    @classmethod
    def _edges_are_bounds(cls, data: Any) -> Any:
        return _bounds_from_edges(data, upper_offset=1)

    @model_validator(mode="after")
    def _check(self) -> "IntegerColumn":
        if self.bounds is not None and self.bounds[0] > self.bounds[1]:
            raise ValueError(f"bounds {list(self.bounds)} has lo > hi: write [lo, hi] with lo <= hi")
        _check_bins(self.bins, self.bounds)
        return self


class FloatColumn(_Column):
    """Real numbers within public ``bounds`` [lo, hi] (clamped), in ``bins`` equal-width bins (default 32) or
    between the listed edges (first = lo, last = hi)."""

    kind: Literal["float"]
    bounds: tuple[float, float] | None = None
    bins: int | list[float] | None = None

    @model_validator(mode="before")
    @classmethod
    def _edges_are_bounds(cls, data: Any) -> Any:
        return _bounds_from_edges(data, upper_offset=0)

    @model_validator(mode="after")
    def _check(self) -> "FloatColumn":
        if self.bounds is not None and not self.bounds[0] < self.bounds[1]:
            raise ValueError(f"bounds {list(self.bounds)} must satisfy lo < hi")
        _check_bins(self.bins, self.bounds)
        return self


Granularity = Literal["second", "minute", "hour", "day", "week", "month", "year"]


class DatetimeColumn(_Column):
    """Timestamps or dates within public ``bounds`` [start, end] (clamped), binned by calendar ``granularity`` or
    into ``bins`` equal-width bins. Naive timestamps are read as UTC."""

    kind: Literal["datetime"]
    bounds: tuple[_dt.datetime, _dt.datetime] | None = None
    granularity: Granularity | None = None
    bins: int | None = None

    @field_validator("bounds", mode="before")
    @classmethod
    def _dates(cls, v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [_dt.datetime.combine(x, _dt.time()) if type(x) is _dt.date else x for x in v]
        return v

    @model_validator(mode="after")
    def _check(self) -> "DatetimeColumn":
        if self.bounds is not None and not _utc(self.bounds[0]) < _utc(self.bounds[1]):
            raise ValueError("bounds must satisfy start < end")
        if self.granularity is not None and self.bins is not None:
            raise ValueError("give either granularity or bins, not both")
        if self.bounds is None and self.granularity is not None:
            raise ValueError("bounds left to DP discovery are binned by bins (default 16, at DP quantiles), not "
                             "granularity: remove granularity or give bounds")
        if self.bins is not None and self.bins < 1:
            raise ValueError("bins must be >= 1")
        return self


class BooleanColumn(_Column):
    """True/false."""

    kind: Literal["boolean"]


ColumnSpec = Annotated[
    Union[CategoricalColumn, IntegerColumn, FloatColumn, DatetimeColumn, BooleanColumn], Field(discriminator="kind")
]


def _bounds_from_edges(data: Any, upper_offset: int) -> Any:
    """Listed bin edges fix the bounds (first edge .. last edge - upper_offset): a column with edges is not open."""
    if isinstance(data, dict) and data.get("bounds") is None and isinstance(data.get("bins"), list):
        edges = data["bins"]
        if len(edges) >= 2 and all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in edges):
            return {**data, "bounds": [edges[0], edges[-1] - upper_offset]}
    return data


def _check_bins(bins: int | list | None, bounds: tuple | None) -> None:
    if bins is None:
        return
    if isinstance(bins, int):
        if bins < 1:
            raise ValueError("bins must be >= 1")
        return
    if len(bins) < 2 or any(b >= a for a, b in zip(bins[1:], bins[:-1])):
        raise ValueError("bin edges must be at least two strictly increasing numbers")


def _utc(t: _dt.datetime) -> _dt.datetime:
    return t.replace(tzinfo=_dt.timezone.utc) if t.tzinfo is None else t


# ----------------------------------------------------------------------------------------------------------------------
# The rest of the job


class SourceSpec(_Model):
    """Where the sensitive table lives: ``uri`` (a Parquet file, directory or glob, or CSV; any fsspec URI), or
    ``table``, a catalog table name (Spark engine only)."""

    uri: str | None = None
    table: str | None = None
    format: Literal["parquet", "csv"] | None = None

    @model_validator(mode="after")
    def _one(self) -> "SourceSpec":
        if (self.uri is None) == (self.table is None):
            raise ValueError("give exactly one of source.uri (files) or source.table (a Spark catalog table)")
        return self

    @property
    def resolved_format(self) -> str:
        if self.format:
            return self.format
        stem = (self.uri or "").rstrip("/").lower()
        return "csv" if stem.endswith((".csv", ".csv.gz")) else "parquet"


class UnitColumn(_Model):
    column: str


class PrivacySpec(_Model):
    """The guarantee: (epsilon, delta)-DP for adding or removing one privacy unit with all of its rows.

    ``unit`` is ``row`` (every row its own unit) or ``{column: NAME}``. ``max_rows_per_unit`` (k) bounds how many rows
    of one unit are kept; every sensitivity, and so every noise scale, follows from it."""

    unit: Union[Literal["row"], UnitColumn] = "row"
    epsilon: float
    delta: float
    max_rows_per_unit: Union[int, Literal["auto"]] = 1
    k_quantile: float = Field(default=0.9, gt=0, lt=1, description="With max_rows_per_unit: auto, k is this DP quantile "
                              "of rows per unit.")
    discovery_fraction: float | None = Field(
        default=None, gt=0, lt=1,
        description="Fraction of rho for DP discovery of k, categorical values and numeric bounds the spec leaves open.",
    )
    discovery_rows_per_unit: int = Field(
        default=1, ge=1,
        description="DP discovery looks at a sample of at most this many rows of each unit (m), so its statistics "
        "have sensitivity m, not k.",
    )
    expected_units: int | None = Field(
        default=None, description="Public lower estimate of the number of units; when given, delta must be < 1/it."
    )
    null_units: Literal["drop", "error"] = Field(
        default="drop",
        description="Rows whose privacy unit is null: drop them (a row-wise filter, stable; nothing reports how many) "
        "or error (refuse the job in its first pass over the data, before any noise is drawn).",
    )

    @field_validator("epsilon")
    @classmethod
    def _eps(cls, v: float) -> float:
        if not (v > 0 and v < float("inf")):
            raise ValueError(f"epsilon must be a positive finite number; got {v}")
        return v

    @field_validator("delta")
    @classmethod
    def _delta(cls, v: float) -> float:
        if not (0 < v <= MAX_DELTA):
            raise ValueError(f"delta must be in (0, {MAX_DELTA:g}]; got {v:g}. A typical choice is 1e-9 or 1/(10 n)")
        return v

    @field_validator("max_rows_per_unit")
    @classmethod
    def _k(cls, v: int | str) -> int | str:
        if v != "auto" and v < 1:
            raise ValueError(f"max_rows_per_unit must be >= 1 (or auto); got {v}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "PrivacySpec":
        if self.unit == "row" and self.max_rows_per_unit != 1:
            raise ValueError("with unit: row every row is its own unit, so max_rows_per_unit must be 1 (or omitted)")
        if self.max_rows_per_unit == "auto" and self.discovery_fraction is None:
            raise ValueError("max_rows_per_unit: auto needs a discovery budget: set privacy.discovery_fraction "
                             "(e.g. 0.1), or give max_rows_per_unit as a number")
        if self.expected_units is not None and self.delta >= 1.0 / self.expected_units:
            raise ValueError(
                f"delta {self.delta:g} >= 1/expected_units = {1.0 / self.expected_units:g}: such a delta allows "
                "releasing a unit's record outright; choose delta well below 1/expected_units"
            )
        return self

    @property
    def unit_column(self) -> str | None:
        return None if self.unit == "row" else self.unit.column

    @property
    def k(self) -> int:
        """The contribution bound; for ``auto`` it is only known after discovery (see JobPlan.k)."""
        if self.max_rows_per_unit == "auto":
            raise ValueError("max_rows_per_unit is auto: k is chosen with DP during the run")
        return self.max_rows_per_unit


class WorkloadClique(_Model):
    """One workload marginal for AIM: its columns and its weight (how much it matters relative to the others)."""

    columns: list[str] = Field(min_length=1)
    weight: float = Field(default=1.0, gt=0)


class WorkloadSpec(_Model):
    """The marginals AIM should preserve. Default (no workload): every 2-way marginal, weight 1. ``three_way``:
    columns among which every 3-way marginal is added to the 2-way ones. ``cliques``: an explicit weighted list of
    column sets instead of the default."""

    three_way: list[str] = Field(default_factory=list)
    cliques: list[WorkloadClique] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> "WorkloadSpec":
        if self.cliques is not None and self.three_way:
            raise ValueError("give either three_way (added to every 2-way marginal) or cliques (the whole workload), "
                             "not both; list the 3-way sets among the cliques instead")
        if self.cliques is not None and not self.cliques:
            raise ValueError("cliques is empty: list the column sets to preserve, or drop cliques for every 2-way")
        return self


class SynthesizerSpec(_Model):
    """How measurements are chosen (``method``) and turned into rows (``engine``).

    ``mst``: McKenna et al.'s MST (1-way marginals, a spanning tree of 2-way marginals). ``mst-refined`` (default):
    MST, then ``refine_rounds`` AIM-style rounds that measure the 2-way marginals the current model gets most wrong,
    keeping the model's largest junction-tree clique within ``max_model_cells``. ``aim``: McKenna et al.'s AIM on the
    ``workload`` (default every 2-way marginal), with the model's total cells within ``max_model_cells``; after
    ``max_minutes`` (if set) the rest of the budget goes to one last round."""

    method: Literal["mst", "mst-refined", "aim"] = "mst-refined"
    engine: Literal["auto", "pgm", "torch"] = "auto"
    iters: int = Field(default=1000, ge=1)
    budget_split: dict[str, float] | None = Field(
        default=None,
        description="Fractions of rho per stage: one_way, select, measure (and refine for mst-refined).",
    )
    refine_rounds: int = Field(default=1, ge=1)
    refine_per_round: int | None = Field(default=None, ge=1, description="Default: 2 (number of columns - 1).")
    max_model_cells: int = Field(default=1_000_000, ge=1)
    workload: WorkloadSpec | None = Field(default=None, description="aim only: the marginals to preserve.")
    max_minutes: float | None = Field(default=None, gt=0, description="aim only: time cap of the rounds.")

    @model_validator(mode="after")
    def _split(self) -> "SynthesizerSpec":
        if self.method != "aim" and (self.workload is not None or self.max_minutes is not None):
            raise ValueError("workload and max_minutes apply to method aim only; set method: aim or remove them")
        v = self.budget_split
        if v is None:
            return self
        if self.method == "aim":
            raise ValueError("budget_split does not apply to method aim (its rounds split the budget as they go); "
                             "remove it")
        keys = {"one_way", "select", "measure"} | ({"refine"} if self.method == "mst-refined" else set())
        if set(v) != keys:
            raise ValueError(f"budget_split for method {self.method} needs exactly the keys {sorted(keys)}")
        if any(x <= 0 for x in v.values()) or abs(sum(v.values()) - 1.0) > 1e-9:
            raise ValueError("budget_split fractions must be positive and sum to 1")
        return self


class TableSpec(_Model):
    """Registration of the output as a table (see :mod:`dpbeam.lake`): ``iceberg`` in a SQL catalog
    (``catalog_uri``, a SQLAlchemy URL; ``warehouse``; ``identifier`` namespace.table) or ``delta`` at ``location``
    (default: output.uri + ".delta"). Each release becomes a new snapshot/version; the old ones stay readable."""

    format: Literal["iceberg", "delta"]
    catalog_uri: str | None = None
    warehouse: str | None = None
    identifier: str | None = None
    location: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> "TableSpec":
        if self.format == "iceberg" and not (self.catalog_uri and self.warehouse and self.identifier
                                             and "." in self.identifier):
            raise ValueError("an iceberg table needs catalog_uri, warehouse and identifier (namespace.table)")
        return self


class LedgerSpec(_Model):
    """The privacy ledger (:mod:`dpbeam.privacy.ledger`): a SQLAlchemy URL and the dataset this run spends from.
    Without it a run is not recorded; with it a run that the dataset's budget cannot afford is refused before any row
    is read."""

    uri: str
    dataset: str = Field(min_length=1, max_length=200)
    reservation_ttl_s: float = Field(default=24 * 3600.0, gt=0, description="A reservation of a run killed before "
                                     "its measurements existed stops counting after this many seconds.")


class OutputSpec(_Model):
    """Where the synthetic table goes. ``rows`` defaults to the DP estimate of the source's row count.

    ``partition_by``: a column to partition the Parquet files by (hive layout). ``max_rows_per_file`` and
    ``row_group_rows`` size the files."""

    uri: str
    partition_by: str | None = None
    max_rows_per_file: int = Field(default=5_000_000, ge=1)
    row_group_rows: int = Field(default=1_000_000, ge=1)
    table: TableSpec | None = None
    rows: int | None = Field(default=None, ge=1)
    overwrite: bool = False
    measurements_uri: str | None = None
    raw: bool = Field(default=False, description="Never allowed: dpbeam writes no raw rows.")

    @field_validator("raw")
    @classmethod
    def _no_raw(cls, v: bool) -> bool:
        if v:
            raise ValueError("dpbeam never writes raw or bounded real rows; remove output.raw")
        return v

    @property
    def resolved_measurements_uri(self) -> str:
        return self.measurements_uri or self.uri.rstrip("/") + ".measurements"


class TaskSpec(_Model):
    """Task-guided synthesis (:mod:`dpbeam.task`): a DP-SGD model of the downstream task draws the ``target`` column.

    ``target``: the column a downstream model will predict; ``kind``: ``classification`` (a categorical, boolean or
    integer column; the model predicts its codes) or ``regression`` (an integer or float column; the model predicts a
    distribution over its bins). ``budget_share``: the part of the budget DP-SGD gets (the measurements get rho times
    1 - budget_share; see :class:`dpbeam.privacy.accountant.ComposedAccountant`). ``mix``: the weight of the marginal
    model's own conditional in the labels' distribution (0: the task model's alone; 1: the marginal model's alone);
    ``combine``: how the two conditionals are pooled (``geometric``: p_task^(1 - mix) p_marg^mix, normalized;
    ``arithmetic``: a share ``mix`` of rows keeps the marginal model's draw); ``calibrate``: shift the labels so that
    their marginal is the marginal model's (:class:`dpbeam.task.guide.TaskGuidedModel`). ``sample_rate``: Poisson
    sampling probability of each privacy unit per step (public, fixed); ``epochs``: expected passes over the units
    (steps = ceil(epochs / sample_rate)); ``clip``: L2 bound on one unit's gradient; ``hidden``: width of the one
    hidden layer (0: a linear model over one-hot codes); ``learning_rate``: Adam's step size. ``pairs_share``: the
    part of ``budget_share`` spent, on the trusted side with the other measurements, on noisy 2-way marginals of the
    target with every other column (:mod:`dpbeam.task.pairs`; zCDP, the rho of ``budget_share * pairs_share`` of the
    budget; a pair that would grow the model past ``synthesizer.max_model_cells`` is left out); DP-SGD gets the
    rest, ``budget_share * (1 - pairs_share)``. Not with ``method: aim``.

    The defaults were chosen by measurement (benchmarks/task.py, 5-20 runs per setting, benchmarks/RESULTS.md): on
    Adult at epsilon 1, q = 0.05 with 100 steps, clip 1 and lr 0.05 were the best DP-SGD settings tried (larger q,
    more or fewer steps, other clips and rates, averaged iterates, a start from the marginal model's conditional: no
    better held-out accuracy); budget_share 0.15 with the geometric pool ties the synthesizer alone's TSTR accuracy at
    epsilon 1 (+0.05 ± 0.04 points at mix 0.75, 34 runs; +0.11 ± 0.11 at epsilon 4, 6 runs). ``mix`` and
    ``calibrate`` left unset depend on ``kind``: classification 0.75 and no calibration (against mix 0.5: 2-way TVD
    +8.3% instead of +11.5% of the synthesizer alone's, GB accuracy +0.03 ± 0.02 and AUC +0.05 ± 0.02 points, 34
    paired runs; DP-SGD's clipping shrinks the model towards the majority class, which helps accuracy); regression
    0.75 with calibration (diamonds: RMSE 6.6% below the synthesizer alone at TVD +9.8%, 8 runs; mix 0.5 gave 10%
    below at +22%).
    ``pairs_share`` defaults to 0: on Adult at epsilon 1 the pairs (2/3 of budget_share) raised the marginal model's
    own labels' AUC by 0.4 points, but in the pool at mix 0.75 gave no more accuracy (-0.06 ± 0.07 points; AUC +0.12
    ± 0.07, 18 runs), since MST and its refinement had already measured most of the target's pairs."""

    target: str
    kind: Literal["classification", "regression"]
    budget_share: float = Field(default=0.15, gt=0, lt=1)
    pairs_share: float = Field(default=0.0, ge=0, lt=1)
    mix: float | None = Field(default=None, ge=0, le=1)
    combine: Literal["geometric", "arithmetic"] = "geometric"
    calibrate: bool | None = None
    sample_rate: float = Field(default=0.05, gt=0, le=1)
    epochs: float = Field(default=5.0, gt=0)
    clip: float = Field(default=1.0, gt=0)
    hidden: int = Field(default=0, ge=0, le=1024)
    learning_rate: float = Field(default=0.05, gt=0)

    @property
    def dpsgd_share(self) -> float:
        """The part of the budget DP-SGD gets: ``budget_share * (1 - pairs_share)``."""
        return self.budget_share * (1.0 - self.pairs_share)

    @property
    def pairs_budget(self) -> float:
        """The part of the budget's rho the target's pairs get: ``budget_share * pairs_share``."""
        return self.budget_share * self.pairs_share

    @property
    def label_mix(self) -> float:
        """``mix``, or its default (0.75 for both kinds; see the class doc)."""
        return self.mix if self.mix is not None else 0.75

    @property
    def label_calibrate(self) -> bool:
        """``calibrate``, or its default for the kind (classification no, regression yes)."""
        return self.calibrate if self.calibrate is not None else self.kind == "regression"

    @property
    def steps(self) -> int:
        """DP-SGD steps: ceil(epochs / sample_rate) (public; fixed before any row is read)."""
        import math

        return max(1, math.ceil(self.epochs / self.sample_rate - 1e-9))

    @model_validator(mode="after")
    def _steps(self) -> "TaskSpec":
        if self.steps > 200_000:
            raise ValueError(f"epochs / sample_rate gives {self.steps} DP-SGD steps (at most 200000): lower "
                             "task.epochs or raise task.sample_rate")
        return self


class JobSpec(_Model):
    """A whole job. ``seed`` drives non-privacy randomness only (synthesis sampling); noise always comes from
    OpenDP's OS-seeded samplers, so two runs with one seed differ by their noise."""

    name: str = "dpbeam-job"
    source: SourceSpec
    privacy: PrivacySpec
    columns: dict[str, ColumnSpec]
    synthesizer: SynthesizerSpec = SynthesizerSpec()
    output: OutputSpec
    ledger: LedgerSpec | None = None
    task: TaskSpec | None = None
    seed: int = 0

    @field_validator("columns")
    @classmethod
    def _some(cls, v: dict) -> dict:
        if not v:
            raise ValueError("columns is empty: list every column to synthesize with its kind and public domain")
        return v

    @model_validator(mode="after")
    def _unit_not_synthesized(self) -> "JobSpec":
        col = self.privacy.unit_column
        if col is not None and col in self.columns:
            raise ValueError(
                f"columns.{col} is the privacy unit; identifiers are never synthesized. Remove it from columns"
            )
        return self

    @model_validator(mode="after")
    def _partition_column(self) -> "JobSpec":
        col = self.output.partition_by
        if col is not None and col not in self.columns:
            raise ValueError(f"output.partition_by {col!r} is not a synthesized column; use one of {list(self.columns)}")
        return self

    @model_validator(mode="after")
    def _task(self) -> "JobSpec":
        t = self.task
        if t is None:
            return self
        if t.target not in self.columns:
            raise ValueError(f"task.target {t.target!r} is not a synthesized column; use one of {list(self.columns)}")
        if len(self.columns) < 2:
            raise ValueError("task needs at least one column besides task.target to predict it from")
        kind = self.columns[t.target].kind
        if t.kind == "regression" and kind not in ("integer", "float"):
            raise ValueError(f"task.kind regression needs an integer or float target; columns.{t.target} is {kind}: "
                             "use task.kind classification")
        if t.kind == "classification" and kind in ("float", "datetime"):
            raise ValueError(f"task.kind classification needs a categorical, boolean or integer target; "
                             f"columns.{t.target} is {kind}: use task.kind regression, or another target")
        if t.pairs_share > 0 and self.synthesizer.method == "aim":
            raise ValueError("task.pairs_share adds measurements to MST's (mst, mst-refined); AIM picks its own: set "
                             "task.pairs_share: 0, or synthesizer.method mst-refined")
        if self.ledger is not None:
            raise ValueError("the ledger composes releases in zCDP, and a task-guided run is accounted in Renyi DP "
                             "(DP-SGD is not zCDP): remove ledger, or remove task")
        return self

    def sha256(self) -> str:
        """A stable hash of the spec's content (after defaults), recorded in every release statement. A spec without
        a task section hashes as it did before the section existed."""
        data = self.model_dump(mode="json", exclude={"task"} if self.task is None else None)
        blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


# ----------------------------------------------------------------------------------------------------------------------
# Loading


def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def _resolve(uri: str, base: Path) -> str:
    if _is_local(uri):
        path = Path(uri.removeprefix("file://")).expanduser()
        return str(path if path.is_absolute() else (base / path).resolve())
    return uri


def format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).endswith("Column") and p not in ("str", "int", "bool"))
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"  spec field '{loc}': {msg}")
    return "invalid job spec:\n" + "\n".join(lines)


def parse_spec(data: dict[str, Any], base_dir: str | os.PathLike | None = None) -> JobSpec:
    """Validate a spec given as a mapping. Relative local paths resolve against ``base_dir`` (default: cwd)."""
    if not isinstance(data, dict):
        raise SpecError("a job spec must be a mapping with source, privacy, columns and output")
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(format_validation_error(err)) from None
    base = Path(base_dir or os.getcwd())
    out = spec.output
    return spec.model_copy(
        update={
            "source": spec.source.model_copy(
                update={"uri": _resolve(spec.source.uri, base) if spec.source.uri else None}
            ),
            "output": out.model_copy(
                update={
                    "uri": _resolve(out.uri, base),
                    "measurements_uri": _resolve(out.measurements_uri, base) if out.measurements_uri else None,
                }
            ),
        }
    )


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any] | None) -> None:
    """Set dotted keys (``{"privacy.epsilon": 0.5}``) in a spec mapping, in place, before validation."""
    for key, value in (overrides or {}).items():
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value


def load_spec(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> JobSpec:
    """Read a YAML spec. Relative paths in it are relative to the spec file. ``overrides`` are dotted keys
    (``{"privacy.epsilon": 0.5}``) applied before validation."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SpecError(f"spec file {path} does not exist") from None
    except yaml.YAMLError as err:
        raise SpecError(f"spec file {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise SpecError(f"spec file {path} must hold a mapping with source, privacy, columns and output")
    apply_overrides(data, overrides)
    return parse_spec(data, base_dir=path.parent.resolve())
