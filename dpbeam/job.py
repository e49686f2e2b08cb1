"""A whole job: plan (every check, no budget), measure (trusted side), synthesize (post-processing).

``plan_job`` runs every check that can fail before budget is spent: the spec, the source's schema and emptiness,
the privacy-unit column, and that neither output location already holds data. Only then does ``measure`` touch rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from dpbeam import lake
from dpbeam.aggregate import Aggregation, MarginalCounts
from dpbeam.bounding import BoundingKey
from dpbeam.discovery import (
    STAGE,
    DiscoveryStats,
    DiscoveryTask,
    RowsPerUnit,
    bins_for_noise,
    choose_k,
    discovery_shares,
    select_edges,
    select_range,
    select_values,
)
from dpbeam.domain import (
    BinnedDomain,
    ColumnDomain,
    TableDomain,
    arrow_type_to_str,
    build_column_domain,
    build_table_domain,
    categorical_domain,
    check_column_kind,
    check_columns,
    is_nullable,
    is_open,
    spec_arrow_type,
)
from dpbeam.errors import SpecError
from dpbeam.first_pass import FirstPassChecks
from dpbeam.measurements import MeasurementsArtifact
from dpbeam.privacy import aim
from dpbeam.privacy.accountant import ZCDPAccountant
from dpbeam.privacy.mst import mst_plan, required_cliques, run_mst
from dpbeam.privacy.noise import gaussian_sigma, noise_was_disabled
from dpbeam.privacy.refine import decide_refinement, run_refinement
from dpbeam.progress import Reporter
from dpbeam.source import Source, open_source
from dpbeam.spec import JobSpec
from dpbeam.versions import library_versions

ENGINES = ("local", "beam", "spark")
UNBOUNDED = 1 << 62  # "k" for passes that must see every row of a unit
# Equal-frequency bins of a numeric column left open, unless the spec gives bins (fewer when the noise cannot afford
# them: discovery.bins_for_noise). 32 rather than 16 since 2-way marginals whose cells drown in noise are measured on
# groups of codes (privacy/resolution.py): mean 2-way TVD with domains open at eps = 1, two runs each, 16 -> 32 bins:
# flights 0.057 -> 0.048, gss_wages 0.045 -> 0.043, mpls_stops 0.033 -> 0.034, nlswork 0.160 -> 0.154 (64: flights
# 0.044 but mpls_stops 0.037). benchmarks/RESULTS.md, issue 8, fourth pass.
DISCOVERED_BINS = 32
# The size the k rule gives an open numeric column's bins in its model of a 2-way marginal's error. The rule was set
# and measured with 16 (auto k within 2% of the best fixed k on nlswork, baseball and movielens, five runs each:
# benchmarks/RESULTS.md, issue 8, fourth pass); the extra bins above it are measured on groups of codes whenever
# their cells would drown in noise, so a measured marginal's cells stay near that size.
K_RULE_OPEN_BINS = 16
# Discovered bins whose outer edges leave out this share of a column's values or more at each end (0.01 plus the
# range noise's share, up to 0.11) get a warning naming the column: a user-level table of 4,000 planes cut the hours of
# departure to 7-18 and the months to 2-12 at eps 1, silently, where the ranges were public.
CLAMPED_NOTE = 0.05


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
    expected_rows_kept: float | None = None  # DP estimate, when k was chosen by DP
    diagnostics: list[str] = field(default_factory=list)  # what discovery could not do, and what to change
    reservation: Any = None  # the ledger's hold on this run's budget (dpbeam.privacy.ledger.Reservation), if any

    @property
    def unit_column(self) -> str | None:
        return self.spec.privacy.unit_column

    @property
    def columns(self) -> list[str]:
        return list(self.spec.columns)


def plan_budget(spec: JobSpec) -> ZCDPAccountant:
    """The run's budget plan, from the spec alone (public): the stages' shares of rho and the delta set aside for
    approximate mechanisms. What the ledger reserves; :func:`plan_job` uses the same plan."""
    specs = dict(spec.columns)
    tasks = [DiscoveryTask(n, s.kind) for n, s in specs.items() if is_open(s)]
    discovery = spec.privacy.discovery_fraction
    if tasks and discovery is None:
        raise SpecError(f"column(s) {', '.join(t.column for t in tasks)} have no public domain (values or bounds) "
                        "and privacy.discovery_fraction is not set; give the domain or a discovery budget")
    syn = spec.synthesizer
    if syn.method == "aim":
        aim.workload(syn.workload, list(specs))  # an unknown workload column is refused here, before any data
        budget = aim.aim_plan()
    else:
        budget = mst_plan(len(specs), syn.budget_split, refine=syn.method == "mst-refined")
    if tasks or spec.privacy.max_rows_per_unit == "auto":
        budget = {"discovery": discovery, **{s: f * (1 - discovery) for s, f in budget.items()}}
    # Gaussian thresholding is approximate zCDP: half of delta is set aside for it when values are discovered.
    reserved = spec.privacy.delta / 2 if any(t.kind == "categorical" for t in tasks) else 0.0
    return ZCDPAccountant(spec.privacy.epsilon, spec.privacy.delta, budget, delta_reserved=reserved)


def plan_job(spec: JobSpec, check_outputs: bool = True, engine: str = "local", **options: Any) -> JobPlan:
    """Check everything that can be checked without spending budget, and make the budget plan."""
    if spec.source.table is not None:
        if engine != "spark":
            raise SpecError(f"source.table {spec.source.table!r} is a catalog table: run it with the spark engine")
        source = engine_module("spark").catalog_source(spec.source.table, **options)
    else:
        types = {n: spec_arrow_type(c) for n, c in spec.columns.items()}
        source = open_source(spec.source, column_types=types)
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
    for t in tasks:  # what can be checked of an open column's future domain, before any noise
        if t.kind == "categorical":
            categorical_domain(t.column, specs[t.column], source.schema.field(t.column), ())
    source.check(list(specs) + ([unit] if unit else []))
    if check_outputs:
        lake.check_output_free(spec.output.uri, spec.output.overwrite, "output.uri")
        lake.check_output_free(spec.output.resolved_measurements_uri, spec.output.overwrite, "output.measurements_uri")
    accountant = plan_budget(spec)
    k_auto = spec.privacy.max_rows_per_unit == "auto"
    if spec.task is not None:  # task-guided synthesis: the measurements and DP-SGD composed in RDP
        from dpbeam.task.job import plan_task

        accountant = plan_task(spec, engine, accountant.plan, accountant.delta_reserved, check_outputs)
    plan = JobPlan(spec, source, accountant, domain, None if k_auto else spec.privacy.k, tasks)
    if spec.ledger is not None:  # last: every check above passed; no row has been read
        from dpbeam.privacy.ledger import reserve_for

        plan.reservation = reserve_for(spec, accountant)
    return plan


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
    with reporter.timed("read, bound and count"), reporter.stage(f"reading, bounding and {what} ({engine} engine)") as advance:
        return module.run_aggregation(
            plan.source, aggregation, plan.unit_column, k if k is not None else plan.k, key, advance=advance,
            null_units=plan.spec.privacy.null_units, **options,
        )


def first_pass(plan: JobPlan, aggregation: Aggregation) -> FirstPassChecks:
    """Wrap the job's first aggregation so that every data check that can fail runs in it (see
    :mod:`dpbeam.first_pass`)."""
    schema = plan.source.schema
    non_nullable = [n for n, s in plan.spec.columns.items() if not is_nullable(s, schema.field(n))]
    return FirstPassChecks(aggregation, plan.columns, non_nullable)


def discover(plan: JobPlan, engine: str, key: BoundingKey, reporter: Reporter, **options: Any) -> JobPlan:
    """Fill in k and open column domains with DP (the ``discovery`` stage; see :mod:`dpbeam.discovery`); a no-op
    when the spec gave them all.

    The first aggregation here is the job's first pass over the data, so it carries every check that can fail
    (:func:`first_pass`); what follows the first noise draw never aborts on data. A column whose discovery found
    little (no value above the threshold, one bin) is reported and recorded in the plan's diagnostics."""
    if plan.domain is not None and plan.k is not None:
        return plan
    acc, privacy = plan.accountant, plan.spec.privacy
    m = privacy.discovery_rows_per_unit if plan.unit_column else 1
    rho = {part: acc.allotted(STAGE) * f for part, f in discovery_shares(plan.tasks, plan.k is None).items()}
    checked: list[bool] = []  # the first aggregation run here carries the first-pass checks

    def first(aggregation: Aggregation) -> Aggregation:
        if checked:
            return aggregation
        checked.append(True)
        return first_pass(plan, aggregation)

    k, kept_share, notes = plan.k, plan.expected_rows_kept, list(plan.diagnostics)
    sigma_row, cells = _marginal_noise_per_row(plan)
    kept_rows = None  # DP estimate of the rows kept at k, when k is chosen here
    if k is None:
        counts = run_aggregation(plan, first(RowsPerUnit()), engine, key, reporter, k=UNBOUNDED,
                                 what="counting rows per unit", **options)
        k, kept_share, kept_rows = choose_k(counts, privacy.k_quantile, acc, rho[("k", "")], sigma_row, cells)
        share = "unknown: the histogram did not stand out of its noise" if kept_share is None else f"{kept_share:.0%}"
        reporter.say(f"DP contribution bound: k = {k} (expected share of rows kept: {share})")
    schema = plan.source.schema
    specs = dict(plan.spec.columns)
    domains: dict[str, ColumnDomain] = {}
    if plan.tasks:
        stats = run_aggregation(plan, first(DiscoveryStats(plan.tasks)), engine, key, reporter, k=m,
                                what="discovering domains", **options)
        n_cat = sum(t.kind == "categorical" for t in plan.tasks)
        n_num = len(plan.tasks) - n_cat  # the range histograms read together (their false groups' family)
        grids, totals = {}, {}
        clamped: dict[str, float] = {}  # columns whose outer edges leave out CLAMPED_NOTE or more at each end
        for t in plan.tasks:
            s, f = specs[t.column], schema.field(t.column)
            if t.kind == "categorical":
                value_type = check_column_kind(t.column, s, f.type)
                chosen = select_values(stats[t.column], value_type, m, acc, rho[(t.column, "values")],
                                       acc.delta_share(n_cat), t.column)
                domains[t.column] = categorical_domain(t.column, s, f, chosen.values)
                reporter.say(f"DP domain of {t.column}: {len(chosen.values)} values")
                if len(chosen.values) <= 1:
                    notes.append(_few_values_note(t.column, len(chosen.values), chosen.threshold))
            else:
                grids[t.column], totals[t.column] = select_range(stats[t.column], t.kind, m, acc,
                                                                 rho[(t.column, "range")], t.column,
                                                                 rho[(t.column, "bins")], family=n_num)
        if grids:
            fine = run_aggregation(plan, DiscoveryStats(plan.tasks, fine=grids), engine, key, reporter, k=m,
                                   what="discovering bins", **options)
            for t in plan.tasks:
                if t.column not in grids:
                    continue
                s, f = specs[t.column], schema.field(t.column)
                # the spec's bins, or as many as the measurement's noise affords: rows kept estimated from the k
                # histogram, or (k given) from the units this column's range release counted (m values each)
                rows = kept_rows if kept_rows else totals[t.column] / m
                bins = s.bins if isinstance(s.bins, int) else bins_for_noise(rows, k, sigma_row, DISCOVERED_BINS)
                edges, informative, points, ends = select_edges(fine[t.column], grids[t.column], t.kind, bins, m,
                                                                acc, rho[(t.column, "bins")], t.column)
                value_type = check_column_kind(t.column, s, f.type)
                domains[t.column] = BinnedDomain(t.column, arrow_type_to_str(value_type), is_nullable(s, f),
                                                 edges=tuple(edges), binned_kind=t.kind, points=points)
                reporter.say(f"DP bins of {t.column}: {domains[t.column].labels()[0]} .. "
                             f"{domains[t.column].labels()[-1 - domains[t.column].nullable]}")
                if totals[t.column] <= 0:
                    notes.append(f"column {t.column}: its values did not stand out of the discovery noise at this "
                                 "budget at any resolution, so its range is a guess (the coarse cell with the largest "
                                 f"noisy count); give columns.{t.column}.bounds (and bins), or raise "
                                 "privacy.discovery_fraction")
                elif not informative:
                    notes.append(f"column {t.column}: its values did not stand out of the discovery noise at this "
                                 "budget, so its bins are equal steps of a coarse range, not quantiles; give "
                                 f"columns.{t.column}.bounds (and bins), or raise privacy.discovery_fraction")
                elif len(edges) == 2:
                    notes.append(f"column {t.column}: its DP bins collapsed to one bin (the values sit in a narrow "
                                 f"range at this budget's resolution); give columns.{t.column}.bounds and bins, or "
                                 "raise privacy.discovery_fraction")
                elif ends >= CLAMPED_NOTE:
                    clamped[t.column] = ends
        if clamped:
            notes.append(_clamped_note(clamped))
    for note in notes[len(plan.diagnostics):]:
        reporter.say(f"warning: {note}")
    domain = TableDomain(tuple(domains.get(n) or build_column_domain(n, s, schema.field(n)) for n, s in specs.items()))
    return replace(plan, domain=domain, k=k, expected_rows_kept=kept_share, diagnostics=notes)


def _clamped_note(clamped: dict[str, float]) -> str:
    """One warning for the columns whose discovered outer edges leave out a share ``clamped[column]`` (a function of
    DP outputs: the noise's share of the noisy count) of the values at each end."""
    lo, hi = min(clamped.values()), max(clamped.values())
    share = f"{lo:.0%}" if f"{lo:.0%}" == f"{hi:.0%}" else f"{lo:.0%}-{hi:.0%}"
    one = len(clamped) == 1
    return (f"column{'' if one else 's'} {', '.join(clamped)}: at this budget {'its' if one else 'their'} DP bins "
            f"begin and end about {share} of the values in from each end (the range noise's share of the count), "
            f"and the values beyond are clamped into the end bins; give {'its' if one else 'their'} bounds in the "
            "spec (public ranges such as months, hours or percentages), or raise privacy.discovery_fraction")


def _few_values_note(column: str, kept: int, threshold: int) -> str:
    what = "no value" if kept == 0 else "only one value"
    return (f"column {column}: {what} reached the threshold of about {threshold} units at this budget, so the rest "
            f"of its values are written as its 'other' label; list its public values under columns.{column}.values "
            "or raise privacy.discovery_fraction")


def _marginal_noise_per_row(plan: JobPlan) -> tuple[float, float]:
    """For the k rule (see :func:`dpbeam.discovery.choose_k`): the noise scale per row of contribution of a measured
    2-way marginal (sigma at k = 1 of the plan's measurement stage, split over its d - 1 marginals), and the cells of
    a typical 2-way marginal (the square of the median column size: the spec's public size, or
    :data:`K_RULE_OPEN_BINS` for an open column). Public quantities only."""
    d = len(plan.spec.columns)
    if aim.STAGE in plan.accountant.plan:  # a measurement of one round before annealing
        per_marginal = aim.first_measure_rho(plan.accountant.allotted(aim.STAGE), d)
    elif "mst.measure" in plan.accountant.plan:
        per_marginal = plan.accountant.allotted("mst.measure") / (d - 1)
    else:  # a single column: its 1-way marginal is the only measurement
        per_marginal = plan.accountant.allotted("mst.one_way")
    sizes = []
    for name, s in plan.spec.columns.items():
        if is_open(s):
            sizes.append(s.bins if isinstance(getattr(s, "bins", None), int) else K_RULE_OPEN_BINS)
        else:
            sizes.append(build_column_domain(name, s, plan.source.schema.field(name)).size)
    return gaussian_sigma(per_marginal, 1.0), float(np.median(sizes)) ** 2


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
        **({"expected_share_of_rows_kept": plan.expected_rows_kept} if plan.expected_rows_kept is not None else {}),
        "discovery_rows_per_unit": p.discovery_rows_per_unit if plan.tasks and p.unit_column else None,
        **({"null_units": p.null_units} if p.unit_column else {}),  # rows with a null unit: dropped, or refused
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
    """:func:`_measure`, and the ledger: a failure frees the run's reservation; measurements that exist mark it
    spent (it counts for good), and the artifact's manifest points to the ledger entry."""
    if plan.reservation is None:
        return _measure(plan, engine, key, reporter, **options)
    try:
        artifact = _measure(plan, engine, key, reporter, **options)
    except BaseException:
        plan.reservation.release()
        raise
    plan.reservation.mark_spent(plan.spec.output.resolved_measurements_uri)
    artifact.manifest["lineage"] = {**plan.reservation.lineage(), "output_uri": plan.spec.output.uri,
                                    "measurements_uri": plan.spec.output.resolved_measurements_uri}
    return artifact


def _measure(
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
    k, syn = plan.k, plan.spec.synthesizer
    if syn.method == "aim":
        return _measure_aim(plan, engine, key, reporter, **options)
    counts = MarginalCounts(plan.domain, required_cliques(plan.domain.names))
    cubes = run_aggregation(plan, counts, engine, key, reporter, **options)
    with reporter.timed("select and measure"):
        planned = "refine" in plan.accountant.plan
        refine = planned and decide_refinement(
            cubes, plan.domain, k, plan.accountant, syn.refine_per_round, syn.refine_rounds
        )
        if planned and not refine:
            reporter.say("refinement would drown in noise at this budget: running plain MST with the whole budget")
        result = run_mst(cubes, plan.domain, k, plan.accountant, reporter.say)
        if refine:
            result = run_refinement(
                cubes, plan.domain, k, plan.accountant, result, rounds=syn.refine_rounds,
                per_round=syn.refine_per_round, max_cells=syn.max_model_cells, progress=reporter.say,
            )
        from dpbeam.task.pairs import STAGE as PAIRS_STAGE

        if PAIRS_STAGE in plan.accountant.plan:  # task.pairs_share: every (column, target) pair, measured once more
            from dpbeam.task.pairs import measure_target_pairs

            result = measure_target_pairs(cubes, plan.domain, k, plan.accountant, plan.spec.task.target, result,
                                          reporter.say, max_cells=syn.max_model_cells)
    del cubes
    manifest = {
        "method": syn.method,
        "engine": engine,
        "spec_name": plan.spec.name,
        "spec_sha256": plan.spec.sha256(),
        "tree": [list(e) for e in result.tree],
        "refined": [list(c) for c in result.refined],
        "diagnostics": plan.diagnostics,
        "library_versions": library_versions(),
        # no timestamp: with the statement's it would time the trusted pass (timing is not protected)
    }
    return MeasurementsArtifact(plan.domain, result.compression, result.measurements, privacy_record(plan), manifest,
                                expansion=result.expansion)


def _measure_aim(plan: JobPlan, engine: str, key: BoundingKey, reporter: Reporter, **options: Any) -> MeasurementsArtifact:
    """The trusted pass of ``method: aim``: count the workload's downward closure, run AIM (:mod:`dpbeam.privacy.aim`)
    with a progress bar over the budget it spends."""
    syn, names = plan.spec.synthesizer, plan.domain.names
    work = aim.workload(syn.workload, names)
    cubes = run_aggregation(plan, MarginalCounts(plan.domain, aim.downward_closure(work, names)), engine, key,
                            reporter, **options)
    with reporter.timed("select and measure"), reporter.stage("AIM rounds (budget spent)", total=1000) as bar:
        bar.set_total(1000, "‰")
        done = [0.0]

        def tick(share: float) -> None:  # advance in thousandths of the budget, a function of the rounds' plan
            before = round(1000 * done[0])
            done[0] = min(1.0, done[0] + share)
            bar(round(1000 * done[0]) - before)

        result = aim.run_aim(cubes, plan.domain, plan.k, plan.accountant, work, max_cells=syn.max_model_cells,
                             max_minutes=syn.max_minutes, progress=reporter.say, tick=tick)
        bar(1000 - round(1000 * done[0]))  # the last round spends the rest: the bar ends full
    del cubes
    manifest = {
        "method": syn.method, "engine": engine, "spec_name": plan.spec.name, "spec_sha256": plan.spec.sha256(),
        "workload": [{"columns": list(c), "weight": w} for c, w in work],
        "diagnostics": plan.diagnostics, "library_versions": library_versions(),
    }
    return MeasurementsArtifact(plan.domain, result.compression, result.measurements, privacy_record(plan), manifest,
                                rounds=result.rounds, expansion=result.expansion)


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
    with reporter.timed("write measurements"):
        artifact.write(spec.output.resolved_measurements_uri, overwrite=spec.output.overwrite)
    task = None
    if spec.task is not None:  # trusted side: DP-SGD on the bounded rows, written beside the measurements
        from dpbeam.task.job import train_task, write_model

        with reporter.timed("train task model"):
            task = train_task(plan, artifact, engine, key or BoundingKey.fresh(), reporter, **options)
            write_model(spec, task)
    out = spec.output
    statement = synthesize(
        artifact,
        spec.output.uri,
        rows=spec.output.rows,
        seed=spec.seed,
        engine=spec.synthesizer.engine,
        iters=spec.synthesizer.iters,
        overwrite=spec.output.overwrite,
        reporter=reporter,
        layout={"max_rows_per_file": out.max_rows_per_file, "row_group_rows": out.row_group_rows,
                "partition_by": out.partition_by},
        task=task,
    )
    table_ref = None
    if out.table is not None:
        table_ref = lake.register_table(out.table, out.uri, statement, out.partition_by, out.uri.rstrip("/") + ".delta")
    if plan.reservation is not None:  # after the table is committed; a failure above leaves the entry spent
        plan.reservation.commit(statement, out.uri, out.resolved_measurements_uri, table_ref)
    reporter.report_timings()
    return statement
