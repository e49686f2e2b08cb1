"""A whole job: plan (every check, no budget), measure (trusted side), synthesize (post-processing).

``plan_job`` runs every check that can fail before budget is spent: the spec, the source's schema and emptiness,
the privacy-unit column, and that neither output location already holds data. Only then does ``measure`` touch rows.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Any

from dpbeam import lake
from dpbeam.aggregate import Aggregation, MarginalCounts
from dpbeam.bounding import BoundingKey
from dpbeam.domain import TableDomain, build_table_domain
from dpbeam.errors import SpecError
from dpbeam.measurements import MeasurementsArtifact
from dpbeam.privacy.accountant import ZCDPAccountant
from dpbeam.privacy.mst import mst_plan, required_cliques, run_mst
from dpbeam.privacy.noise import noise_is_off
from dpbeam.privacy.refine import run_refinement
from dpbeam.progress import Reporter
from dpbeam.source import Source, open_source
from dpbeam.spec import JobSpec
from dpbeam.versions import library_versions

ENGINES = ("local", "beam", "spark")


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
    spec: JobSpec
    source: Source
    domain: TableDomain
    accountant: ZCDPAccountant

    @property
    def unit_column(self) -> str | None:
        return self.spec.privacy.unit_column


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
    domain = build_table_domain(dict(spec.columns), source.schema)
    source.check(domain.names + ([unit] if unit else []))
    if check_outputs:
        lake.check_output_free(spec.output.uri, spec.output.overwrite, "output.uri")
        lake.check_output_free(spec.output.resolved_measurements_uri, spec.output.overwrite, "output.measurements_uri")
    syn = spec.synthesizer
    budget = mst_plan(len(domain.columns), syn.budget_split, refine=syn.method == "mst-refined")
    accountant = ZCDPAccountant(spec.privacy.epsilon, spec.privacy.delta, budget)
    return JobPlan(spec, source, domain, accountant)


def run_aggregation(
    plan: JobPlan, aggregation: Aggregation, engine: str, key: BoundingKey, reporter: Reporter, **options: Any
):
    """Run one bounded aggregation on the chosen engine (see :mod:`dpbeam.aggregate`)."""
    module = engine_module(engine)
    with reporter.stage(f"reading, bounding and counting ({engine} engine)") as advance:
        return module.run_aggregation(
            plan.source, aggregation, plan.unit_column, plan.spec.privacy.k, key, advance=advance, **options
        )


def privacy_record(plan: JobPlan) -> dict[str, Any]:
    p = plan.spec.privacy
    unit = "row" if p.unit_column is None else f"column {p.unit_column}"
    return {
        "privacy_unit": unit,
        "adjacency": (
            "add or remove one row" if p.unit_column is None
            else f"add or remove one privacy unit (all rows sharing one value of {p.unit_column})"
        ),
        "max_rows_per_unit": p.k,
        **plan.accountant.record(),
        **({"noise_disabled_for_tests": True} if noise_is_off() else {}),
    }


def measure(
    plan: JobPlan,
    engine: str = "local",
    key: BoundingKey | None = None,
    reporter: Reporter | None = None,
    **options: Any,
) -> MeasurementsArtifact:
    """The trusted pass: bound, count, and run MST. Returns the artifact; exact counts are dropped here."""
    reporter = reporter or Reporter()
    counts = MarginalCounts(plan.domain, required_cliques(plan.domain.names))
    cubes = run_aggregation(plan, counts, engine, key or BoundingKey.fresh(), reporter, **options)
    k, syn = plan.spec.privacy.k, plan.spec.synthesizer
    result = run_mst(cubes, plan.domain, k, plan.accountant, reporter.say)
    if "refine" in plan.accountant.plan:
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
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(),
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
