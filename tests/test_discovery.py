"""DP discovery of k, categorical values and numeric bounds: correct at high epsilon, charged to the plan, and
the sensitivity each selection assumes."""

from __future__ import annotations

import math
import re

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
    """At eps = 40 (rho ~ 13.4; half of it for discovery, split over 4.5 shares: ~1.5 each) the k histogram has noise
    sigma ~ 0.6 against cells of 40 units; value counts (m = 1 row per unit) have sigma ~ 0.6 and thresholding keeps
    values with ~130 users each and drops a value with one user (threshold 4 at this sigma and delta); the bins'
    quantile tree has sigma ~ 1.9 per node (cut-off ~ 7.5) against ~400 sampled values over 61 integers (~6.5 a value), so a
    walk resolves down to nodes of about two values and the 1% / 99% quantiles (20-21 and 79-80) land within three
    values of the truth."""
    plan = discover(plan_job(_spec(events, tmp_path)), "local", KEY, Reporter())
    acc = plan.accountant
    true_q = np.quantile(1 + np.arange(400) % 10, 0.9)
    grid_at = K_GRID[np.searchsorted(K_GRID, true_q)]
    # k for accuracy never exceeds the 0.9-quantile, and here keeps most rows (400 units is enough for k near it)
    assert 5 <= plan.k <= grid_at and plan.expected_rows_kept >= 0.8
    values = set(plan.domain["country"].values)
    assert values == {"DE", "FR", "US"}
    amount = plan.domain["amount"]
    # DISCOVERED_BINS (32) asked for over ~60 integers that the tree resolves to about two a node: edges may
    # coincide and merge, never more than asked
    assert 17 <= amount.lower <= 24 and 76 <= amount.upper <= 83 and 20 <= amount.n_values <= 32
    when = plan.domain["when"]
    start, end = np.datetime64("2023-01-01", "us").astype(np.int64), np.datetime64("2024-01-01", "us").astype(np.int64)
    day = 86400e6
    # the outer edges never leave the year (the end slack keeps the walks out of the false mass beyond the data)
    assert start <= when.lower and when.upper <= end + day
    # inside the year, bound the edges' ranks by the noise: the walk aims at rank q = 0.01 + sigma / N (N = 400
    # sampled values, one a unit) and its answer's rank errs by the splits' noise, sd <= sigma sqrt(D / 2) values
    # (D levels, sigma / sqrt(2) a split), plus the sample's binomial sd sqrt(N q) against the table's ranks;
    # 4.5 sd (two-sided tail ~ 7e-6) allows the tail. Measured, 200 runs: the lower edge 1.3-10.6 days into the year
    # (a fixed 10-day bound failed 1 run in 100).
    (tree,) = [c.detail for c in acc.charges if c.detail.get("clique") == ["when"] and "bins" in c.detail]
    n, depth = 400, round(tree["sensitivity_l2"] ** 2)
    q = 0.01 + tree["sigma"] / n
    slack = 4.5 * math.sqrt(tree["sigma"] ** 2 * depth / 2 + n * q) / n
    table = pq.read_table(events).column("when").cast(pa.int64()).to_numpy()
    assert np.mean(table < when.lower) <= q + slack and np.mean(table >= when.upper) <= q + slack
    assert when.n_values == 12  # bins: 12 in the spec
    assert acc.spent("discovery") == pytest.approx(acc.allotted("discovery"), rel=1e-9)
    assert 0 < acc.delta_spent() <= acc.delta_reserved


def test_bins_that_clamp_much_of_a_column_are_warned(events, tmp_path):
    """The outer edges leave out 0.01 plus the tree noise's share of the count (sigma / total, at most 0.1) at each
    end. At eps = 40 that is ~0.015 for 400 values (sigma ~ 2): no warning. At eps = 1 the trees' sigma is 39 (amount)
    and 47 (when), about a tenth of the 400 values, so ~10% are clamped at each end: one warning names the numeric
    columns and says to give their bounds. (amount's tree stays informative: its noisy total, sd 39 sqrt 2 = 55, would
    have to fall 4.3 sd to reach the 3 sigma sqrt 2 = 166 it needs.)"""
    quiet = discover(plan_job(_spec(events, tmp_path)), "local", KEY, Reporter())
    assert not any("clamped" in n for n in quiet.diagnostics)
    loud = discover(plan_job(_spec(events, tmp_path, eps=1.0)), "local", KEY, Reporter())
    (note,) = [n for n in loud.diagnostics if "clamped" in n]
    # `when` (a year of dates over 400 values) may instead be warned that its range did not stand out at all
    assert note.startswith(("columns amount, when: at this budget their DP bins begin and end about ",
                            "column amount: at this budget its DP bins begin and end about "))
    assert sum("when" in n for n in loud.diagnostics) == 1
    shares = re.findall(r"(\d+)%", note.split(" of the values")[0])
    assert shares and all(int(x) >= 5 for x in shares)
    assert "bounds" in note and "discovery_fraction" in note


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
        "columns": {"country": {"kind": "categorical", "nullable": False}, "x": {"kind": "integer", "bounds": [0, 2]}},
        "synthesizer": {"method": "mst", "iters": 50},
        "output": {"uri": str(tmp_path / "out"), "rows": 100},
    })
    run_job(spec)
    assert set(pq.read_table(tmp_path / "out").column("country").to_pylist()) == {"__other__"}


# ---------------------------------------------------------------------------------------------------------------------
# Issue 8: bins at DP quantiles, per-unit sampling, k chosen for accuracy, and saying when discovery failed


def _heavy_tailed_rows(units: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.minimum(np.ceil(rng.pareto(0.8, units) * 5), 575).astype(np.int64)


def _rows_histogram(rows: np.ndarray) -> np.ndarray:
    cell = np.minimum(np.searchsorted(K_GRID, rows, side="left"), len(K_GRID) - 1)
    return np.bincount(cell, minlength=len(K_GRID)).astype(np.int64)


@pytest.mark.parametrize("units", [300, 4000, 1_000_000])
def test_k_rule_small_with_few_units_and_the_quantile_with_many(units):
    """With sigma = 30 per row on marginals of 256 cells (eps ~ 1 over ten columns), a few thousand heavy-tailed
    units cannot afford more than a handful of rows each: the noise term cells k sigma / R(k) grows with k once most
    units have fewer than k rows. With a million units the noise term vanishes and k is the 0.9-quantile's grid
    value. The histogram release gets rho ~ 150 (sigma ~ 0.06), so the noisy histogram equals the exact one."""
    from dpbeam.discovery import choose_k
    from dpbeam.privacy.accountant import ZCDPAccountant

    rows = _heavy_tailed_rows(units)
    acc = ZCDPAccountant(3000, 1e-6, {"discovery": 1.0})
    k, kept, kept_rows = choose_k(_rows_histogram(rows), 0.9, acc, acc.rho, sigma_per_row=30.0, cells=256)
    q_cell = K_GRID[np.searchsorted(K_GRID, np.quantile(rows, 0.9))]
    if units <= 4000:
        assert k <= 5
    else:
        assert k == q_cell
    # the histogram knows rows per unit only to its grid cell (cells are 21% wide: 61 steps over five decades), so
    # the estimate of rows kept is within about half a cell's width of the truth
    assert kept == pytest.approx(np.minimum(rows, k).sum() / rows.sum(), rel=0.11)
    assert kept_rows == pytest.approx(np.minimum(rows, k).sum(), rel=0.11)


def test_tree_quantiles_error_within_the_noise_bound():
    """One release of a 10-level tree over 1024 leaves at rho = 0.01 with m = 1: sigma = sqrt(10) / sqrt(0.02) ~ 22.4
    per node. Each level of the descent moves the answer's rank by at most the noise of the two children and the
    renormalisation by their noisy sum, 4 |Z| <= 4 * 5 sigma with probability 1 - 6e-7 per node (every node of
    nine walks: < 1e-4 in all), so the rank error is at most 20 sigma D ~ 4,500 of 1,000,000 samples (0.45%), plus
    the mass of one leaf."""
    from dpbeam.discovery import FineGrid, tree_quantiles

    rng = np.random.default_rng(7)
    x = rng.normal(50, 10, 1_000_000)
    grid = FineGrid.over("float", 0.0, 100.0)
    leaves = np.bincount(grid.cells(x), minlength=grid.leaves)
    qs = [0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99]
    cells, spent, sigma, informative = tree_quantiles(leaves, 1.0, 0.01, qs)
    assert informative
    assert sigma == pytest.approx(math.sqrt(10) / math.sqrt(0.02), rel=1e-6) and spent <= 0.01
    cdf = np.cumsum(leaves) / leaves.sum()
    leaf_mass = leaves.max() / leaves.sum()
    for q, c in zip(qs, cells):
        assert abs(cdf[c] - q) <= 20 * sigma * 10 / len(x) + leaf_mass, (q, c)


def test_discovery_statistics_sample_at_most_m_rows_per_unit():
    """Run with bound m, a unit adds at most m values to a histogram and at most m distinct values per column."""
    tasks = [DiscoveryTask("v", "categorical"), DiscoveryTask("x", "float")]
    agg = DiscoveryStats(tasks)
    units = np.repeat(np.arange(20), 30)
    batch = pa.record_batch({"u": pa.array(units), "v": pa.array([f"v{i}" for i in range(len(units))]),
                             "x": pa.array(np.arange(len(units), dtype=np.float64))})
    for m in (1, 3):
        stats = agg.partial(bound_prepared(agg, prepare_with_units(agg, batch, "u", KEY), m, KEY))
        assert sum(stats["v"].values()) == 20 * m and stats["x"].sum() == 20 * m


def test_a_column_that_keeps_no_value_is_reported(tmp_path):
    n = 300
    pq.write_table(pa.table({"user_id": pa.array(np.arange(n)), "dest": pa.array([f"c{i}" for i in range(n)]),
                             "x": pa.array(np.arange(n) % 3)}), tmp_path / "t.parquet")
    spec = parse_spec({
        "source": {"uri": str(tmp_path / "t.parquet")},
        "privacy": {"unit": {"column": "user_id"}, "epsilon": 1.0, "delta": 1e-6, "max_rows_per_unit": 1,
                    "discovery_fraction": 0.3},
        "columns": {"dest": {"kind": "categorical"}, "x": {"kind": "integer", "bounds": [0, 2]}},
        "output": {"uri": str(tmp_path / "out")},
    })
    said = []

    class Listening(Reporter):
        def say(self, message: str) -> None:
            said.append(message)

    plan = discover(plan_job(spec), "local", KEY, Listening())
    (note,) = plan.diagnostics
    assert note.startswith("column dest: no value reached the threshold of about ")
    assert "columns.dest.values" in note and "discovery_fraction" in note
    assert any(s == f"warning: {note}" for s in said)


def test_sparse_values_still_give_a_range():
    """1,000 values spread evenly over 24 cells (42 each) of a 245-cell grid at sigma = 20: no cell passes the cut-off
    sigma sqrt(2 ln(200 * 245)) ~ 4.65 sigma = 93, but aligned groups of 16 cells (672, cut-off 93 * 4 = 372, noise
    80) pass (a failure needs noise below -3.75 sigma_group), so the mass lies within the data's span widened to the
    groups that hold it, and sums to about 1,000 (noise of the 24 + 8 cells: sigma sqrt(32) ~ 113; 5 of that).
    The noise here is numpy's with a fixed seed: the function is post-processing, tested on its own."""
    from dpbeam.discovery import multiresolution_mass

    rng = np.random.default_rng(3)
    start = 100
    counts = np.zeros(245)
    counts[start:start + 24] = 42
    for _ in range(5):
        mass = multiresolution_mass(counts + rng.normal(0, 20, 245), 20.0)
        support = np.flatnonzero(mass)
        assert support.min() >= start - 16 and support.max() < start + 24 + 16
        assert abs(mass.sum() - 1000) <= 5 * 20 * math.sqrt(40)


def test_noise_alone_gives_no_mass():
    """Pure noise on 245 empty cells: no group passes the cut-off (by the Gaussian tail bound at most 0.01 expected
    passes over all groups of all scales), so no false range; fixed seeds, 20 draws."""
    from dpbeam.discovery import multiresolution_mass

    rng = np.random.default_rng(11)
    assert all(multiresolution_mass(rng.normal(0, 20, 245), 20.0).sum() == 0 for _ in range(20))


def test_false_groups_are_bounded_over_the_whole_job():
    """The cut-off counts every range histogram the job reads (``family``: one per numeric column), so the job as a
    whole expects at most 0.01 false groups: on the 34-cell coarse grid a lone 4.6 sigma cell passes the cut-off of
    one histogram (sigma sqrt(2 ln 6,800) ~ 4.2 sigma) and not that of a 55-column job (sqrt(2 ln 374,000) ~ 5.07
    sigma). Before, a 55-column table of loans got a count column's range up to 1e11 from one such group."""
    from dpbeam.discovery import NUMBER_GRID, multiresolution_mass

    n = len(NUMBER_GRID)
    noisy = np.zeros(n)
    noisy[n - 2] = 4.6
    assert multiresolution_mass(noisy, 1.0).sum() == pytest.approx(4.6)
    assert multiresolution_mass(noisy, 1.0, family=55).sum() == 0
    # pure noise, numpy's with a fixed seed: 100 jobs of 55 histograms. The tail bound allows 0.01 false groups a
    # job (1 here; the bound is loose, about 5 times the rate measured); these draws give none, and 5 when each
    # histogram is read on its own (family 1)
    rng = np.random.default_rng(5)
    assert not any(multiresolution_mass(rng.normal(0, 1, n), 1.0, family=55).sum() for _ in range(100 * 55))


def test_tree_keeps_the_mass_of_moderate_nodes():
    """Two clusters: 90% of 20,000 values at leaf 100 and 10% spread over leaves 600-663 of a 1,024-leaf tree, at rho
    = 0.005 (sigma = sqrt(10) / 0.1 ~ 31.6 per node). The small cluster's leaves hold ~31 values each (1 sigma) and
    its level-6 node ~2,000. The old walk zeroed nodes below sigma sqrt(2 ln nodes) ~ 3.9 sigma and split what was
    left, so the leaves' mass was lost level by level. The consistent split keeps it: the 0.95-quantile lands inside
    the small cluster. A walk's rank error is at most a few sigma per level (5 sigma: 160 of 20,000 per level, 10
    levels: 8%), so 0.95 stays within the cluster (90% to 100%)."""
    from dpbeam.discovery import release_tree

    leaves = np.zeros(1024, np.int64)
    leaves[100] = 18_000
    leaves[600:664] = 2_000 // 64 + (np.arange(64) < 2_000 % 64)
    tree = release_tree(leaves, 1.0, 0.005)
    assert tree.informative and tree.sigma == pytest.approx(math.sqrt(10) / math.sqrt(0.01), rel=1e-6)
    assert 600 <= tree.quantile(0.95) < 664
    assert tree.quantile(0.5) == 100
    assert abs(tree.total - 20_000) <= 5 * tree.sigma * math.sqrt(2)


def test_end_quantiles_stay_out_of_the_empty_grid():
    """Values in leaves 400-599 of a 1,024-leaf tree, 5,000 of them (25 a leaf), with noise sigma = 250 per node (the
    budget of one column of a user-level table). The clip at 0 of the consistent split leaves ~0.3 sigma of false
    mass per level beside the data (more in unlucky draws). With the end slack (sigma / total ~ 5%, plus 1%) both
    outer quantiles stay within 100 leaves of the data in ~76% of draws (a simulation of 500 draws gave 0.756); at
    q = 0.01 in fewer than half. 200 draws of numpy noise with a fixed seed (the masses are post-processing, tested
    on their own): at least 65% (3.5 standard deviations below 0.756), and at least 25 points above q = 0.01."""
    from dpbeam.discovery import LOW_Q, tree_levels, tree_masses

    leaves = np.zeros(1024, np.int64)
    leaves[400:600] = 25
    levels = tree_levels(leaves)[1:]
    rng = np.random.default_rng(21)
    inside = {"slack": 0, "plain": 0}
    for _ in range(200):
        tree = tree_masses([lv + rng.normal(0, 250.0, len(lv)) for lv in levels], 250.0)
        for name, q in (("slack", LOW_Q + tree.end_slack()), ("plain", LOW_Q)):
            inside[name] += 300 <= tree.quantile(q) and tree.quantile(1 - q) < 700
    assert inside["slack"] >= 130 and inside["slack"] >= inside["plain"] + 50, inside


@settings(max_examples=40, deadline=None)
@given(leaf=st.lists(st.integers(0, 63), min_size=1, max_size=4))
def test_tree_sensitivity_is_m_sqrt_depth(leaf):
    """The sensitivity release_tree assumes: m values of one unit change the released levels by at most m sqrt(D)
    in L2 (one node per level each; worst case all m in one leaf)."""
    from dpbeam.discovery import tree_levels

    base = np.random.default_rng(0).integers(0, 50, 64)
    after = base + np.bincount(leaf, minlength=64)
    diff = np.concatenate([a - b for a, b in zip(tree_levels(after)[1:], tree_levels(base)[1:])])
    assert np.linalg.norm(diff) <= len(leaf) * math.sqrt(6) + 1e-9


def test_point_mass_gets_a_bin_of_its_own():
    """Hours a week: 50% of 20,000 values at 40, the rest spread over 0-80; 8 bins at rho = 0.05 (sigma ~ 12 per node
    of a 7-level tree: tiny against 10,000). 40 answers several quantiles, holds more than a bin's share, and so is
    a bin alone: [40, 41)."""
    from dpbeam.discovery import FineGrid, select_edges
    from dpbeam.privacy.accountant import ZCDPAccountant

    rng = np.random.default_rng(5)
    x = np.concatenate([np.full(10_000, 40), rng.integers(0, 81, 10_000)])
    grid = FineGrid.over("integer", 0, 80)
    assert grid.width == 1.0 and grid.leaves == 128
    acc = ZCDPAccountant(10, 1e-6, {"discovery": 1.0})
    edges, informative, _, _ = select_edges(np.bincount(grid.cells(x), minlength=grid.leaves), grid, "integer", 8, 1,
                                         acc, 0.05, "hours")
    assert informative and 40 in edges and 41 in edges


def test_bins_for_noise():
    """b^2 k sigma sqrt(2/pi) / (2 rows) <= NOISE_TVD = 1: with rows = 4,711, k = 1, sigma = 90 (a user-level table of
    twelve columns at eps = 0.5), b^2 <= 2 * 4711 / (90 * 0.798) = 131, so 11 bins; with a quarter of the rows, 5;
    never above the spec's number, never below 2."""
    from dpbeam.discovery import bins_for_noise

    assert bins_for_noise(4711, 1, 90.0, 16) == 11
    assert bins_for_noise(4711 / 4, 1, 90.0, 16) == 5
    assert bins_for_noise(4711 * 100, 1, 90.0, 16) == 16
    assert bins_for_noise(10, 1, 90.0, 16) == 2
    assert bins_for_noise(4711 * 15, 15, 90.0, 16) == 11  # k rows from each unit, k times the noise


def test_a_range_lost_in_the_noise_is_reported(tmp_path):
    """40 users, values spread from 1 to 10^6, at eps = 0.5 with discovery 0.1 (rho 6.6e-3; the range release gets a
    third of the discovery share: sigma ~ 48 per coarse cell against ~6 values a cell and 40 in all). Nothing stands
    out at any resolution: a cell needs sigma sqrt(2 ln(200 * 34)) ~ 200, the whole grid's sum ~ 1,150 (a 20-sigma
    miss for 40 values). The column's note says its range is a guess and what to change.

    The noise alone passes the cut-off somewhere in ~1e-3 of releases (by design: multiresolution_mass expects at
    most 0.01 false passes over all groups; measured, numpy noise at this sigma on the test's 34 coarse cells: 94
    in 100,000), and then the range is not lost. Discovery is rerun once when that happens: the two releases are
    independent, so both pass falsely with probability ~1e-6, while a note that is never written fails both."""
    n = 40
    pq.write_table(pa.table({"user_id": pa.array(np.arange(n)),
                             "x": pa.array(np.geomspace(1, 1e6, n))}), tmp_path / "t.parquet")
    spec = parse_spec({
        "source": {"uri": str(tmp_path / "t.parquet")},
        "privacy": {"unit": {"column": "user_id"}, "epsilon": 0.5, "delta": 1e-6, "max_rows_per_unit": 1,
                    "discovery_fraction": 0.1},
        "columns": {"x": {"kind": "float"}},
        "output": {"uri": str(tmp_path / "out")},
    })
    lost = "column x: its values did not stand out of the discovery noise at this budget at any "
    for _ in range(2):
        plan = discover(plan_job(spec), "local", KEY, Reporter())
        if [n for n in plan.diagnostics if n.startswith(lost)]:
            break
    (note,) = plan.diagnostics
    assert note.startswith(lost)
    assert "columns.x.bounds" in note and "discovery_fraction" in note


def test_tree_depth_grows_with_the_noisy_count():
    """TREE_DEPTH up to 16 parts of the noise, one level per doubling beyond, at most MAX_DEPTH: at rho = 1e-4 per
    column (sigma_1 = 70.7), 4,711 values make 67 parts (3 levels more: 16 * 2^3 >= 67), 100,000 values 1,414 parts
    (capped), a
    thousand values none."""
    from dpbeam.discovery import MAX_DEPTH, TREE_DEPTH, tree_depth

    assert tree_depth(4711, 1, 1e-4) == TREE_DEPTH + 3
    assert tree_depth(100_000, 1, 1e-4) == MAX_DEPTH
    assert tree_depth(1000, 1, 1e-4) == TREE_DEPTH
    assert tree_depth(0, 1, 1e-4) == TREE_DEPTH


def test_a_float_point_mass_decodes_to_its_value():
    """Rainfall: 60% of 20,000 values exactly 0, the rest spread over (0, 1.2]; 8 bins at rho = 0.05. The leaf that
    holds 0 answers several quantiles and holds more than a bin's share: it becomes a point bin, and every row
    decoded from it is exactly 0.0 (the roundest number in the leaf), never a tiny negative or positive number."""
    from dpbeam.discovery import FineGrid, select_edges
    from dpbeam.domain import BinnedDomain
    from dpbeam.encode import decode_column
    from dpbeam.privacy.accountant import ZCDPAccountant

    rng = np.random.default_rng(6)
    x = np.concatenate([np.zeros(12_000), rng.uniform(0, 1.2, 8_000)])
    grid = FineGrid.over("float", -0.05, 1.25)
    acc = ZCDPAccountant(10, 1e-6, {"discovery": 1.0})
    edges, informative, points, _ = select_edges(np.bincount(grid.cells(x), minlength=grid.leaves), grid, "float", 8, 1,
                                              acc, 0.05, "precip")
    assert informative and len(points) == 1
    p = points[0]
    assert edges[p] <= 0.0 < edges[p + 1] and edges[p + 1] - edges[p] == pytest.approx(grid.width)
    col = BinnedDomain("precip", "double", False, edges=tuple(edges), binned_kind="float", points=points)
    codes = np.full(1000, p)
    np.testing.assert_array_equal(decode_column(codes, col, np.random.default_rng(0)).to_numpy(), 0.0)
    # every other bin still decodes uniformly within itself
    other = (p + 1) % (len(edges) - 1)
    vals = decode_column(np.full(1000, other), col, np.random.default_rng(0)).to_numpy()
    assert len(np.unique(vals)) > 900 and edges[other] <= vals.min() and vals.max() <= edges[other + 1]
    # the points survive the domain's JSON
    from dpbeam.domain import column_domain_from_json

    assert column_domain_from_json(col.to_json()).points == points


@pytest.mark.parametrize("kind", ["float", "integer"])
def test_a_range_at_zero_never_reaches_below_it(kind):
    """0 is a coarse cell of its own: fees that are 0 for 60% of 10,000 loans and up to 500 for the rest get a range
    from exactly 0 (the cell (-0.001, 0] gave -0.001, and bins of tiny negative fees); a column that is 0 in every
    row gets the point 0. rho = 0.05 a release: sigma ~ 3 per coarse cell against thousands of values, so the 0.01-
    and 0.99-quantiles' cells are the data's (a cell of 0 needs 6,000 +- 3 noise to fall below 1% of the total)."""
    from dpbeam.discovery import DiscoveryStats, DiscoveryTask, select_edges, select_range
    from dpbeam.domain import BinnedDomain
    from dpbeam.encode import decode_column
    from dpbeam.privacy.accountant import ZCDPAccountant

    rng = np.random.default_rng(8)
    fees = np.where(rng.random(10_000) < 0.6, 0, rng.integers(1, 501, 10_000))
    acc = ZCDPAccountant(10, 1e-6, {"discovery": 1.0})
    for x, hi in ((fees, 1000.0), (np.zeros(10_000, np.int64), None)):
        arr = pa.array(x if kind == "integer" else x.astype(np.float64))
        stats = DiscoveryStats([DiscoveryTask("fee", kind)]).partial(pa.RecordBatch.from_arrays([arr], ["fee"]))
        grid, total = select_range(stats["fee"], kind, 1, acc, 0.05, "fee")
        assert grid.lo == 0.0 and abs(total - 10_000) < 100
        upper = grid.edge(grid.leaves)
        if hi is not None:
            assert upper == hi if kind == "float" else 500 <= upper <= 1024
        else:  # the point 0: one integer, or one float point bin that decodes to exactly 0.0
            assert upper == 2.0 if kind == "integer" else grid.point
            leaves = DiscoveryStats([DiscoveryTask("fee", kind)], fine={"fee": grid}).partial(
                pa.RecordBatch.from_arrays([arr], ["fee"]))["fee"]
            edges, _, points, _ = select_edges(leaves, grid, kind, 8, 1, acc, 0.05, "fee")
            assert edges[0] == 0 and len(edges) == 2 and points == ((0,) if kind == "float" else ())
            if kind == "float":
                col = BinnedDomain("fee", "double", False, edges=tuple(edges), binned_kind="float", points=points)
                np.testing.assert_array_equal(
                    decode_column(np.zeros(100, np.int64), col, np.random.default_rng(0)).to_numpy(), 0.0)


def test_roundest():
    from dpbeam.domain import roundest

    assert roundest(-1.34e-6, 1.74e-6) == 0.0
    assert roundest(9.9997, 10.0) == pytest.approx(9.9997)  # 10 is the open upper edge
    assert roundest(9.9997, 10.0, closed=True) == 10.0
    assert roundest(39.5, 40.2) == 40.0
    assert roundest(1003.85, 1006.87) == 1004.0
    assert roundest(0.123, 0.1234) == pytest.approx(0.123)


def test_float_edges_snap_to_the_values_recorded():
    """Delays in whole minutes, stored as floats (most of them between -10 and 30, a long tail to 300): every edge
    that is not a point bin's sits on a whole minute, the roundest number of the grid cell its quantile fell in or, when
    the noisy walk answered a cell that holds no whole minute (a cell is 0.32 wide), of that cell and its neighbours,
    so each recorded value lies wholly on one side of it. rho = 0.05 on 20,000 values: the tree's noise is tiny, but
    the walk still lands in an empty cell in about a fifth of runs (measured over 200), which this test caught in CI."""
    from dpbeam.discovery import FineGrid, select_edges
    from dpbeam.privacy.accountant import ZCDPAccountant

    rng = np.random.default_rng(7)
    x = np.round(np.concatenate([rng.normal(5, 8, 16_000), rng.exponential(60, 4_000)])).clip(-30, 300)
    grid = FineGrid.over("float", -30.0, 300.0)
    assert grid.width < 0.5  # a cell is narrower than the step between recorded values
    acc = ZCDPAccountant(10, 1e-6, {"discovery": 1.0})
    edges, informative, points, _ = select_edges(np.bincount(grid.cells(x), minlength=grid.leaves), grid, "float", 16, 1,
                                              acc, 0.05, "dep_delay")
    point_edges = {edges[p] for p in points} | {edges[p + 1] for p in points}
    inner = [e for e in edges[1:-1] if e not in point_edges]
    assert informative and len(inner) >= 8
    assert all(e == round(e) for e in inner), inner
