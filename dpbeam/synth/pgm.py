"""Private-PGM (mbi) as a synthesis engine: exact graphical-model inference, best for narrow or sparse models.

Post-processing only: the model is fitted to the artifact's noisy measurements, and rows are drawn from it.
"""

from __future__ import annotations

import functools
from collections import deque
from dataclasses import dataclass

import numpy as np

from dpbeam.synth import _jax  # noqa: F401  (must precede mbi)

import jax  # noqa: E402
import mbi  # noqa: E402
import networkx as nx  # noqa: E402
from mbi import CliqueVector, Factor, estimation, junction_tree, marginal_loss  # noqa: E402
from mbi.marginal_loss import WeightedQuery  # noqa: E402

from dpbeam.measurements import MeasurementsArtifact  # noqa: E402
from dpbeam.synth.forward import ForwardSampler  # noqa: E402
from dpbeam.synth.calibrate import NamedTable, calibrate  # noqa: E402

ENGINE = "pgm"


def _mbi_domain(artifact: MeasurementsArtifact) -> mbi.Domain:
    sizes = artifact.model_sizes
    return mbi.Domain(artifact.domain.names, [sizes[n] for n in artifact.domain.names])


def _mbi_measurements(artifact: MeasurementsArtifact) -> list[mbi.LinearMeasurement]:
    out = []
    for m in artifact.measurements:
        kw = {} if m.weights is None else {"query": WeightedQuery(np.asarray(m.weights).ravel())}
        out.append(mbi.LinearMeasurement(np.asarray(m.values, dtype=np.float64).ravel(), m.clique, m.stddev, **kw))
    return out


def junction_tree_cells_of(sizes: dict[str, int], cliques: list[tuple[str, ...]]) -> int:
    """Cells of the largest junction-tree clique for these measured cliques: what Private-PGM must hold."""
    domain = mbi.Domain(list(sizes), list(sizes.values()))
    jtree, _ = junction_tree.make_junction_tree(domain, [tuple(c) for c in cliques])
    return max(domain.size(tuple(cl)) for cl in jtree.nodes)


def junction_tree_cells(artifact: MeasurementsArtifact) -> int:
    return junction_tree_cells_of(artifact.model_sizes, [tuple(m.clique) for m in artifact.measurements])


def _calibrate(potentials: CliqueVector, total: float) -> tuple[nx.Graph, list[str], dict[tuple[str, ...], np.ndarray]]:
    jtree, order = junction_tree.make_junction_tree(potentials.domain, potentials.cliques)
    cliques = [tuple(c) for c in jtree.nodes]
    logs = [NamedTable(tuple(f.domain.attributes), np.asarray(f.values, dtype=np.float64))
            for f in (potentials[c] for c in potentials.cliques)]
    sizes = dict(zip(potentials.domain.attributes, potentials.domain.shape))
    messages = [(tuple(i), tuple(j)) for i, j in junction_tree.message_passing_order(jtree)]
    return jtree, list(order), calibrate(logs, cliques, messages, sizes, float(total))


@dataclass
class PGMModel:
    """A fitted Private-PGM model over the artifact's model domain."""

    model: mbi.MarkovRandomField
    names: list[str]
    engine: str = ENGINE
    sampling: str = "round"
    iters: int = 0  # iterations run (the fit may stop early on convergence)

    @classmethod
    def of(cls, potentials: CliqueVector, total: float, names: list[str], iters: int = 0) -> "PGMModel":
        """A model from fitted potentials; its marginals on the potentials' cliques come from numpy inference."""
        calibrated = _calibrate(potentials, total)
        tables = calibrated[2]
        marginals = {}
        for c in potentials.cliques:
            dom = potentials.domain.project(c)
            home = next(t for t in tables if set(c) <= set(t))
            marginals[c] = Factor(dom, NamedTable(home, tables[home]).project(tuple(dom.attributes)).values)
        marginals = CliqueVector(potentials.domain, list(potentials.cliques), marginals)
        model = cls(mbi.MarkovRandomField(potentials=potentials, marginals=marginals, total=total), names, iters=iters)
        model.__dict__["calibrated"] = calibrated  # the cached property below, already computed
        return model

    @functools.cached_property
    def calibrated(self) -> tuple[nx.Graph, list[str], dict[tuple[str, ...], np.ndarray]]:
        """The junction tree, its elimination order, and every junction-tree clique's marginal (counts, numpy,
        axes in the clique's order): one message-passing run, kept."""
        return _calibrate(self.model.potentials, float(self.model.total))

    @functools.cached_property
    def sampler(self) -> ForwardSampler:
        _, order, tables = self.calibrated
        sizes = dict(zip(self.model.domain.attributes, self.model.domain.shape))
        return ForwardSampler(self.names, sizes, tables, order)

    def marginal(self, clique: tuple[str, ...]) -> np.ndarray:
        """The model's marginal (counts, model domain) on a clique."""
        return np.asarray(self.model.project(clique).datavector(flatten=False))

    def pair_marginals(self, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], np.ndarray]:
        """The model's marginals (counts) on many pairs at once, from the junction tree calibrated once, in numpy.

        mbi answers an arbitrary query by variable elimination, compiled once per query (~0.4 s each on Adult).
        Here each first column ``a`` of the pairs is carried outward from a clique holding it, once, through the
        whole tree (:func:`_joint_with`): every clique ``c`` gets the joint table of ``a`` and ``c``'s columns as
        P(a, separator) times c's conditional given the separator (exact in a junction tree), and every pair (a, b)
        is read off the first clique reached that holds b. Cost: one tree walk per distinct first column, each a
        numpy operation per junction-tree clique of size(a) x cells(c): O(d x cliques) numpy calls for any number
        of pairs (d columns, O(d^2) pairs), instead of a shortest-path search per pair."""
        jtree, _, marginals = self.calibrated
        cliques = [tuple(c) for c in jtree.nodes]
        position = {c: i for i, c in enumerate(cliques)}
        neighbours = [[position[tuple(n)] for n in jtree.neighbors(c)] for c in cliques]
        tables = [NamedTable(c, marginals[c]) for c in cliques]
        wanted: dict[str, set[str]] = {}
        for a, b in pairs:
            wanted.setdefault(a, set()).add(b)
        out: dict[tuple[str, str], np.ndarray] = {}
        for a, targets in wanted.items():
            found = _joint_with(a, targets, tables, neighbours)
            for b in targets:
                out[(a, b)] = found[b]
        return out

    def sample(self, rows: int, seed: int) -> np.ndarray:
        """Model-domain codes (rows, columns), drawn by forward sampling along the junction tree
        (:mod:`dpbeam.synth.forward`) with a numpy Generator seeded from ``seed``."""
        return self.sampler.sample(rows, np.random.default_rng(seed), self.sampling)


def _joint_with(
    a: str, targets: set[str], tables: list[NamedTable], neighbours: list[list[int]]
) -> dict[str, np.ndarray]:
    """The model's 2-way marginals (a, b) for every b in ``targets``, by one walk of the calibrated junction tree
    (clique marginals ``tables``, adjacency ``neighbours``) outward from the smallest clique holding ``a``.

    A clique that holds ``a`` gives its marginal directly; beyond them (the cliques holding a are connected), a
    clique's joint with ``a`` is its parent's joint projected on (a, separator) times the clique's conditional given
    the separator. The walk stops once every target is found."""
    home = min((i for i, t in enumerate(tables) if a in t.names), key=lambda i: tables[i].values.size)
    left = set(targets)
    found: dict[str, np.ndarray] = {}
    joint = {home: tables[home]}
    seen = {home}
    queue = deque([home])
    while queue and left:
        i = queue.popleft()
        here = joint.pop(i)
        for b in [n for n in here.names if n in left]:
            found[b] = here.project((a, b)).values
            left.discard(b)
        for j in neighbours[i]:
            if j in seen:
                continue
            seen.add(j)
            child = tables[j]
            if a in child.names:
                joint[j] = child
            else:
                sep = tuple(n for n in child.names if n in tables[i].names)
                joint[j] = here.project((a,) + sep).times(child.divided_by(child.project(sep)))
            queue.append(j)
    return found


# Convergence, judged on the noisy loss only (post-processing). mbi's loss is 0.5 sum_i ((Q mu - y)_i / sigma_i)^2
# over the N measured entries; at the true marginals it is half a chi-square with N degrees of freedom, so it scatters
# by sqrt(N / 2) from one draw of the noise to another. A block of 50 iterations that lowers it by less than that
# changes the fit by less than the measurements can tell apart; after PATIENCE such blocks in a row the fit stops.
# On Adult at eps = 1 (N = 5,188) this stops at 750 of 1,000 iterations, where the mean 2-way/3-way TVD had levelled
# off (0.0393/0.0882 at both 700 and 1,000 iterations; 0.0399/0.0892 at 500).
PATIENCE = 2


def convergence_tolerance(artifact: MeasurementsArtifact) -> float:
    """The smallest loss decrease per block of iterations that still counts: sqrt(N / 2), N measured entries."""
    return float(np.sqrt(sum(np.size(m.values) for m in artifact.measurements) / 2))


def _potentials(warm_start: "PGMModel | None", domain: mbi.Domain, cliques) -> CliqueVector:
    """Log-potentials over ``cliques`` to start from, in numpy (no small JAX programs to compile): zeros, or the warm
    start's potentials, each added to the first clique that holds it. A warm start over another domain, or with a
    clique that no clique here holds, is ignored."""
    tables = {c: np.zeros(domain.project(c).shape) for c in cliques}
    if warm_start is not None and warm_start.model.domain == domain:
        old = warm_start.model.potentials
        homes = [next((c for c in cliques if set(o) <= set(c)), None) for o in old.cliques]
        if all(h is not None for h in homes):
            for o, home in zip(old.cliques, homes):
                attrs = tuple(domain.project(home).attributes)
                f = old[o]
                table = NamedTable(tuple(f.domain.attributes), np.asarray(f.values, dtype=np.float64))
                tables[home] = tables[home] + table.aligned(attrs)
    return CliqueVector(domain, list(cliques), {c: Factor(domain.project(c), t) for c, t in tables.items()})


def fit(
    artifact: MeasurementsArtifact,
    iters: int = 1000,
    seed: int = 0,
    progress=None,
    warm_start: "PGMModel | None" = None,
    converge: bool = True,
) -> PGMModel:
    """Fit Private-PGM by mirror descent (mbi's estimator, Armijo step sizes) to every measurement in the artifact.

    At most ``iters`` iterations, in blocks of 50 compiled as one program; with ``converge`` the fit stops earlier
    once the noisy loss has levelled off (see :data:`PATIENCE`). ``warm_start``, a model fitted to a subset of these
    measurements (e.g. the refinement's), is where the potentials start. ``progress(n)`` is called after each block
    with the iterations it ran. ``seed`` is unused: the fit is deterministic."""
    domain = _mbi_domain(artifact)
    total = artifact.estimated_total()
    loss_fn = marginal_loss.from_linear_measurements(_mbi_measurements(artifact), domain)
    estimator = estimation.MirrorDescent()
    potentials = _potentials(warm_start, domain, loss_fn.cliques)
    # The state's marginals and loss are outputs of a step, never inputs: start them as zeros of the right shape
    # (traced, not run) instead of running mbi's _init, which compiles the inference and the loss once more. Every
    # leaf is a strongly typed numpy array, as the step returns them, so the block of steps compiles once.
    shapes = jax.eval_shape(functools.partial(estimator._init, domain), loss_fn, total)
    state = estimation.MirrorDescentState(
        jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), shapes.mu),
        potentials,
        np.float64(2.0 / (loss_fn.lipschitz * total)),  # mbi's initial step size
        np.float64(np.inf),
    )
    tolerance = convergence_tolerance(artifact)
    done, calm, last = 0, 0, np.inf
    while done < iters:
        state = estimator._multi_step(state, loss_fn, total, ())
        done += estimation.CALLBACK_EVERY
        if progress is not None:
            progress(estimation.CALLBACK_EVERY)
        loss = float(state.loss)
        calm = calm + 1 if last - loss < tolerance else 0
        last = loss
        if converge and calm >= PATIENCE:
            break
    return PGMModel.of(state.potentials, total, artifact.domain.names, iters=done)
