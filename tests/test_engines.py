"""Engine equivalence, the contract of the card: with noise off, local, Beam and Spark keep the same bounded rows and
count the same exact cubes on the same input."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import small_spec
from fresh_process import run_fresh
from dpbeam.aggregate import BoundedCodes, MarginalCounts
from dpbeam.bounding import BoundingKey
from dpbeam.job import engine_module, plan_job
from dpbeam.marginals import all_cliques
from dpbeam.spec import parse_spec

KEY = BoundingKey(b"equivalence-test-key-0123456789a")


def engine_options(name: str, request) -> dict:
    if name == "spark":
        return {"spark": request.getfixturevalue("spark")}
    if name == "beam":
        return {"runner": "FnApiRunner"}
    return {}


def _plan(source: str, tmp_path, **privacy):
    return plan_job(parse_spec(small_spec(source, str(tmp_path / "out"), **privacy)), check_outputs=False)


def _run(engine: str, plan, aggregation, request):
    module = engine_module(engine)
    return module.run_aggregation(
        plan.source, aggregation, plan.unit_column, plan.spec.privacy.k, KEY, **engine_options(engine, request)
    )


def test_local_bounding_is_independent_of_bucketing(units_dir, tmp_path):
    """The local engine bounds bucket by bucket; the result equals bounding the whole table at once."""
    from dpbeam.aggregate import bound_prepared, prepare_with_units
    import pyarrow as pa

    plan = _plan(units_dir, tmp_path, unit={"column": "user_id"}, max_rows_per_unit=3)
    agg = BoundedCodes(plan.domain)
    local = _run("local", plan, agg, None)
    whole = pa.Table.from_batches(list(plan.source.batches(agg.columns + ["user_id"]))).combine_chunks().to_batches()[0]
    direct = agg.merge(agg.zero(), agg.partial(bound_prepared(agg, prepare_with_units(agg, whole, "user_id", KEY), 3, KEY)))
    np.testing.assert_array_equal(local, direct)
    assert len(local) <= 3 * 200


@pytest.mark.parametrize("engine", ["beam", "spark"])
@pytest.mark.parametrize("unit", [None, "user_id"])
def test_engines_agree_with_local(engine, unit, units_dir, tmp_path, request):
    privacy = {"unit": {"column": unit}, "max_rows_per_unit": 3} if unit else {}
    plan = _plan(units_dir, tmp_path, **privacy)
    rows = BoundedCodes(plan.domain)
    np.testing.assert_array_equal(_run(engine, plan, rows, request), _run("local", plan, rows, request))
    cliques = all_cliques(plan.domain.names, 1) + all_cliques(plan.domain.names, 2)
    counts = MarginalCounts(plan.domain, cliques)
    got, want = _run(engine, plan, counts, request), _run("local", plan, counts, request)
    assert set(got) == set(want)
    for c in cliques:
        np.testing.assert_array_equal(got[c], want[c])


# Runs in a child process (tests/fresh_process.py): the noise switch is sticky, and a process that used it can
# release nothing afterwards. The child measures with noise off and saves the released 1-way values; the parent
# compares them with the exact counts of the bounded table.
_NOISELESS_MEASURE = """
import sys
import numpy as np
from conftest import small_spec
from dpbeam.bounding import BoundingKey
from dpbeam.job import measure, plan_job
from dpbeam.privacy.noise import noise_disabled_for_tests
from dpbeam.spec import parse_spec

units_dir, out, engine, key, dest = sys.argv[1:6]
spec = parse_spec(small_spec(units_dir, out, unit={"column": "user_id"}, max_rows_per_unit=2))
plan = plan_job(spec, check_outputs=False)
options = {"beam": {"runner": "FnApiRunner"}, "spark": {"master": "local[2]"}}.get(engine, {})
with noise_disabled_for_tests():
    artifact = measure(plan, engine, key=BoundingKey(key.encode()), **options)
assert artifact.privacy["noise_disabled_for_tests"] is True and "epsilon" not in artifact.privacy
one_way = {"|".join(m.clique): m.values for m in artifact.measurements if len(m.clique) == 1 and m.weights is None}
np.savez(dest, **one_way)
"""


@pytest.mark.parametrize("engine", ["local", "beam", "spark"])
def test_noiseless_measurements_identical_across_engines(engine, units_dir, tmp_path, request):
    """Through the whole measure step (MST's 1-way stage with noise switched off by the test-only hook, in a child
    process), every engine releases the same 1-way values: the exact counts of the same bounded table."""
    if engine == "spark":
        pytest.importorskip("pyspark")
    plan = _plan(units_dir, tmp_path, unit={"column": "user_id"}, max_rows_per_unit=2)
    dest = tmp_path / "one_way.npz"
    run_fresh(_NOISELESS_MEASURE, units_dir, str(tmp_path / "out"), engine, KEY.secret.decode(), str(dest))
    released = dict(np.load(dest))
    assert released, "the noiseless run released no uncompressed 1-way marginal"
    one_way = [tuple(c.split("|")) for c in released]
    bounded = _run("local", plan, MarginalCounts(plan.domain, one_way), request)
    for c in one_way:
        np.testing.assert_array_equal(released["|".join(c)], bounded[c])


@pytest.mark.parametrize("engine", ["beam", "spark"])
def test_discovery_statistics_agree_with_local(engine, units_dir, tmp_path, request):
    """The discovery passes (rows per unit with no bounding; values and grid histograms after bounding) are
    aggregations like any other: every engine must return the same exact statistics."""
    from dpbeam.discovery import DiscoveryStats, DiscoveryTask, RowsPerUnit
    from dpbeam.job import UNBOUNDED

    plan = _plan(units_dir, tmp_path, unit={"column": "user_id"}, max_rows_per_unit=3)
    module = engine_module(engine)
    options = engine_options(engine, request)
    rows = RowsPerUnit()
    got = module.run_aggregation(plan.source, rows, "user_id", UNBOUNDED, KEY, **options)
    np.testing.assert_array_equal(
        got, engine_module("local").run_aggregation(plan.source, rows, "user_id", UNBOUNDED, KEY)
    )
    tasks = [DiscoveryTask("color", "categorical"), DiscoveryTask("age", "integer"), DiscoveryTask("day", "datetime"),
             DiscoveryTask("score", "float")]
    stats = DiscoveryStats(tasks)
    got = module.run_aggregation(plan.source, stats, "user_id", 3, KEY, **options)
    want = engine_module("local").run_aggregation(plan.source, stats, "user_id", 3, KEY)
    assert got["color"] == want["color"]
    for c in ("age", "day", "score"):
        np.testing.assert_array_equal(got[c], want[c])
    # the per-unit sample of the fine (quantile) pass: bound m = 1, fine grids over public ranges
    from dpbeam.discovery import FineGrid

    fine = DiscoveryStats(tasks, fine={"age": FineGrid.over("integer", 18, 79), "score": FineGrid.over("float", 0, 1),
                                       "day": FineGrid.over("datetime", 1.7e15, 1.72e15)})
    got = module.run_aggregation(plan.source, fine, "user_id", 1, KEY, **options)
    want = engine_module("local").run_aggregation(plan.source, fine, "user_id", 1, KEY)
    assert set(got) == {"age", "score", "day"}
    for c in got:
        np.testing.assert_array_equal(got[c], want[c])
