"""Fit a graphical model to noisy marginals by mirror descent, in numpy: Private-PGM's estimator without JAX.

Post-processing only: the inputs are the artifact's noisy measurements and public domain sizes.

The problem and the algorithm are mbi's (McKenna et al. 2019, Algorithm 1, with mbi's Armijo step sizes): minimise

    L(mu) = 0.5 sum_i ||(w_i * mu_{c_i} - y_i) / sigma_i||^2

over the marginals mu of a graphical model whose log-potentials live on the maximal measured cliques. A step takes
the gradient of L at the model's marginals, moves the log-potentials against it by alpha, and keeps the move if the
loss fell by at least 0.5 alpha <grad, mu - mu'> (then alpha grows by 1.01), else halves alpha. mbi starts at
alpha = 2 / (L total), far below the stable step on real tables (on Adult it takes mbi's growth ~300 steps to get
there); here alpha doubles on each accepted step until the first rejection, then follows mbi's rule, which reaches
the same path of iterates (small steps track the same descent) in ~10 steps instead of ~300. The marginals of an
accepted move are those of the next step, so each step runs inference once (mbi runs it twice). Inference is exact:
:class:`dpbeam.synth.cliquetree.Inference` on the tree of maximal cliques, in numpy, so nothing is compiled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from dpbeam.synth.cliquetree import Clique, CliqueTree, Inference, broadcast_shape, canonical, project, sum_axes

# step-size growth on a kept accelerated step: 1.0 left the step where the first rejection put it (Adult, AIM, eps 10:
# loss 2.7 N after 1,000 inferences), 1.01 halved it often enough to keep restarting the momentum (0.36 N), 1.001 0.24 N
ACCEL_GROWTH = 1.001


@dataclass(frozen=True)
class Measured:
    """One noisy linear measurement of a marginal: ``y = w * Q mu_clique + noise`` (flat, clique in column order).

    ``Q`` is the identity unless ``groups`` is given: then ``groups[i]`` maps the codes of the clique's i-th column to
    group codes, and ``Q`` sums the marginal's cells over groups (a coarse measurement: ``values`` has the groups'
    shape)."""

    clique: Clique
    values: np.ndarray
    stddev: float
    weights: np.ndarray | None = None
    groups: tuple[np.ndarray, ...] | None = None

    @classmethod
    def of(cls, m: Any) -> "Measured":
        """From a :class:`dpbeam.measurements.NoisyMarginal` (flattened, as the fit takes it)."""
        return cls(tuple(m.clique), np.asarray(m.values, dtype=np.float64).ravel(), float(m.stddev),
                   None if m.weights is None else np.asarray(m.weights, dtype=np.float64).ravel(),
                   None if m.groups is None else tuple(np.asarray(g, dtype=np.int64) for g in m.groups))

    @property
    def shape(self) -> tuple[int, ...] | None:
        """The measured shape when the measurement is coarse (groups), else None (the clique's own shape)."""
        return None if self.groups is None else tuple(int(g.max()) + 1 for g in self.groups)


def group_index(groups: Sequence[np.ndarray]) -> np.ndarray:
    """For a marginal whose i-th axis has codes mapped by ``groups[i]``: the flat group cell of every flat cell (C
    order), so that ``np.bincount(index, weights=marginal.ravel())`` is the coarse marginal."""
    gshape = tuple(int(g.max()) + 1 for g in groups)
    return np.ravel_multi_index(np.ix_(*[np.asarray(g, dtype=np.int64) for g in groups]), gshape).ravel()


def maximal(cliques: Sequence[Clique]) -> list[Clique]:
    """The cliques not contained in another (first of equal ones), in first-seen order."""
    out: list[Clique] = []
    for c in cliques:
        s = set(c)
        if any(s <= set(o) for o in out):
            continue
        out = [o for o in out if not set(o) <= s] + [c]
    return sorted(out, key=list(cliques).index)


class Problem:
    """The loss over measured cliques, its gradient on the maximal ones, and exact inference for the model."""

    def __init__(self, names: Sequence[str], sizes: Mapping[str, int], measurements: Sequence[Measured]):
        self.names = tuple(names)
        self.sizes = {n: int(sizes[n]) for n in self.names}
        self.measurements = [self._canonical(m) for m in measurements]
        self.cliques = maximal([m.clique for m in self.measurements])  # where the log-potentials live
        self.tree = CliqueTree.build(self.sizes, self.cliques)
        self.inference = Inference(self.tree, self.cliques)
        shapes = {c: tuple(self.sizes[n] for n in c) for c in self.cliques}
        self.shapes = shapes
        # a coarse measurement's flat group cell of each flat cell of its clique (None: the measurement is the marginal)
        self.coarse = [None if m.groups is None else group_index(m.groups) for m in self.measurements]
        # each measurement is read from the smallest maximal clique holding it
        self.route = []
        for m in self.measurements:
            holding = [i for i, c in enumerate(self.cliques) if set(m.clique) <= set(c)]
            home = min(holding, key=lambda i: (int(np.prod(shapes[self.cliques[i]])), i))
            c = self.cliques[home]
            self.route.append((home, sum_axes(c, m.clique), broadcast_shape(m.clique, c, self.sizes)))
        # mbi's Lipschitz bound (exact for plain marginals): max over maximal cliques of sum ||w||^2 / sigma^2 |C|/|c|;
        # a coarse measurement's Q^T Q has largest eigenvalue its largest group's cells
        blocks: dict[Clique, float] = {}
        for m, (home, _, _), idx in zip(self.measurements, self.route, self.coarse):
            w2 = 1.0 if m.weights is None else float(np.max(m.weights**2))
            if idx is not None:
                w2 *= float(np.bincount(idx).max())
            ratio = float(np.prod(shapes[self.cliques[home]]) / np.prod([self.sizes[n] for n in m.clique]))
            blocks[home] = blocks.get(home, 0.0) + w2 / max(m.stddev, 1e-12) ** 2 * ratio
        self.lipschitz = max(blocks.values()) if blocks else 1.0
        # which tree clique holds each maximal clique, and how to project onto it
        self.from_tree = [(h, sum_axes(self.tree.cliques[h], c)) for c, h in zip(self.cliques, self.inference.homes)]

    def _canonical(self, m: Measured) -> Measured:
        c = canonical(self.sizes, m.clique)
        shape = m.shape or tuple(self.sizes[n] for n in m.clique)
        perm = [m.clique.index(n) for n in c]
        if m.groups is not None:
            for g, n in zip(m.groups, m.clique):
                if len(g) != self.sizes[n]:
                    raise ValueError(f"a coarse measurement on {m.clique} maps {len(g)} codes of {n}, the model "
                                     f"domain has {self.sizes[n]}")

        def move(v: np.ndarray | None) -> np.ndarray | None:
            if v is None:
                return None
            return np.ascontiguousarray(np.asarray(v, dtype=np.float64).reshape(shape).transpose(perm)).ravel()

        groups = None if m.groups is None else tuple(m.groups[i] for i in perm)
        return Measured(c, move(m.values), float(m.stddev), move(m.weights), groups)

    def marginals(self, potentials: Sequence[np.ndarray], total: float) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """(marginals on the maximal measured cliques, marginals on the tree's cliques)."""
        beliefs = self.inference.beliefs(potentials, total)
        return [project(beliefs[h], axes) for h, axes in self.from_tree], beliefs

    def loss_and_gradient(self, mu: Sequence[np.ndarray]) -> tuple[float, list[np.ndarray]]:
        grad = [np.zeros_like(x) for x in mu]
        loss = 0.0
        for m, (home, axes, lay), idx in zip(self.measurements, self.route, self.coarse):
            here = mu[home]
            proj = project(here, axes).ravel()
            if idx is not None:
                proj = np.bincount(idx, weights=proj, minlength=m.values.size)
            sigma2 = max(m.stddev, 1e-12) ** 2
            fitted = proj if m.weights is None else proj * m.weights
            diff = fitted - m.values
            loss += 0.5 * float(diff @ diff) / sigma2
            g = diff / sigma2 if m.weights is None else diff * m.weights / sigma2
            grad[home] += (g if idx is None else g[idx]).reshape(lay)
        return loss, grad

    def loss(self, mu: Sequence[np.ndarray]) -> float:
        return self.loss_and_gradient(mu)[0]


def independent_start(problem: Problem) -> list[np.ndarray]:
    """Log-potentials of the independent model of the noisy 1-way measurements (zero elsewhere): each column's first
    1-way measurement, unweighted (``values / weights``), clipped below at 0.5 and normalised, its log added to the
    smallest maximal clique holding the column. The fit's answer when only 1-way marginals are measured, so a cold
    fit starts where that answer is. Post-processing of noisy outputs only."""
    pots = [np.zeros(problem.shapes[c]) for c in problem.cliques]
    seen: set[str] = set()
    for m, (home, _, lay) in zip(problem.measurements, problem.route):
        if len(m.clique) != 1 or m.clique[0] in seen or m.groups is not None:
            continue
        seen.add(m.clique[0])
        y = m.values if m.weights is None else m.values / m.weights
        p = np.clip(y, 0.5, None)
        pots[home] += np.log(p / p.sum()).reshape(lay)
    return pots


@dataclass
class MirrorDescent:
    """State of the fit: log-potentials on the problem's maximal cliques, the step size, and the current marginals
    and loss (of the current potentials)."""

    problem: Problem
    total: float
    potentials: list[np.ndarray]
    alpha: float
    mu: list[np.ndarray]
    beliefs: list[np.ndarray]
    loss: float
    grad: list[np.ndarray]
    growth: float = 2.0  # step-size growth on acceptance until the first rejection (then mbi's 1.01)
    fixed_growth: float | None = None  # if set, the growth on every acceptance (see :meth:`start`)
    previous: list[np.ndarray] | None = None  # accelerated steps: the last iterate before this one (None: restart)
    momentum_t: float = 1.0  # accelerated steps: Nesterov's t_k

    @classmethod
    def start(cls, problem: Problem, total: float, potentials: Sequence[np.ndarray] | None = None,
              alpha: float | None = None, growth: float | None = None) -> "MirrorDescent":
        """From ``potentials`` (default zeros) and mbi's first step 2 / (L total), which then doubles on every
        accepted step until one is rejected. A warm start passes its previous ``alpha`` (the larger of it and mbi's
        first step is taken) and grows by 1.01 from the start. ``growth``, if given, is the growth after every
        accepted step from the start, before and after a rejection (AIM's short refits use 1.1)."""
        pots = [np.zeros(problem.shapes[c]) for c in problem.cliques] if potentials is None else [
            np.array(p, dtype=np.float64) for p in potentials]
        mu, beliefs = problem.marginals(pots, total)
        loss, grad = problem.loss_and_gradient(mu)
        first = 2.0 / (problem.lipschitz * total)
        if alpha is None:
            state = cls(problem, total, pots, first, mu, beliefs, loss, grad)
        else:
            state = cls(problem, total, pots, max(first, float(alpha)), mu, beliefs, loss, grad, growth=1.01)
        state.fixed_growth = growth
        if growth is not None:
            state.growth = growth
        return state

    def step(self) -> None:
        """One mirror-descent step with mbi's Armijo rule (see the module docstring)."""
        trial = [p - self.alpha * g for p, g in zip(self.potentials, self.grad)]
        mu2, beliefs2 = self.problem.marginals(trial, self.total)
        loss2, grad2 = self.problem.loss_and_gradient(mu2)
        decrease = sum(float(np.vdot(g, a - b)) for g, a, b in zip(self.grad, self.mu, mu2))
        if self.loss - loss2 >= 0.5 * self.alpha * decrease:
            self.potentials, self.mu, self.beliefs, self.loss, self.grad = trial, mu2, beliefs2, loss2, grad2
            self.alpha *= self.growth
        else:
            self.alpha *= 0.5
            self.growth = 1.01 if self.fixed_growth is None else self.fixed_growth

    def accelerated_step(self) -> None:
        """One step of mirror descent with Nesterov momentum on the log-potentials and adaptive restart (FISTA's
        extrapolation, Beck & Teboulle 2009; restart when the extrapolated point's loss is higher, O'Donoghue & Candes
        2015); two inferences.

        From the iterate theta_k (the state) and the one before, theta_{k-1}: y = theta_k + beta (theta_k -
        theta_{k-1}), beta = (t_k - 1) / t_{k+1}, t_{k+1} = (1 + sqrt(1 + 4 t_k^2)) / 2. If y's loss exceeds theta_k's,
        the momentum restarts (y = theta_k). The gradient at y's marginals moves y by alpha to theta_{k+1}; if that
        raises the loss above y's, alpha halves, the momentum restarts and y is the new iterate instead. So the loss
        never rises. alpha grows by ACCEL_GROWTH on a kept step. On Adult's AIM measurements at eps 10 (one artifact,
        loss / N entries) this reached 0.57 after 500 inferences and 0.24 after 1,000; plain steps (:meth:`step`) 2.8,
        1.0 and, after 2,000, 0.49."""
        t_next = (1.0 + np.sqrt(1.0 + 4.0 * self.momentum_t**2)) / 2.0
        beta = 0.0 if self.previous is None else (self.momentum_t - 1.0) / t_next
        here = (self.potentials, self.mu, self.beliefs, self.loss, self.grad)
        if beta > 0:
            y = [p + beta * (p - q) for p, q in zip(self.potentials, self.previous)]
            mu_y, beliefs_y = self.problem.marginals(y, self.total)
            loss_y, grad_y = self.problem.loss_and_gradient(mu_y)
            point = (y, mu_y, beliefs_y, loss_y, grad_y)
            if loss_y > self.loss:
                point, t_next = here, 1.0
        else:
            point = here
        y, _, _, loss_y, grad_y = point
        trial = [p - self.alpha * g for p, g in zip(y, grad_y)]
        mu2, beliefs2 = self.problem.marginals(trial, self.total)
        loss2, grad2 = self.problem.loss_and_gradient(mu2)
        if loss2 <= loss_y:
            self.previous = self.potentials
            self.potentials, self.mu, self.beliefs, self.loss, self.grad = trial, mu2, beliefs2, loss2, grad2
            self.momentum_t = t_next
            self.alpha *= ACCEL_GROWTH
        else:
            self.alpha *= 0.5
            self.potentials, self.mu, self.beliefs, self.loss, self.grad = point
            self.previous, self.momentum_t = None, 1.0

    def run(self, steps: int, accelerated: bool = False) -> None:
        """``steps`` plain steps (:meth:`step`), or, ``accelerated``, ``steps`` inferences' worth of
        :meth:`accelerated_step` (two each; at least one step)."""
        if accelerated:
            for _ in range(max(1, steps // 2)):
                self.accelerated_step()
            return
        for _ in range(steps):
            self.step()
