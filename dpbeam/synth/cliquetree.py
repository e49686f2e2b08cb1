"""Exact inference for a graphical model over measured cliques, in numpy, on a tree of maximal cliques.

Post-processing only: the potentials are a model's parameters; nothing here sees data.

The tree comes from :func:`dpbeam.synth.jtree.build` (mbi's own elimination rule, so the same largest clique as
Private-PGM's junction tree). Its elimination tree has one node per column; a node whose clique lies inside a child's
clique is merged into that child, leaving the maximal cliques. Every table's axes follow one column order, so
a table over a sub-clique broadcasts into a clique's table by a reshape (a view), never a transpose.
That order puts the largest columns last (:func:`canonical`).

Inference is HUGIN message passing in probability space: each clique's potential is exponentiated once (shifted by
its maximum), messages are sums and products. That is one ``exp`` per cell per call, against three for log-space
messages; messages are rescaled to a maximum of 1, and the final beliefs are normalised to the total, so no scale
overflows. A cell whose potential is below exp(-700) of its clique's largest counts as 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from dpbeam.synth.calibrate import NamedTable

Clique = tuple[str, ...]


@dataclass(frozen=True)
class CliqueTree:
    """Maximal cliques (axes in column order), each node's parent (-1: a root), and an order with every node after
    its children; plus the elimination order of the columns (perfect for these cliques: the forward sampler's)."""

    names: tuple[str, ...]
    sizes: Mapping[str, int]
    cliques: tuple[Clique, ...]
    parent: tuple[int, ...]
    upward: tuple[int, ...]
    elimination_order: tuple[str, ...]

    @classmethod
    def build(cls, sizes: Mapping[str, int], measured: Sequence[Sequence[str]]) -> "CliqueTree":
        from dpbeam.synth import jtree

        names = tuple(sizes)
        tree = jtree.build(sizes, [tuple(c) for c in measured])
        d = len(tree.cliques)
        cliques = [set(c) for c in tree.cliques]
        parent = [int(p) for p in tree.parent]
        alive = [True] * d
        # node i's parent comes after it; a node contained in one of its children is merged into that child, which
        # takes its place in the tree (its parent and its other children)
        for p in range(d):
            kids = [i for i in range(d) if alive[i] and parent[i] == p]
            inside = next((i for i in kids if cliques[p] <= cliques[i]), None)
            if inside is None:
                continue
            alive[p] = False
            parent[inside] = parent[p]
            for i in kids:
                if i != inside:
                    parent[i] = inside
            for i in range(d):
                if alive[i] and parent[i] == p:
                    parent[i] = inside
        keep = [i for i in range(d) if alive[i]]
        index = {old: new for new, old in enumerate(keep)}
        out_cliques = tuple(canonical(sizes, [names[j] for j in cliques[i]]) for i in keep)
        out_parent = [index[parent[i]] if parent[i] >= 0 else -1 for i in keep]
        # children before parents: a post-order from the roots
        kids: list[list[int]] = [[] for _ in keep]
        for i, p in enumerate(out_parent):
            if p >= 0:
                kids[p].append(i)
        upward: list[int] = []
        for root in (i for i, p in enumerate(out_parent) if p < 0):
            stack = [(root, False)]
            while stack:
                v, done = stack.pop()
                if done:
                    upward.append(v)
                    continue
                stack.append((v, True))
                stack.extend((k, False) for k in kids[v])
        order = tuple(names[j] for j in tree.order)
        return cls(names, dict(sizes), out_cliques, tuple(out_parent), tuple(upward), order)

    def shape(self, clique: Sequence[str]) -> tuple[int, ...]:
        return tuple(int(self.sizes[n]) for n in clique)

    def home(self, clique: Sequence[str]) -> int:
        """The smallest maximal clique holding ``clique`` (ties: the first)."""
        want = set(clique)
        holding = [i for i, c in enumerate(self.cliques) if want <= set(c)]
        if not holding:
            raise ValueError(f"no clique of the tree holds {tuple(clique)}")
        return min(holding, key=lambda i: (int(np.prod(self.shape(self.cliques[i]))), i))


def canonical(sizes: Mapping[str, int], clique: Sequence[str]) -> Clique:
    """``clique`` with its columns in the axis order every table here uses: by size, the largest last (ties: the
    domain's order). numpy's loops run over the last axis, so long last axes keep them long."""
    rank = {n: (int(s), j) for j, (n, s) in enumerate(sizes.items())}
    return tuple(sorted(clique, key=rank.__getitem__))


def broadcast_shape(sub: Clique, clique: Clique, sizes: Mapping[str, int]) -> tuple[int, ...]:
    """The shape that lays a table over ``sub`` (axes in column order) along ``clique``'s axes."""
    return tuple(int(sizes[n]) if n in sub else 1 for n in clique)


def sum_axes(clique: Clique, keep: Sequence[str]) -> tuple[int, ...]:
    return tuple(i for i, n in enumerate(clique) if n not in keep)


def project(table: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """``table`` summed over ``axes`` (the other axes keep their order). ``einsum`` runs these strided sums about
    twice as fast as ``ndarray.sum`` on the clique tables here; tiny tables take ``sum`` (less overhead)."""
    if not axes:
        return table
    if table.size < 2048:
        return table.sum(axis=axes)
    return np.einsum(table, list(range(table.ndim)), [i for i in range(table.ndim) if i not in axes])


_TINY = 1e-200  # below this a clique's largest product entry is recomputed in log space (float64 ends at ~1e-308)


class Inference:
    """Calibrate the tree for log-potentials over given (canonical) cliques, each homed in one tree clique."""

    def __init__(self, tree: CliqueTree, potential_cliques: Sequence[Clique]):
        self.tree = tree
        sizes = tree.sizes
        self.potential_cliques = tuple(potential_cliques)
        self.homes = [tree.home(c) for c in self.potential_cliques]
        self.shapes = [tree.shape(c) for c in tree.cliques]
        self.lay = [broadcast_shape(c, tree.cliques[h], sizes) for c, h in zip(self.potential_cliques, self.homes)]
        self.seps: list[Clique] = []
        self.sep_axes_child: list[tuple[int, ...]] = []
        self.sep_axes_parent: list[tuple[int, ...]] = []
        self.sep_lay_child: list[tuple[int, ...]] = []
        self.sep_lay_parent: list[tuple[int, ...]] = []
        for i, p in enumerate(tree.parent):
            mine = tree.cliques[i]
            theirs = tree.cliques[p] if p >= 0 else ()
            sep = tuple(n for n in mine if n in theirs)
            self.seps.append(sep)
            self.sep_axes_child.append(sum_axes(mine, sep))
            self.sep_axes_parent.append(sum_axes(theirs, sep))
            self.sep_lay_child.append(broadcast_shape(sep, mine, sizes))
            self.sep_lay_parent.append(broadcast_shape(sep, theirs, sizes) if p >= 0 else ())

    @staticmethod
    def _product(factors: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
        if not factors:
            return np.ones(shape)
        if len(factors) == 1:
            return np.broadcast_to(factors[0], shape).copy()
        out = factors[0] * factors[1]
        if out.shape != shape:
            out = np.broadcast_to(out, shape).copy()
        for f in factors[2:]:
            out *= f
        return out

    def _log_product(self, log_potentials: Sequence[np.ndarray], h: int) -> np.ndarray:
        log = np.zeros(self.shapes[h])
        for pot, home, lay in zip(log_potentials, self.homes, self.lay):
            if home == h:
                log += pot.reshape(lay)
        top = log.max()
        log -= top if np.isfinite(top) else 0.0
        return np.exp(log, out=log)

    def beliefs(self, log_potentials: Sequence[np.ndarray], total: float) -> list[np.ndarray]:
        """Every tree clique's marginal (counts summing to ``total``) of the model exp(sum of ``log_potentials``),
        given in the order of ``potential_cliques`` (axes in column order)."""
        tree = self.tree
        # each potential exponentiated on its own (small) table, shifted by its maximum; a clique's potential is the
        # product of its factors laid along its axes, so no exp runs over the (large) clique tables
        factors: list[list[np.ndarray]] = [[] for _ in self.shapes]
        for pot, h, lay in zip(log_potentials, self.homes, self.lay):
            top = pot.max()
            factors[h].append(np.exp(pot - (top if np.isfinite(top) else 0.0)).reshape(lay))
        beliefs = [self._product(fs, shape) for fs, shape in zip(factors, self.shapes)]
        for h, b in enumerate(beliefs):
            if not b.max() > _TINY:  # the factors' maxima fall in different cells, far apart: redo in log space
                beliefs[h] = self._log_product(log_potentials, h)
        up: list[np.ndarray | None] = [None] * len(beliefs)
        for i in tree.upward:  # children first
            p = tree.parent[i]
            if p < 0:
                continue
            msg = project(beliefs[i], self.sep_axes_child[i])
            top = msg.max()
            if top > 0:
                msg /= top
            up[i] = msg
            beliefs[p] *= msg.reshape(self.sep_lay_parent[i])
        for i in reversed(tree.upward):  # parents first
            p = tree.parent[i]
            if p < 0:
                continue
            down = project(beliefs[p], self.sep_axes_parent[i])
            old = up[i]
            ratio = np.divide(down, old, out=np.zeros_like(down), where=old > 0)
            beliefs[i] *= ratio.reshape(self.sep_lay_child[i])
        for b in beliefs:
            s = b.sum()
            if s > 0:
                b *= total / s
        return beliefs


def clique_marginal(tree: CliqueTree, beliefs: Sequence[np.ndarray], clique: Sequence[str]) -> np.ndarray:
    """The model's marginal (counts, axes in ``clique``'s order) on any clique of columns, from the calibrated tree
    (``beliefs``: every tree clique's marginal, as :meth:`Inference.beliefs` gives them), in numpy.

    Post-processing of a fitted model. A clique inside one tree clique is that clique's marginal, projected.
    Otherwise, per connected part of the forest, variable elimination over the smallest subtree that touches every
    column wanted there: its joint is the product of its node marginals over its separators' marginals (exact in a
    junction tree), and each node's columns that neither the query nor its parent needs are summed out as soon as its
    subtree is multiplied in (leaves first), so no table grows past (query columns) x (one clique). Parts of the
    forest are independent in the model and are joined by an outer product over the total."""
    clique = tuple(clique)
    if len(set(clique)) != len(clique):
        raise ValueError(f"a marginal's clique names each column once; got {clique}")
    unknown = [n for n in clique if n not in tree.sizes]
    if unknown:
        raise ValueError(f"{unknown} are not columns of the model; use some of {list(tree.names)}")
    tables = [NamedTable(c, b) for c, b in zip(tree.cliques, beliefs)]
    want = set(clique)
    inside = [i for i, c in enumerate(tree.cliques) if want <= set(c)]
    if inside:
        best = min(inside, key=lambda i: (tables[i].values.size, i))
        return tables[best].project(clique).values
    # each node's root (its connected part) and depth
    root = list(range(len(tree.cliques)))
    depth = [0] * len(tree.cliques)
    for i in reversed(tree.upward):  # parents first
        p = tree.parent[i]
        if p >= 0:
            root[i], depth[i] = root[p], depth[p] + 1
    holders = {n: [i for i, c in enumerate(tree.cliques) if n in c] for n in clique}
    parts: dict[int, list[str]] = {}
    for n in clique:
        parts.setdefault(root[holders[n][0]], []).append(n)
    out: NamedTable | None = None
    for cols in parts.values():
        part = _connected_marginal(tree, tables, depth, holders, tuple(cols))
        if out is None:
            out = part
        else:
            total = float(out.values.sum())
            out = out.times(NamedTable(part.names, part.values / total if total > 0 else part.values * 0.0))
    assert out is not None
    return out.project(clique).values


def _path(tree: CliqueTree, depth: list[int], a: int, b: int) -> list[int]:
    """The nodes on the tree path between ``a`` and ``b`` (same connected part)."""
    left, right = [a], [b]
    while a != b:
        if depth[a] >= depth[b]:
            a = tree.parent[a]
            left.append(a)
        else:
            b = tree.parent[b]
            right.append(b)
    return left + right[:-1]


def _connected_marginal(tree: CliqueTree, tables: list["NamedTable"], depth: list[int],
                        holders: Mapping[str, list[int]], cols: Clique) -> "NamedTable":
    start = min(holders[cols[0]], key=lambda i: (tables[i].values.size, i))
    nodes = {start}
    for n in cols[1:]:
        if any(n in tree.cliques[i] for i in nodes):
            continue
        nodes.update(min((_path(tree, depth, start, h) for h in holders[n]), key=len))
    want = set(cols)
    adjacent: dict[int, list[int]] = {i: [] for i in nodes}
    for i in nodes:
        p = tree.parent[i]
        if p in nodes:
            adjacent[i].append(p)
            adjacent[p].append(i)

    def message(u: int, parent: int | None) -> NamedTable:
        table = tables[u]
        keep = set(want)
        if parent is not None:
            sep = tuple(n for n in tree.cliques[u] if n in tree.cliques[parent])
            table = table.divided_by(table.project(sep))  # u's conditional given the separator
            keep |= set(sep)
        for v in adjacent[u]:
            if v != parent:
                table = table.times(message(v, u))
        return table.project(tuple(n for n in table.names if n in keep))

    return message(start, None).project(cols)
