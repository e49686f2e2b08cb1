"""Junction trees of measured cliques, fast: the largest clique Private-PGM will hold, and cheap bounds for one more
edge.

Private-PGM (mbi) builds its junction tree by triangulating the cliques' graph along an elimination order: the graph
itself when it is a tree, else mbi's greedy order (eliminate the variable whose neighbourhood has the fewest cells,
ties to the earliest column). :func:`build` runs the same greedy order on adjacency sets, in O(d^2) set operations
instead of mbi's O(d^2 x cliques) scans and networkx clique search, and returns the same largest-clique size (a test
compares them on random graphs). No data is read: only public domain sizes and the list of measured cliques.

:meth:`JunctionTree.edge_bounds` bounds, for every pair of columns at once, the largest clique after adding that pair
as an edge, without a rebuild: in a junction tree, adding edge (a, b) can be done by adding a to every clique on the
path from the cliques holding a to the nearest clique holding b (or b along the same path the other way); that keeps
the running-intersection property, so the result is a junction tree of a triangulation of the new graph, and its
largest clique bounds what any triangulation needs. Cost: two passes over the d-node tree, each step a numpy
operation over the d columns: O(d^2) work in O(d) numpy calls. :meth:`JunctionTree.edge_total_bounds` does the same
for the cells of all cliques together (what one inference pass of the fit touches), summing along the same paths.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

# Build counter (tests guard how many junction trees a job builds).
BUILDS = [0]


@dataclass(frozen=True)
class JunctionTree:
    """An elimination tree: node i is the clique ``{v_i} + its later neighbours`` of the i-th eliminated variable;
    its parent is the node of the first of those neighbours to be eliminated (-1 for a root). Node cliques need not
    be maximal; the running-intersection property holds all the same."""

    names: tuple[str, ...]
    sizes: np.ndarray  # [d] int, per column
    order: tuple[int, ...]  # column index eliminated at node i
    cliques: tuple[frozenset[int], ...]  # per node
    parent: np.ndarray  # [d] int, -1 for roots
    log_cells: np.ndarray  # [d] float, log of each node's cells

    @property
    def max_cells(self) -> int:
        return max((math.prod(int(self.sizes[j]) for j in c) for c in self.cliques), default=1)

    def holds(self) -> np.ndarray:
        """[nodes, columns] bool: node i's clique holds column j."""
        h = np.zeros((len(self.cliques), len(self.names)), dtype=bool)
        for i, c in enumerate(self.cliques):
            h[i, list(c)] = True
        return h

    @property
    def total_cells(self) -> int:
        """Cells of every node clique together: an upper bound on the cells of mbi's junction tree (its cliques are
        the maximal node cliques), which is what one inference pass of the fit touches."""
        return int(sum(math.prod(int(self.sizes[j]) for j in c) for c in self.cliques))

    def edge_bounds(self) -> np.ndarray:
        """[d, d] float: for each pair (a, b), an upper bound on the log-cells of the largest clique once edge (a, b)
        is added (the current largest clique when a clique already holds both). O(d^2) work in O(d) numpy calls.

        A virtual root with an empty clique joins the roots of a forest, so pairs in different components are
        bounded as well (adding a to the path through it)."""
        log_sizes = np.log(self.sizes.astype(np.float64))
        current = float(self.log_cells.max()) if len(self.cliques) else 0.0
        # nearest[a, b]: the largest log-cells on the path from a's cliques to b's nearest clique
        nearest = self._along_paths(np.append(self.log_cells, 0.0), np.maximum)
        via_a = nearest + log_sizes[:, None]  # adding a along that path
        bound = np.minimum(via_a, via_a.T)
        return np.where(self._covered(), current, np.maximum(bound, current))

    def edge_total_bounds(self) -> np.ndarray:
        """[d, d] float: for each pair (a, b), an upper bound on :attr:`total_cells` once edge (a, b) is added
        (unchanged when a clique already holds both): adding a to every clique on the path from a's cliques to b's
        nearest clique multiplies each of their cells by size(a), so the total grows by (size(a) - 1) times the cells
        on that path; the smaller of the two directions is kept. O(d^2) work in O(d) numpy calls."""
        current = float(self.total_cells)
        cells = np.append(np.exp(self.log_cells), 1.0)  # the virtual root's empty clique has one cell
        along = self._along_paths(cells, np.add)  # cells on the path from a's cliques to b's nearest clique
        via_a = current + (self.sizes.astype(np.float64)[:, None] - 1.0) * along
        return np.where(self._covered(), current, np.minimum(via_a, via_a.T))

    def _covered(self) -> np.ndarray:
        holds = self.holds().astype(np.int32)
        return (holds.T @ holds) > 0

    def _along_paths(self, values: np.ndarray, combine) -> np.ndarray:
        """[d, d]: ``values`` (one per node, the virtual root last) combined (``np.maximum`` or ``np.add``) along the
        path from the cliques holding column a (excluded) to the nearest clique holding column b (included), at
        [a, b]; 0 where a clique holds both.

        A virtual root (node n, empty clique) joins the roots of a forest. A node's parent comes after it (it is
        eliminated later), so one pass up gathers paths that arrive from below, and one pass down those that arrive
        from above; the cliques holding a are connected, so a path from them arrives from one side only."""
        d = len(self.names)
        n = len(self.cliques)
        holds = np.vstack([self.holds(), np.zeros((1, d), dtype=bool)])
        parent = np.where(self.parent < 0, n, self.parent)
        up = np.full((n + 1, d), np.inf)
        from_below = np.full((n + 1, d), np.inf)
        for v in range(n + 1):
            up[v] = np.where(holds[v], 0.0, combine(values[v], from_below[v]))
            if v < n:
                np.minimum(from_below[parent[v]], up[v], out=from_below[parent[v]])
        reach = up
        for v in range(n - 1, -1, -1):
            reach[v] = np.where(np.isfinite(up[v]), up[v], combine(values[v], reach[parent[v]]))
        nearest = np.empty((d, d))
        for b in range(d):
            nearest[:, b] = reach[holds[:, b]].min(axis=0)
        return nearest


def _is_tree(d: int, adj: list[set[int]]) -> bool:
    edges = sum(len(s) for s in adj) // 2
    if edges == 0 or edges != d - 1:
        return False
    seen, stack = {0}, [0]
    while stack:
        for v in adj[stack.pop()]:
            if v not in seen:
                seen.add(v)
                stack.append(v)
    return len(seen) == d


def build(sizes: Mapping[str, int], cliques: Sequence[Sequence[str]]) -> JunctionTree:
    """The junction tree mbi would triangulate for these cliques (same elimination rule), as an elimination tree.

    O(d^2 + sum of fill) set operations; counted in ``BUILDS``."""
    BUILDS[0] += 1
    names = tuple(sizes)
    col = {n: j for j, n in enumerate(names)}
    d = len(names)
    size = np.asarray([int(sizes[n]) for n in names], dtype=np.int64)
    log_size = np.log(size.astype(np.float64))
    adj: list[set[int]] = [set() for _ in range(d)]
    covered = np.zeros(d, dtype=bool)
    for c in cliques:
        idx = [col[n] for n in c]
        covered[idx] = True
        for i in idx:
            adj[i].update(j for j in idx if j != i)

    if _is_tree(d, adj):
        order = _tree_order(d, adj)
    else:
        order = _greedy_order(d, adj, covered, log_size)
    position = np.empty(d, dtype=np.int64)
    position[order] = np.arange(d)
    # eliminate in order, recording each clique and its parent
    work = [set(s) for s in adj]
    node_cliques: list[frozenset[int]] = []
    parent = np.full(d, -1, dtype=np.int64)
    for i, v in enumerate(order):
        nb = work[v]
        node_cliques.append(frozenset(nb | {v}))
        if nb:
            parent[i] = int(position[min(nb, key=lambda u: position[u])])
        for u in nb:
            work[u].discard(v)
            work[u].update(nb - {u})
        work[v] = set()
    log_cells = np.asarray([float(log_size[list(c)].sum()) for c in node_cliques])
    return JunctionTree(names, size, tuple(order), tuple(node_cliques), parent, log_cells)


def _tree_order(d: int, adj: list[set[int]]) -> list[int]:
    """A post-order of a tree graph: every variable is eliminated after its children, so no fill."""
    order: list[int] = []
    seen = {0}
    stack: list[tuple[int, bool]] = [(0, False)]
    while stack:
        v, done = stack.pop()
        if done:
            order.append(v)
            continue
        stack.append((v, True))
        for u in adj[v]:
            if u not in seen:
                seen.add(u)
                stack.append((u, False))
    return order


def _greedy_order(d: int, adj: list[set[int]], covered: np.ndarray, log_size: np.ndarray) -> list[int]:
    """mbi's greedy order: repeatedly eliminate the variable whose closed neighbourhood has the fewest cells (1 for a
    variable in no clique), ties to the earliest column. Costs are kept and refreshed only for the neighbours of the
    variable eliminated (the only ones whose neighbourhood changes)."""
    work = [set(s) for s in adj]
    sizes = np.exp(log_size).round().astype(np.int64)

    def cost(v: int) -> int:
        return math.prod(int(sizes[u]) for u in work[v] | {v}) if covered[v] else 1

    # a heap of (cost, column) with stale entries skipped: the smallest cost, ties to the earliest column
    costs = [cost(v) for v in range(d)]
    heap = [(c, v) for v, c in enumerate(costs)]
    heapq.heapify(heap)
    done = np.zeros(d, dtype=bool)
    order: list[int] = []
    while heap:
        c, v = heapq.heappop(heap)
        if done[v] or c != costs[v]:
            continue
        done[v] = True
        order.append(v)
        nb = work[v]
        for u in nb:
            work[u].discard(v)
            work[u].update(nb - {u})
        work[v] = set()
        for u in nb:
            costs[u] = cost(u)
            heapq.heappush(heap, (costs[u], u))
    return order


def max_cells(sizes: Mapping[str, int], cliques: Sequence[Sequence[str]]) -> int:
    """Cells of the largest junction-tree clique Private-PGM builds for these measured cliques."""
    return build(sizes, cliques).max_cells
