"""Wide tables: the fast junction tree matches mbi's, its edge bounds are sound, and the refinement's candidate filter
builds O(selections) junction trees, not one per candidate."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest

from dpbeam.domain import BinnedDomain, TableDomain
from dpbeam.marginals import count_cliques
from dpbeam.privacy import refine
from dpbeam.privacy.accountant import ZCDPAccountant
from dpbeam.privacy.mst import mst_plan, required_cliques, run_mst
from dpbeam.synth import jtree
from dpbeam.synth.pgm import junction_tree_cells_of


def _random_graph(rng: random.Random, d: int) -> tuple[dict[str, int], list[tuple[str, ...]]]:
    names = [f"c{i}" for i in range(d)]
    sizes = {n: rng.choice([2, 3, 5, 8, 20, 50]) for n in names}
    cliques: list[tuple[str, ...]] = [(n,) for n in names]
    pairs = list(itertools.combinations(names, 2))
    rng.shuffle(pairs)
    if rng.random() < 0.3 and d > 1:  # a spanning tree: mbi eliminates it without fill
        cliques += [(names[i], names[rng.randrange(i)]) for i in range(1, d)]
    else:
        cliques += pairs[: rng.randint(0, len(pairs))]
    if rng.random() < 0.2 and d > 3:
        cliques.append(tuple(rng.sample(names, 3)))
    return sizes, cliques


def test_fast_junction_tree_matches_mbi():
    rng = random.Random(0)
    for _ in range(150):
        sizes, cliques = _random_graph(rng, rng.randint(1, 14))
        assert jtree.max_cells(sizes, cliques) == junction_tree_cells_of(sizes, cliques)


def _mbi_total_cells(sizes: dict[str, int], cliques: list[tuple[str, ...]]) -> int:
    import mbi
    from mbi import junction_tree

    domain = mbi.Domain(list(sizes), list(sizes.values()))
    tree, _ = junction_tree.make_junction_tree(domain, [tuple(c) for c in cliques])
    return sum(domain.size(tuple(c)) for c in tree.nodes)


def test_total_cells_bound_mbis_junction_tree():
    rng = random.Random(2)
    for _ in range(60):
        sizes, cliques = _random_graph(rng, rng.randint(1, 12))
        assert jtree.build(sizes, cliques).total_cells >= _mbi_total_cells(sizes, cliques)


def _best_cells(sizes: dict[str, int], cliques: list[tuple[str, ...]], total: bool = False) -> int:
    """The smallest largest clique (``total``: the smallest sum of the maximal cliques' cells) over every
    elimination order (brute force, small d)."""
    names = list(sizes)
    adj = {n: set() for n in names}
    for c in cliques:
        for a, b in itertools.combinations(c, 2):
            adj[a].add(b)
            adj[b].add(a)
    best = math.inf
    for order in itertools.permutations(names):
        work = {n: set(s) for n, s in adj.items()}
        worst, made = 0, []
        for v in order:
            nb = work.pop(v)
            made.append(frozenset(nb | {v}))
            worst = max(worst, math.prod(sizes[u] for u in nb | {v}))
            for u in nb:
                work[u].discard(v)
                work[u] |= nb - {u}
        if total:
            worst = sum(math.prod(sizes[u] for u in c) for c in made if not any(c < o for o in made))
        best = min(best, worst)
    return best


def test_edge_bounds_are_upper_bounds_and_tight_on_a_path():
    rng = random.Random(1)
    for _ in range(25):
        sizes, cliques = _random_graph(rng, rng.randint(2, 6))
        tree = jtree.build(sizes, cliques)
        bounds = tree.edge_bounds()
        totals = tree.edge_total_bounds()
        names = list(sizes)
        for i, j in itertools.combinations(range(len(names)), 2):
            # no triangulation of the grown graph beats the optimum, so a sound bound is at least the optimum
            best = _best_cells(sizes, cliques + [(names[i], names[j])])
            assert math.exp(bounds[i, j]) >= best * (1 - 1e-9)
            # the same for the cells of all cliques together
            assert totals[i, j] >= _best_cells(sizes, cliques + [(names[i], names[j])], total=True) * (1 - 1e-9)
    # a path a - b - c: adding (a, c) makes the clique {a, b, c}, and the bound says exactly that
    sizes = {"a": 3, "b": 5, "c": 7, "e": 2}
    bounds = jtree.build(sizes, [("a", "b"), ("b", "c"), ("c", "e")]).edge_bounds()
    assert math.exp(bounds[0, 2]) == pytest.approx(3 * 5 * 7)
    assert math.exp(bounds[0, 1]) == pytest.approx(35)  # already covered: the largest clique stays b-c
    # eliminated e, c, b, a (a tree, from column 0): node cliques {c,e} {b,c} {a,b} {a}, 14 + 35 + 15 + 3 = 67 cells;
    # adding (a, c) puts a into {b, c} (+70) or c into {a, b} (+90): the bound takes the cheaper direction
    totals = jtree.build(sizes, [("a", "b"), ("b", "c"), ("c", "e")]).edge_total_bounds()
    assert totals[0, 2] == pytest.approx(67 + 70) and totals[0, 1] == pytest.approx(67)


def _wide(d: int, n: int = 4000, seed: int = 0):
    rng = np.random.default_rng(seed)
    sizes = [int(s) for s in rng.integers(2, 6, d)]
    dom = TableDomain(tuple(BinnedDomain(f"c{i:02d}", "int64", False, edges=tuple(range(s + 1)))
                            for i, s in enumerate(sizes)))
    z = rng.integers(0, 3, n)
    codes = np.stack([(z * (i + 1) + rng.integers(0, 2, n)) % s for i, s in enumerate(sizes)], 1)
    return dom, count_cliques(codes.astype(np.uint8), dom, required_cliques(dom.names))


def test_candidate_filter_builds_o_selections_junction_trees(monkeypatch):
    """30 columns, 2 (d - 1) = 58 selections over ~400 candidates: the old filter built a junction tree per candidate
    per selection (~2e4 builds); now each selection builds one (plus the first)."""
    import mbi.junction_tree as mjt

    dom, cubes = _wide(30)
    acc = ZCDPAccountant(1.0, 1e-9, mst_plan(30, refine=True))
    base = run_mst(cubes, dom, 1, acc)
    mbi_builds = [0]
    real = mjt.make_junction_tree

    def counted(*a, **kw):
        mbi_builds[0] += 1
        return real(*a, **kw)

    monkeypatch.setattr(mjt, "make_junction_tree", counted)
    sizes = {n: int(base.compression[n].max()) + 1 if n in base.compression else dom[n].size for n in dom.names}
    # a total-cells limit 100 cells above MST's own tree: it binds well before the 58 picks
    total_limit = jtree.build(sizes, [tuple(m.clique) for m in base.measurements]).total_cells + 100
    jtree.BUILDS[0] = 0
    per_round = 2 * 29
    result = refine.run_refinement(cubes, dom, 1, acc, base, per_round=per_round, max_cells=200, fit_iters=20,
                                   max_total_cells=total_limit)
    draws = [c for c in acc.charges if c.stage == "refine" and c.mechanism.startswith("exponential")]
    assert 0 < len(draws) <= per_round
    assert jtree.BUILDS[0] <= len(draws) + 2  # one per draw, the first, and the round's model fit (its clique tree)
    # mbi builds its own trees only while fitting and answering the model's marginals: a constant, not per candidate
    assert mbi_builds[0] <= 10
    # the limits are on the model domain (after MST's compression of rare codes)
    assert junction_tree_cells_of(sizes, [tuple(m.clique) for m in result.measurements]) <= 200
    assert _mbi_total_cells(sizes, [tuple(m.clique) for m in result.measurements]) <= total_limit
    assert len(result.refined) > 0
    assert acc.spent("refine") == pytest.approx(acc.allotted("refine"), rel=1e-9)


def test_candidate_set_does_not_read_the_scores(monkeypatch):
    """The filter is free only if it is a function of public sizes and earlier selections: with the draws fixed, two
    score vectors (two neighbouring tables) see the same candidate sets at every draw."""
    names = [f"c{i}" for i in range(8)]
    sizes = dict(zip(names, [2, 3, 4, 5, 2, 3, 4, 5]))
    measured = [(n,) for n in names] + [(names[i], names[i + 1]) for i in range(7)]
    candidates = [c for c in itertools.combinations(names, 2) if c not in measured]
    seen: list[list[list[float]]] = [[], []]

    for run, offset in enumerate((0.0, 1.0)):
        calls = seen[run]

        def fixed_draw(scores, sensitivity, rho):
            calls.append(len(scores))
            return len(scores) // 2, rho

        monkeypatch.setattr(refine, "exponential_mechanism", fixed_draw)
        scores = {c: float(i) + offset * (i % 3) for i, c in enumerate(candidates)}
        acc = ZCDPAccountant(1.0, 1e-9, {"refine": 1.0})
        refine._select(candidates, scores, sizes, measured, 6, 60, 1, 1e-4, acc)
    assert seen[0] == seen[1] and len(seen[0]) == 6


def test_engine_reason_names_the_cost(monkeypatch):
    from dpbeam.measurements import MeasurementsArtifact, NoisyMarginal
    from dpbeam.synth import synthesize

    dom, _ = _wide(6)
    ms = tuple(NoisyMarginal((n,), np.ones(dom[n].size), 1.0, "discrete Gaussian", 0.1) for n in dom.names)
    pair = (dom.names[0], dom.names[1])
    ms += (NoisyMarginal(pair, np.ones((dom[pair[0]].size, dom[pair[1]].size)), 1.0, "discrete Gaussian", 0.1),)
    art = MeasurementsArtifact(dom, {}, ms, {})
    cells = dom[pair[0]].size * dom[pair[1]].size
    engine, reason = synthesize.engine_choice(art, "auto")
    assert engine == "pgm" and f"{cells:,} cells" in reason
    monkeypatch.setattr(synthesize, "PGM_MAX_CELLS", cells - 1)
    engine, reason = synthesize.engine_choice(art, "auto")
    assert engine == "torch" and "beyond" in reason


def test_pair_marginals_on_a_junction_tree_with_cycles(monkeypatch):
    """Every pair's marginal, read off one walk of the calibrated tree per first column, equals mbi's variable
    elimination on a model whose junction tree has 3-column cliques (cycles triangulated) and pairs several cliques
    apart; the walk does one product per clique per first column at most (no per-pair path search)."""
    from dpbeam.measurements import MeasurementsArtifact, NoisyMarginal
    from dpbeam.synth import pgm
    from dpbeam.synth.calibrate import NamedTable

    dom, cubes = _wide(7, seed=3)
    names = dom.names
    edges = [(names[i], names[i + 1]) for i in range(6)] + [(names[0], names[2]), (names[3], names[5])]
    rng = np.random.default_rng(0)
    ms = tuple(NoisyMarginal(c, cubes[c] + rng.normal(0, 5, cubes[c].shape), 5.0, "discrete Gaussian", 0.1)
               for c in [(n,) for n in names] + edges)
    model = pgm.fit(MeasurementsArtifact(dom, {}, ms, {}), iters=100)
    assert max(len(c) for c in model.calibrated[0].nodes) == 3
    products = [0]
    real_times = NamedTable.times

    def counted(self, other):
        products[0] += 1
        return real_times(self, other)

    monkeypatch.setattr(NamedTable, "times", counted)
    pairs = list(itertools.combinations(names, 2))
    fast = model.pair_marginals(pairs)
    assert products[0] <= len({a for a, _ in pairs}) * model.calibrated[0].number_of_nodes()
    for p in pairs:
        np.testing.assert_allclose(fast[p], model.marginal(p), rtol=1e-6, atol=1e-6)


def test_counting_in_row_chunks_matches_one_bincount_per_cube(monkeypatch):
    """The all-pairs pass counts in chunks of rows with reused index buffers; every cube (1-, 2- and 3-way, weighted
    or not) equals a plain bincount over the whole table, whatever the chunk size."""
    import dpbeam.marginals as marginals

    dom, _ = _wide(9, seed=5)
    rng = np.random.default_rng(1)
    codes = np.stack([rng.integers(0, dom[n].size, 1001) for n in dom.names], 1).astype(np.uint8)
    weights = rng.random(1001)
    cliques = [(dom.names[0],)] + list(itertools.combinations(dom.names, 2)) + [tuple(dom.names[2:5])]

    def plain(clique, w):
        idx = [dom.index(c) for c in clique]
        flat = np.ravel_multi_index([codes[:, j].astype(np.int64) for j in idx], [dom[c].size for c in clique])
        return np.bincount(flat, weights=w, minlength=math.prod(dom[c].size for c in clique))

    for chunk_cells in (marginals.CHUNK_CELLS, 9 * 7, 9):  # whole, 7 rows, 1 row at a time
        monkeypatch.setattr(marginals, "CHUNK_CELLS", chunk_cells)
        for w in (None, weights):
            cubes = marginals.count_cliques(codes, dom, cliques, weights=w)
            for c in cliques:
                assert cubes[c].dtype == (np.int64 if w is None else np.float64)
                np.testing.assert_allclose(cubes[c].ravel(), plain(c, w), rtol=1e-12)
                assert cubes[c].shape == tuple(dom[n].size for n in c)


def test_generation_chunks_shrink_with_the_width(monkeypatch, tmp_path):
    """A chunk of generated rows holds at most DEFAULT_CHUNK_CELLS cells: a wide table gets fewer rows per chunk, so
    generation's memory does not grow with the width; every row asked for is still written."""
    from dpbeam.measurements import MeasurementsArtifact, NoisyMarginal
    from dpbeam.synth import generate

    dom, _ = _wide(6)
    ms = tuple(NoisyMarginal((n,), np.ones(dom[n].size), 1.0, "discrete Gaussian", 0.1) for n in dom.names)
    art = MeasurementsArtifact(dom, {}, ms, {"epsilon": 1.0, "delta": 1e-9, "unit": "row"})
    asked: list[int] = []

    class Uniform:
        engine = "test"

        def sample(self, rows: int, seed: int) -> np.ndarray:
            asked.append(rows)
            rng = np.random.default_rng(seed)
            return np.stack([rng.integers(0, dom[n].size, rows) for n in dom.names], 1)

    monkeypatch.setattr(generate, "DEFAULT_CHUNK_CELLS", 6 * 40)
    monkeypatch.setattr(generate, "release_statement", lambda artifact, synthesis: dict(synthesis))
    statement = generate.write_synthetic_table(Uniform(), art, str(tmp_path / "out"), 100, 0, {})
    assert asked == [40, 40, 20] and statement["rows"] == 100
