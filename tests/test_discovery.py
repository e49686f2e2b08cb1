"""DP discovery of k, categorical values and numeric bounds: correct at high epsilon, charged to the plan, and
the sensitivity each selection assumes."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpbeam.aggregate import bound_prepared, prepare_with_units
from dpbeam.bounding import BoundingKey
from dpbeam.discovery import K_GRID, DiscoveryStats, DiscoveryTask, RowsPerUnit
from dpbeam.errors import SpecError
from dpbeam.job import discover, plan_job, run_job
from dpbeam.measurements import MeasurementsArtifact
from dpbeam.progress import Reporter
from dpbeam.spec import parse_spec

KEY = BoundingKey(b"d" * 32)


@pytest.fixture
def events(tmp_path):
    """400 users; user i has 1 + (i % 10) rows (so the 0.9-quantile of rows per user is 9); countries: DE, FR, US
    for many users and 'XX' for exactly one user; amounts in [20, 80]; dates in 2023."""
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(400), 1 + np.arange(400) % 10)
    n = len(users)
    country = rng.choice(["DE", "FR", "US"], n)
    country[users == 7] = "XX"
    table = pa.table({
        "user_id": pa.array(users.astype(np.int64)),
        "country": pa.array(country),
        "amount": pa.array(rng.integers(20, 81, n).astype(np.int64)),
        "when": pa.array((np.datetime64("2023-01-01") + rng.integers(0, 365, n).astype("timedelta64[D]"))
                         .astype("datetime64[us]")),
    })
    path = tmp_path / "events.parquet"
    pq.write_table(table, path)
    return str(path)


def _spec(events, tmp_path, eps=40.0, **privacy):
    return parse_spec({
        "source": {"uri": events},
        "privacy": {"unit": {"column": "user_id"}, "epsilon": eps, "delta": 1e-6, "max_rows_per_unit": "auto",
                    "discovery_fraction": 0.5, **privacy},
        "columns": {"country": {"kind": "categorical"}, "amount": {"kind": "integer"},
                    "when": {"kind": "datetime", "bins": 12}},
        "synthesizer": {"method": "mst", "iters": 100},
        "output": {"uri": str(tmp_path / "out")},
    })


def test_discovery_at_high_epsilon(events, tmp_path):
    """At eps = 40 (rho ~ 13.4; an eighth of it per discovery, ~1.7) the histogram noise is sigma ~ 0.5 for k and
    ~ 5.4 rows for bounds (k = 10), against cells of 40+ units and a 1% quantile of ~22 rows, so the answers are the
    exact grid answers; thresholding (sigma ~ 1.7) keeps values with hundreds of users and drops a value with one
    user (threshold ~ 11 for delta/2)."""
    plan = discover(plan_job(_spec(events, tmp_path)), "local", KEY, Reporter())
    true_q = np.quantile(1 + np.arange(400) % 10, 0.9)
    grid_at = K_GRID[np.searchsorted(K_GRID, true_q)]
    assert plan.k == grid_at
    values = set(plan.domain["country"].values)
    assert values == {"DE", "FR", "US"}
    amount = plan.domain["amount"]
    assert 10 <= amount.lower <= 20 and 80 <= amount.upper <= 180
    when = plan.domain["when"]
    start, end = np.datetime64("2023-01-01", "us").astype(np.int64), np.datetime64("2024-01-01", "us").astype(np.int64)
    assert start - 32 * 86400e6 <= when.lower <= start and end - 32 * 86400e6 <= when.upper <= end + 32 * 86400e6
    acc = plan.accountant
    assert acc.spent("discovery") == pytest.approx(acc.allotted("discovery"), rel=1e-9)
    assert 0 < acc.delta_spent() <= acc.delta_reserved


def test_job_with_discovery_spends_exactly_its_budget(events, tmp_path):
    statement = run_job(_spec(events, tmp_path, eps=2.0))
    art = MeasurementsArtifact.read(str(tmp_path / "out.measurements"))
    p = art.privacy
    assert p["max_rows_per_unit_chosen_by_dp"] and p["discovered_columns"] == ["country", "amount", "when"]
    assert p["charged"]["rho"] == pytest.approx(p["rho"], rel=1e-9)
    assert statement["epsilon"] <= 2.0 and statement["delta"] == 1e-6
    k = p["max_rows_per_unit"]
    for c in p["charges"]:
        if c["stage"] != "discovery":
            assert c.get("sensitivity_l2", c.get("sensitivity")) == k


def test_open_domain_needs_a_discovery_budget(events, tmp_path):
    spec = _spec(events, tmp_path).model_dump()
    spec["privacy"].update(discovery_fraction=None, max_rows_per_unit=3)
    with pytest.raises(SpecError, match="discovery_fraction"):
        plan_job(parse_spec(spec))
    spec["privacy"]["max_rows_per_unit"] = "auto"
    with pytest.raises(SpecError, match="discovery_fraction"):
        parse_spec(spec)


def test_granularity_needs_public_bounds(events, tmp_path):
    spec = _spec(events, tmp_path).model_dump()
    spec["columns"]["when"] = {"kind": "datetime", "granularity": "month"}
    with pytest.raises(SpecError, match="granularity"):
        parse_spec(spec)


def test_rows_per_unit_histogram():
    agg = RowsPerUnit()
    batch = pa.record_batch({"x": pa.array(np.zeros(6))})
    units = pa.array([1, 1, 1, 2, 3, 3])
    prepared = prepare_with_units(agg, pa.record_batch({"u": units, "x": batch.column(0)}), "u", KEY)
    hist = agg.partial(bound_prepared(agg, prepared, 1 << 62, KEY))
    assert hist.sum() == 3 and hist[np.searchsorted(K_GRID, 3)] == 1 and hist[np.searchsorted(K_GRID, 2)] == 1


@settings(max_examples=60, deadline=None)
@given(
    base=st.lists(st.tuples(st.integers(0, 6), st.sampled_from("abcde")), max_size=40),
    newcomer=st.lists(st.sampled_from("abcdefg"), min_size=1, max_size=20),
    k=st.integers(1, 4),
)
def test_one_unit_moves_distinct_unit_counts_by_one_on_at_most_k_values(base, newcomer, k):
    """The sensitivity select_values assumes: after bounding, adding a unit adds at most 1 to a value's distinct-unit
    count (L_inf = 1) and touches at most k values (L0 = k)."""
    agg = DiscoveryStats([DiscoveryTask("v", "categorical")])

    def counts(rows):
        if not rows:
            return {}
        batch = pa.record_batch({"u": pa.array([u for u, _ in rows]), "v": pa.array([v for _, v in rows])})
        prepared = prepare_with_units(agg, batch, "u", KEY)
        return agg.partial(bound_prepared(agg, prepared, k, KEY))["v"]

    before = counts(base)
    after = counts(base + [(99, v) for v in newcomer])
    diff = {v: after.get(v, 0) - before.get(v, 0) for v in set(after) | set(before)}
    assert all(0 <= d <= 1 for d in diff.values())
    assert sum(d > 0 for d in diff.values()) <= k


def test_no_value_passes_the_threshold(tmp_path):
    """Every user has a country of their own: no value has enough users to pass thresholding, the column keeps only
    its "other" code, and the synthetic table says "__other__" (never a real, rare value)."""
    n = 300
    pq.write_table(pa.table({"user_id": pa.array(np.arange(n)), "country": pa.array([f"c{i}" for i in range(n)]),
                             "x": pa.array(np.arange(n) % 3)}), tmp_path / "t.parquet")
    spec = parse_spec({
        "source": {"uri": str(tmp_path / "t.parquet")},
        "privacy": {"unit": {"column": "user_id"}, "epsilon": 1.0, "delta": 1e-6, "max_rows_per_unit": 1,
                    "discovery_fraction": 0.3},
        "columns": {"country": {"kind": "categorical"}, "x": {"kind": "integer", "bounds": [0, 2]}},
        "synthesizer": {"method": "mst", "iters": 50},
        "output": {"uri": str(tmp_path / "out"), "rows": 100},
    })
    run_job(spec)
    assert set(pq.read_table(tmp_path / "out").column("country").to_pylist()) == {"__other__"}
