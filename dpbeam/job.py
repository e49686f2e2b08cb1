"""A whole job: plan (every check, no budget), measure (trusted side), synthesize (post-processing).

``plan_job`` runs every check that can fail before budget is spent: the spec, the source's schema and emptiness,
the privacy-unit column, and that neither output location already holds data. Only then does ``measure`` touch rows.
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa

from dpbeam import lake
from dpbeam.aggregate import Aggregation, MarginalCounts
from dpbeam.bounding import BoundingKey
from dpbeam.discovery import STAGE, DiscoveryStats, DiscoveryTask, RowsPerUnit, choose_k, select_bounds, select_values
from dpbeam.domain import (
    CategoricalDomain,
    ColumnDomain,
    TableDomain,
    arrow_type_to_str,
    build_column_domain,
    build_table_domain,
    check_column_kind,
    check_columns,
    is_open,
)
from dpbeam.errors import SpecError
from dpbeam.measurements import MeasurementsArtifact
from dpbeam.privacy.accountant import ZCDPAccountant
from dpbeam.privacy.mst import mst_plan, required_cliques, run_mst
from dpbeam.privacy.noise import noise_was_disabled
from dpbeam.privacy.refine import decide_refinement, run_refinement
from dpbeam.progress import Reporter
from dpbeam.source import Source, open_source
from dpbeam.spec import CategoricalColumn, ColumnSpec, JobSpec
from dpbeam.versions import library_versions

ENGINES = ("local", "beam", "spark")
UNBOUNDED = 1 << 62  # "k" for passes that must see every row of a unit


def engine_module(name: str):
    """The adapter module of an engine; each has ``run_aggregation(source, aggregation, unit_column, k, key,
    advance=None, **options)`` (see :mod:`dpbeam.aggregate`)."""
    if name not in ENGINES:
        raise SpecError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
    import importlib

    try:
        return importlib.import_module(f"transforms.{name}")
    except ImportError as err:
        raise SpecError(f"the {name} engine needs its extra: pip install 'dpbeam[{name}]' ({err})") from None


@dataclass
class JobPlan:
    """Everything decided before budget is spent. ``domain`` and ``k`` are None while DP discovery still has to
    fill them in (see :func:`discover`)."""

    spec: JobSpec
    source: Source
    accountant: ZCDPAccountant
    domain: TableDomain | None
    k: int | None
    tasks: list[DiscoveryTask] = field(default_factory=list)

    @property
    def unit_column(self) -> str | None:
        return self.spec.privacy.unit_column

    @property
    def columns(self) -> list[str]:
        return list(self.spec.columns)


def plan_job(spec: JobSpec, check_outputs: bool = True, engine: str = "local", **options: Any) -> JobPlan:
    """Check everything that can be checked without spending budget, and make the budget plan."""
    if spec.source.table is not None:
        if engine != "spark":
            raise SpecError(f"source.table {spec.source.table!r} is a catalog table: run it with the spark engine")
        source = engine_module("spark").catalog_source(spec.source.table, **options)
    else:
        source = open_source(spec.source)
    unit = spec.privacy.unit_column
    if unit is not None and unit not in source.schema.names:
        raise SpecError(
            f"privacy unit column '{unit}' is not in the source (it has {source.schema.names}); fix privacy.unit.column"
        )
    specs = dict(spec.columns)
    check_columns(specs, source.schema)
    tasks = [DiscoveryTask(n, s.kind) for n, s in specs.items() if is_open(s)]
    discovery = spec.privacy.discovery_fraction
    if tasks and discovery is None:
        build_table_domain(specs, source.schema)  # raises the error that names the first open column
    domain = None if tasks else build_table_domain(specs, source.schema)
    source.check(list(specs) + ([unit] if unit else []))
    if check_outputs:
        lake.check_output_free(spec.output.uri, spec.output.overwrite, "output.uri")
        lake.check_output_free(spec.output.resolved_measurements_uri, spec.output.overwrite, "output.measurements_uri")
    syn = spec.synthesizer
    budget = mst_plan(len(specs), syn.budget_split, refine=syn.method == "mst-refined")
    k_auto = spec.privacy.max_rows_per_unit == "auto"
    if tasks or k_auto:
        budget = {"discovery": discovery, **{s: f * (1 - discovery) for s, f in budget.items()}}
    # Gaussian thresholding is approximate zCDP: half of delta is set aside for it when values are discovered.
    reserved = spec.privacy.delta / 2 if any(t.kind == "categorical" for t in tasks) else 0.0
    accountant = ZCDPAccountant(spec.privacy.epsilon, spec.privacy.delta, budget, delta_reserved=reserved)
    return JobPlan(spec, source, accountant, domain, None if k_auto else spec.privacy.k, tasks)


def run_aggregation(
    plan: JobPlan,
    aggregation: Aggregation,
    engine: str,
    key: BoundingKey,
    reporter: Reporter,
    k: int | None = None,
    what: str = "counting",
    **options: Any,
):
    """Run one bounded aggregation on the chosen engine (see :mod:`dpbeam.aggregate`)."""
    module = engine_module(engine)
    with reporter.stage(f"reading, bounding and {what} ({engine} engine)") as advance:
        return module.run_aggregation(
            plan.source, aggregation, plan.unit_column, k if k is not None else plan.k, key, advance=advance,
            **options,
        )


def discover(plan: JobPlan, engine: str, key: BoundingKey, reporter: Reporter, **options: Any) -> JobPlan:
    """Fill in k and open column domains with DP (the ``discovery`` stage); a no-op when the spec gave them all."""
    if plan.domain is not None and plan.k is not None:
        return plan
    acc = plan.accountant
    shares = len(plan.tasks) + (plan.k is None)
    rho = acc.allotted(STAGE) / shares
    k = plan.k
    if k is None:
        counts = run_aggregation(plan, RowsPerUnit(), engine, key, reporter, k=UNBOUNDED, what="counting rows per unit",
                                 **options)
        k = choose_k(counts, plan.spec.privacy.k_quantile, acc, rho)
        reporter.say(f"DP contribution bound: k = {k}")
    specs = dict(plan.spec.columns)
    if plan.tasks:
        stats = run_aggregation(plan, DiscoveryStats(plan.tasks), engine, key, reporter, k=k,
                                what="discovering domains", **options)
        n_cat = sum(t.kind == "categorical" for t in plan.tasks)
        for t in plan.tasks:
            s = specs[t.column]
            if t.kind == "categorical":
                value_type = check_column_kind(t.column, s, plan.source.schema.field(t.column).type)
                values = select_values(stats[t.column], value_type, k, acc, rho, acc.delta_share(n_cat), t.column)
                specs[t.column] = s.model_copy(update={"values": values})
                reporter.say(f"DP domain of {t.column}: {len(values)} values")
            else:
                lo, hi = select_bounds(stats[t.column], t.kind, k, acc, rho, t.column)
                specs[t.column] = s.model_copy(update={"bounds": _bounds(t.kind, lo, hi)})
                reporter.say(f"DP bounds of {t.column}: {specs[t.column].bounds}")
    domain = TableDomain(tuple(_discovered_domain(n, s, plan.source.schema) for n, s in specs.items()))
    return replace(plan, domain=domain, k=k)


def _bounds(kind: str, lo: float, hi: float) -> tuple:
    if kind == "integer":
        return (math.floor(lo), math.ceil(hi))
    if kind == "datetime":
        return tuple(_dt.datetime.fromtimestamp(x / 1e6, _dt.timezone.utc) for x in (lo, hi))
    return (lo, hi)


def _discovered_domain(name: str, spec: ColumnSpec, schema: pa.Schema) -> ColumnDomain:
    """A column's domain once discovery has filled its spec in; a categorical column where no value passed the
    threshold keeps only its "other" code."""
    if isinstance(spec, CategoricalColumn) and spec.values == []:
        t = check_column_kind(name, spec, schema.field(name).type)
        return CategoricalDomain(name, arrow_type_to_str(t), spec.nullable, values=(), other_label=spec.other_label)
    return build_column_domain(name, spec, schema.field(name).type)


def privacy_record(plan: JobPlan) -> dict[str, Any]:
    """The artifact's privacy record: the unit, k, what discovery released, and the accountant's record (the budget's
    epsilon, delta, rho and privacy profile). In a process where the test-only noise switch was used it is a record
    that makes no privacy claim (and neither it nor anything built on it can be written)."""
    p = plan.spec.privacy
    unit = "row" if p.unit_column is None else f"column {p.unit_column}"
    record = {
        "privacy_unit": unit,
        "adjacency": (
            "add or remove one row" if p.unit_column is None
            else f"add or remove one privacy unit (all rows sharing one value of {p.unit_column})"
        ),
        "max_rows_per_unit": plan.k,
        "max_rows_per_unit_chosen_by_dp": p.max_rows_per_unit == "auto",
        "discovered_columns": [t.column for t in plan.tasks],
        # real values released by DP thresholding (partition selection); the statement names these columns
        "discovered_values": [t.column for t in plan.tasks if t.kind == "categorical"],
    }
    if noise_was_disabled():
        return {**record, "noise_disabled_for_tests": True,
                "not_private": "noise was switched off by a test hook; this record makes no privacy claim"}
    return {**record, **plan.accountant.record()}


def measure(
    plan: JobPlan,
    engine: str = "local",
    key: BoundingKey | None = None,
    reporter: Reporter | None = None,
    **options: Any,
) -> MeasurementsArtifact:
    """The trusted pass: DP discovery (if the spec leaves k or domains open), then bound, count, and run MST (and its
    refinement). Returns the artifact; exact counts are dropped here."""
    reporter = reporter or Reporter()
    key = key or BoundingKey.fresh()
    plan = discover(plan, engine, key, reporter, **options)
    counts = MarginalCounts(plan.domain, required_cliques(plan.domain.names))
    cubes = run_aggregation(plan, counts, engine, key, reporter, **options)
    k, syn = plan.k, plan.spec.synthesizer
    planned = "refine" in plan.accountant.plan
    refine = planned and decide_refinement(
        cubes, plan.domain, k, plan.accountant, syn.refine_per_round, syn.refine_rounds
    )
    if planned and not refine:
        reporter.say("refinement would drown in noise at this budget: running plain MST with the whole budget")
    result = run_mst(cubes, plan.domain, k, plan.accountant, reporter.say)
    if refine:
        result = run_refinement(
            cubes, plan.domain, k, plan.accountant, result, rounds=syn.refine_rounds, per_round=syn.refine_per_round,
            max_cells=syn.max_model_cells, progress=reporter.say,
        )
    del cubes
    manifest = {
        "method": syn.method,
        "engine": engine,
        "spec_name": plan.spec.name,
        "spec_sha256": plan.spec.sha256(),
        "tree": [list(e) for e in result.tree],
        "refined": [list(c) for c in result.refined],
        "library_versions": library_versions(),
        # no timestamp: with the statement's it would time the trusted pass (timing is not protected)
    }
    return MeasurementsArtifact(plan.domain, result.compression, result.measurements, privacy_record(plan), manifest)


def run_job(
    spec: JobSpec,
    engine: str = "local",
    reporter: Reporter | None = None,
    key: BoundingKey | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Plan, measure, write the artifact, synthesize and commit the table. Returns the release statement."""
    from dpbeam.synth.synthesize import synthesize

    reporter = reporter or Reporter()
    plan = plan_job(spec, engine=engine, **options)
    artifact = measure(plan, engine, key=key, reporter=reporter, **options)
    artifact.write(spec.output.resolved_measurements_uri, overwrite=spec.output.overwrite)
    return synthesize(
        artifact,
        spec.output.uri,
        rows=spec.output.rows,
        seed=spec.seed,
        engine=spec.synthesizer.engine,
        iters=spec.synthesizer.iters,
        overwrite=spec.output.overwrite,
        reporter=reporter,
    )
