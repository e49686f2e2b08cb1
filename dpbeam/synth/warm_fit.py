"""A graphical model refitted round after round, in numpy: AIM's inner loop without a compile per round.

Post-processing only: the model is fitted to noisy measurements. AIM (:mod:`dpbeam.privacy.aim`) refits after every
measurement; mbi's estimator (:func:`dpbeam.synth.pgm.fit`) compiles one JAX program per set of measured cliques, which
on two loaded cores costs ~10 s of CPU per round, more than the rounds' whole budget of time. Here the same
estimator (Private-PGM's mirror descent on the log-potentials of the maximal measured cliques, Armijo step sizes,
McKenna et al. 2019) runs in numpy over the calibration of :mod:`dpbeam.synth.calibrate`, so a round costs its
arithmetic only, and every refit starts from the previous round's potentials and step size (a warm start), so a few
iterations suffice.

The loss is mbi's: 0.5 sum_m ||(Q_m mu_{c_m} - y_m) / sigma_m||^2, Q_m the measurement's query (identity, or a
diagonal of ``weights``), mu_c the model's marginal (counts) on clique c.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import networkx as nx
import numpy as np

from dpbeam.measurements import NoisyMarginal
from dpbeam.synth.calibrate import NamedTable, calibrate

Clique = tuple[str, ...]
GROWTH = 1.1  # step growth after an accepted step (mbi: 1.01); on Adult 200 cold iterations reach 0.047 mean
# 2-way TVD of the model at 1.1, 0.113 at 1.01 (mbi's 950 iterations: 0.041)


def maximal(cliques: Sequence[Clique]) -> list[Clique]:
    """The cliques not contained in another (first occurrence kept), in their first-seen order."""
    unique = list(dict.fromkeys(tuple(c) for c in cliques))
    return [c for c in unique if not any(set(c) < set(o) for o in unique)]


def junction_tree(sizes: Mapping[str, int], cliques: Sequence[Clique]) -> tuple[nx.Graph, list[tuple[Clique, Clique]]]:
    """mbi's junction tree of ``cliques`` (the one its inference would use) and its message-passing order."""
    from dpbeam.synth import _jax  # noqa: F401  (must precede mbi)
    import mbi
    from mbi import junction_tree as jt

    domain = mbi.Domain(list(sizes), [int(v) for v in sizes.values()])
    tree, _ = jt.make_junction_tree(domain, [tuple(c) for c in cliques])
    order = [(tuple(i), tuple(j)) for i, j in jt.message_passing_order(tree)]
    return tree, order


@dataclass
class Calibrated:
    """Every junction-tree node's marginal (counts): what scoring reads, one calibration per round."""

    tree: nx.Graph
    tables: dict[Clique, np.ndarray]
    holding: dict[str, list[Clique]] = field(init=False)

    def __post_init__(self) -> None:
        names = {n for c in self.tables for n in c}
        self.holding = {n: [c for c in self.tables if n in c] for n in names}

    def marginal(self, clique: Clique) -> np.ndarray:
        """The model's marginal (counts, axes in ``clique``'s order) on any clique, by elimination over the smallest
        subtree of the junction tree that touches every column of it: the joint of that subtree is the product of its
        node marginals over the product of its separators, and each node's columns that no later node needs are summed
        out as soon as its table is multiplied in (leaves first). Columns in different components of the tree (the
        model makes them independent) are joined by an outer product over the total."""
        clique = tuple(clique)
        home = next((c for c in self.holding[clique[0]] if set(clique) <= set(c)), None)
        if home is not None:
            return NamedTable(home, self.tables[home]).project(clique).values
        groups: list[list[str]] = []
        for n in clique:
            part = self.component[self.holding[n][0]]
            for g in groups:
                if self.component[self.holding[g[0]][0]] == part:
                    g.append(n)
                    break
            else:
                groups.append([n])
        out = self._connected(tuple(groups[0]))
        for g in groups[1:]:
            total = float(out.values.sum())
            part = self._connected(tuple(g))
            out = out.times(NamedTable(part.names, part.values / max(total, 1e-300)))
        return out.project(clique).values

    @functools.cached_property
    def component(self) -> dict[Clique, int]:
        return {node: i for i, part in enumerate(nx.connected_components(self.tree)) for node in part}

    def _connected(self, clique: Clique) -> NamedTable:
        root = self.holding[clique[0]][0]
        nodes = {root}
        for n in clique[1:]:
            if any(n in c for c in nodes):
                continue
            path = min((nx.shortest_path(self.tree, root, h) for h in self.holding[n]), key=len)
            nodes.update(path)
        sub = self.tree.subgraph(nodes)
        want = set(clique)

        def message(u: Clique, parent: Clique | None) -> NamedTable:
            table = NamedTable(u, self.tables[u])
            if parent is not None:
                sep = tuple(n for n in u if n in parent)
                table = table.divided_by(table.project(sep))
            for v in sub.neighbors(u):
                if v != parent:
                    table = table.times(message(v, u))
            keep = want | (set(u) & set(parent) if parent is not None else set())
            return table.project(tuple(n for n in table.names if n in keep))

        return message(root, None).project(clique)


@dataclass
class WarmModel:
    """Fitted log-potentials (one table per maximal measured clique), the Armijo step size, and the calibration of
    the last accepted potentials."""

    potentials: dict[Clique, np.ndarray]
    step: float
    calibrated: Calibrated
    total: float
    iters: int = 0

    def marginal(self, clique: Clique) -> np.ndarray:
        return self.calibrated.marginal(clique)


class _Loss:
    def __init__(self, sizes: Mapping[str, int], measurements: Sequence[NoisyMarginal], cliques: list[Clique]):
        self.sizes = sizes
        self.cliques = cliques
        self.items = []  # (home clique, measured clique, y, 1/sigma, weights or None)
        blocks: dict[Clique, float] = {}
        for m in measurements:
            c = tuple(m.clique)
            home = next(h for h in cliques if set(c) <= set(h))
            w = None if m.weights is None else np.asarray(m.weights, dtype=np.float64).reshape(m.values.shape)
            self.items.append((home, c, np.asarray(m.values, dtype=np.float64), 1.0 / max(m.stddev, 1e-12), w))
            q = 1.0 if w is None else float(np.max(w * w))
            cells = np.prod([sizes[n] for n in home]) / np.prod([sizes[n] for n in c])
            blocks[home] = blocks.get(home, 0.0) + q * m.stddev ** -2 * cells
        self.lipschitz = max(blocks.values()) if blocks else 1.0

    def __call__(self, marg: Mapping[Clique, NamedTable]) -> tuple[float, dict[Clique, np.ndarray]]:
        """The loss and its gradient with respect to each maximal clique's marginal."""
        loss = 0.0
        grad = {c: np.zeros([self.sizes[n] for n in c]) for c in self.cliques}
        for home, c, y, inv, w in self.items:
            mu = marg[home].project(c).values
            r = ((mu if w is None else w * mu) - y) * inv
            loss += 0.5 * float(np.vdot(r, r))
            g = NamedTable(c, (r if w is None else w * r) * inv)
            grad[home] = grad[home] + g.aligned(home)
        return loss, grad


def _marginals(sizes, tree, order, potentials, total) -> tuple[dict[Clique, np.ndarray], dict[Clique, NamedTable]]:
    nodes = [tuple(c) for c in tree.nodes]
    logs = [NamedTable(c, t) for c, t in potentials.items()]
    tables = calibrate(logs, nodes, order, sizes, total)
    homes = {c: next(n for n in nodes if set(c) <= set(n)) for c in potentials}
    return tables, {c: NamedTable(h, tables[h]).project(c) for c, h in homes.items()}


def fit(
    sizes: Mapping[str, int],
    measurements: Sequence[NoisyMarginal],
    total: float,
    iters: int,
    warm_start: WarmModel | None = None,
) -> WarmModel:
    """Mirror descent with Armijo steps (mbi's ``MirrorDescent``), ``iters`` iterations, each one calibration.

    Starts from ``warm_start``'s potentials (each added to the new maximal clique that holds it; a clique measured for
    the first time starts at zero) and its step size, or, cold, from the independent model of the noisy 1-way
    measurements and mbi's initial step 2 / (L total). A non-finite loss never raises: the step is refused and halved.
    """
    cliques = maximal([tuple(m.clique) for m in measurements])
    tree, order = junction_tree(sizes, cliques)
    loss_fn = _Loss(sizes, measurements, cliques)
    theta = {c: np.zeros([sizes[n] for n in c]) for c in cliques}
    step = 2.0 / (loss_fn.lipschitz * total)
    if warm_start is None:
        # start from the independent model of the noisy 1-way measurements (the fit's answer when only they exist)
        seen: set[str] = set()
        for m in measurements:
            if len(m.clique) == 1 and m.clique[0] not in seen:
                seen.add(m.clique[0])
                y = np.asarray(m.values, dtype=np.float64) / (1.0 if m.weights is None else np.asarray(m.weights))
                p = np.clip(y, 0.5, None)
                home = next(c for c in cliques if m.clique[0] in c)
                theta[home] = theta[home] + NamedTable(tuple(m.clique), np.log(p / p.sum())).aligned(home)
    else:
        for o, t in warm_start.potentials.items():
            home = next(c for c in cliques if set(o) <= set(c))  # measurements only grow: every old clique fits
            theta[home] = theta[home] + NamedTable(o, t).aligned(home)
        step = max(step, warm_start.step)
    tables, marg = _marginals(sizes, tree, order, theta, total)
    loss, grad = loss_fn(marg)
    for _ in range(iters):
        trial = {c: theta[c] - step * grad[c] for c in cliques}
        tables2, marg2 = _marginals(sizes, tree, order, trial, total)
        loss2, grad2 = loss_fn(marg2)
        decrease = sum(float(np.vdot(grad[c], marg[c].values - marg2[c].values)) for c in cliques)
        if loss - loss2 >= 0.5 * step * decrease:
            theta, tables, marg, loss, grad = trial, tables2, marg2, loss2, grad2
            step *= GROWTH
        else:
            step *= 0.5
    return WarmModel(theta, step, Calibrated(tree, tables), total, iters)
