"""Private-PGM as a synthesis engine: exact graphical-model inference, best for narrow or sparse models.

Post-processing only: the model is fitted to the artifact's noisy measurements, and rows are drawn from it.

The fit is Private-PGM's estimator (mirror descent over the marginals of a graphical model on the measured cliques)
run in numpy on a tree of maximal cliques (:mod:`dpbeam.synth.mirror`, :mod:`dpbeam.synth.cliquetree`): nothing is
compiled and JAX is not imported. mbi (JAX) is imported only when a caller asks for the model as mbi's
``MarkovRandomField`` (:attr:`PGMModel.model`, :meth:`PGMModel.marginal`), e.g. to cross-check a query.
"""

from __future__ import annotations

import functools
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import networkx as nx
import numpy as np

from dpbeam.measurements import MeasurementsArtifact
from dpbeam.synth.calibrate import NamedTable
from dpbeam.synth.cliquetree import Clique, CliqueTree, canonical
from dpbeam.synth.forward import ForwardSampler
from dpbeam.synth.mirror import Measured, MirrorDescent, Problem
from dpbeam.synth.mirror import independent_start as independent_start_of

ENGINE = "pgm"
BLOCK = 50  # iterations between convergence checks and progress reports


def _mbi_domain(artifact: MeasurementsArtifact):
    from dpbeam.synth import _jax  # noqa: F401  (must precede mbi)
    import mbi

    sizes = artifact.model_sizes
    return mbi.Domain(artifact.domain.names, [sizes[n] for n in artifact.domain.names])


def junction_tree_cells_of(sizes: dict[str, int], cliques: list[tuple[str, ...]]) -> int:
    """Cells of the largest clique of mbi's own junction tree for these measured cliques (imports mbi; the fit
    uses :func:`dpbeam.synth.jtree.build`, which a test checks against this)."""
    from dpbeam.synth import _jax  # noqa: F401  (must precede mbi)
    import mbi
    from mbi import junction_tree

    domain = mbi.Domain(list(sizes), list(sizes.values()))
    jtree, _ = junction_tree.make_junction_tree(domain, [tuple(c) for c in cliques])
    return max(domain.size(tuple(cl)) for cl in jtree.nodes)


def junction_tree_cells(artifact: MeasurementsArtifact) -> int:
    return junction_tree_cells_of(artifact.model_sizes, [tuple(m.clique) for m in artifact.measurements])


def problem_of(artifact: MeasurementsArtifact) -> Problem:
    """The artifact's measurements as a fitting problem over its model domain."""
    return Problem(artifact.domain.names, artifact.model_sizes, [Measured.of(m) for m in artifact.measurements])


@dataclass
class PGMModel:
    """A fitted Private-PGM model: log-potentials (numpy) on the maximal measured cliques of the model domain.

    ``cliques`` and the axes of each potential follow :func:`dpbeam.synth.cliquetree.canonical`."""

    names: list[str]
    sizes: dict[str, int]
    cliques: tuple[Clique, ...]
    potentials: tuple[np.ndarray, ...]
    total: float
    engine: str = ENGINE
    sampling: str = "round"
    iters: int = 0  # iterations run (the fit may stop early on convergence)
    tree: CliqueTree | None = field(default=None, repr=False)
    step: float | None = None  # the fit's last step size (a warm start continues with it)
    device: ClassVar[str] = "cpu"  # numpy: the fit and the sampler run on the CPU

    @classmethod
    def of(cls, potentials: Any, total: float, names: list[str], iters: int = 0) -> "PGMModel":
        """A model from log-potentials given as an mbi ``CliqueVector`` (as mbi's estimators return them)."""
        if not (hasattr(potentials, "domain") and hasattr(potentials, "cliques")):
            raise TypeError("PGMModel.of takes an mbi CliqueVector; use PGMModel.from_tables for numpy tables")
        sizes = dict(zip(potentials.domain.attributes, potentials.domain.shape))
        tables = {tuple(c): NamedTable(tuple(potentials[c].domain.attributes),
                                       np.asarray(potentials[c].values, dtype=np.float64))
                  for c in potentials.cliques}
        return cls.from_tables(tables, sizes, total, names, iters)

    @classmethod
    def from_tables(cls, tables: dict[Clique, NamedTable], sizes: dict[str, int], total: float, names: list[str],
                    iters: int = 0, tree: CliqueTree | None = None, step: float | None = None) -> "PGMModel":
        """A model from log-potentials given as named numpy tables (any axis order)."""
        cliques, pots = [], []
        for c, t in tables.items():
            canon = canonical(sizes, c)
            cliques.append(canon)
            pots.append(np.ascontiguousarray(t.aligned(canon)))
        sizes = {n: int(sizes[n]) for n in names}
        return cls(list(names), sizes, tuple(cliques), tuple(pots), float(total), iters=iters, tree=tree, step=step)

    def __post_init__(self) -> None:
        if self.tree is None:
            self.tree = CliqueTree.build(self.sizes, self.cliques)

    @functools.cached_property
    def tree_marginals(self) -> dict[Clique, np.ndarray]:
        """Every tree clique's marginal (counts summing to ``total``): one calibration, kept."""
        from dpbeam.synth.cliquetree import Inference

        beliefs = Inference(self.tree, self.cliques).beliefs(self.potentials, self.total)
        return dict(zip(self.tree.cliques, beliefs))

    @functools.cached_property
    def calibrated(self) -> tuple[Any, list[str], dict[tuple[str, ...], np.ndarray]]:
        """The clique tree as a networkx graph (a forest's roots joined by empty separators), the columns'
        elimination order, and every tree clique's marginal (counts, axes in the clique's order)."""
        graph = nx.Graph()
        graph.add_nodes_from(self.tree.cliques)
        roots = [c for c, p in zip(self.tree.cliques, self.tree.parent) if p < 0]
        for c, p in zip(self.tree.cliques, self.tree.parent):
            if p >= 0:
                graph.add_edge(c, self.tree.cliques[p])
        for r in roots[1:]:
            graph.add_edge(r, roots[0])
        return graph, list(self.tree.elimination_order), self.tree_marginals

    @functools.cached_property
    def sampler(self) -> ForwardSampler:
        return ForwardSampler(self.names, self.sizes, self.tree_marginals, self.tree.elimination_order)

    @functools.cached_property
    def model(self):
        """The model as mbi's ``MarkovRandomField`` (imports mbi and JAX): for mbi's own queries."""
        from dpbeam.synth import _jax  # noqa: F401  (must precede mbi)
        import mbi
        from mbi import CliqueVector, Factor

        domain = mbi.Domain(self.names, [self.sizes[n] for n in self.names])
        pots = CliqueVector(domain, list(self.cliques),
                            {c: Factor(domain.project(c), p) for c, p in zip(self.cliques, self.potentials)})
        marg = {}
        for c in self.cliques:
            home = next(t for t in self.tree_marginals if set(c) <= set(t))
            marg[c] = Factor(domain.project(c), NamedTable(home, self.tree_marginals[home]).project(c).values)
        return mbi.MarkovRandomField(potentials=pots, marginals=CliqueVector(domain, list(self.cliques), marg),
                                     total=self.total)

    def marginal(self, clique: tuple[str, ...]) -> np.ndarray:
        """The model's marginal (counts, model domain) on a clique, by mbi's variable elimination (an independent
        check of the numpy inference; compiles once per query)."""
        return np.asarray(self.model.project(clique).datavector(flatten=False))

    def clique_marginal(self, clique: tuple[str, ...]) -> np.ndarray:
        """The model's marginal (counts, model domain, axes in ``clique``'s order) on any clique, in numpy, from the
        tree calibrated once (:func:`dpbeam.synth.cliquetree.clique_marginal`); :meth:`marginal` is mbi's check."""
        from dpbeam.synth.cliquetree import clique_marginal

        return clique_marginal(self.tree, [self.tree_marginals[c] for c in self.tree.cliques], clique)

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

    def sample(self, rows: int, seed: int, threads: int | None = None) -> np.ndarray:
        """Model-domain codes (rows, columns), drawn by forward sampling along the clique tree
        (:mod:`dpbeam.synth.forward`) in independently seeded blocks from ``seed``, on ``threads`` threads (default:
        the cores, at most 4); the rows do not depend on ``threads``."""
        return self.sampler.sample_blocks(rows, seed, self.sampling, threads)


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


# Convergence, judged on the noisy loss only (post-processing). The loss is 0.5 sum_i ((Q mu - y)_i / sigma_i)^2 over
# the N measured entries; at the true marginals it is half a chi-square with N degrees of freedom, so it scatters by
# sqrt(N / 2) from one draw of the noise to another. A block of BLOCK iterations that lowers it by less than that
# changes the fit by less than the measurements can tell apart; after PATIENCE such blocks in a row the fit stops.
PATIENCE = 2


def convergence_tolerance(artifact: MeasurementsArtifact) -> float:
    """The smallest loss decrease per block of iterations that still counts: sqrt(N / 2), N measured entries."""
    return float(np.sqrt(sum(np.size(m.values) for m in artifact.measurements) / 2))


def _start(warm_start: "PGMModel | None", problem: Problem) -> list[np.ndarray] | None:
    """Log-potentials on the problem's cliques to start from: the warm start's, each added to the first clique
    that holds it; None (zeros) without a warm start, or for one over another domain or with a clique that no
    clique here holds."""
    if warm_start is None or warm_start.sizes != problem.sizes or list(warm_start.names) != list(problem.names):
        return None
    homes = [next((i for i, c in enumerate(problem.cliques) if set(o) <= set(c)), None) for o in warm_start.cliques]
    if any(h is None for h in homes):
        return None
    out = [np.zeros(problem.shapes[c]) for c in problem.cliques]
    for o, pot, h in zip(warm_start.cliques, warm_start.potentials, homes):
        out[h] += NamedTable(o, pot).aligned(problem.cliques[h])
    return out


def fit(
    artifact: MeasurementsArtifact,
    iters: int = 1000,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
    warm_start: "PGMModel | None" = None,
    converge: bool = True,
    accelerated: bool | None = None,
) -> PGMModel:
    """Fit Private-PGM to every measurement in the artifact (:mod:`dpbeam.synth.mirror`).

    At most ``iters`` iterations, checked every ``BLOCK``; with ``converge`` the fit stops earlier once the noisy
    loss has levelled off (see :data:`PATIENCE`). ``warm_start``, a model fitted to a subset of these measurements
    (e.g. the refinement's), is where the potentials start. ``progress(n)`` is called after each block with the
    iterations it ran. ``seed`` is unused: the fit is deterministic.

    ``accelerated`` (None: when the artifact carries AIM's round log) fits with Nesterov momentum
    (:meth:`MirrorDescent.accelerated_step`). AIM's artifacts hold dozens of measurements down to small sigma, where
    1,000 plain steps from zero stop far from the optimum (Adult, eps 10, AIM with 300-iteration refits: mean 2-way
    TVD 0.0268 plain against 0.0208 accelerated, 3 runs each); on mst-refined's artifacts the two were alike within
    the runs' spread (eps 1: 0.0401 / 0.0416, eps 10: 0.0305 / 0.0287, plain / accelerated, 3 runs each), so those
    keep the plain fit."""
    if accelerated is None:
        accelerated = bool(artifact.rounds)
    return fit_problem(problem_of(artifact), artifact.estimated_total(), list(artifact.domain.names), iters,
                       progress=progress, warm_start=warm_start, converge=converge, accelerated=accelerated)


def fit_problem(
    problem: Problem,
    total: float,
    names: list[str],
    iters: int,
    progress: Callable[[int], None] | None = None,
    warm_start: "PGMModel | None" = None,
    converge: bool = True,
    independent_start: bool = False,
    growth: float | None = None,
    accelerated: bool = False,
) -> PGMModel:
    """:func:`fit` on a :class:`~dpbeam.synth.mirror.Problem` (measurements already in numpy), for callers that hold
    no artifact (AIM's rounds). Without a usable ``warm_start`` the potentials start at zero, or, with
    ``independent_start``, at the independent model of the noisy 1-way measurements
    (:func:`dpbeam.synth.mirror.independent_start`). With ``converge=False`` exactly ``iters`` iterations run.
    ``growth``: the step-size growth on every accepted step (None: :meth:`MirrorDescent.start`'s default).
    ``accelerated``: Nesterov momentum with restarts (:meth:`MirrorDescent.accelerated_step`; ``iters`` counts
    inferences, two per step); a cold start first takes plain steps while the step size doubles (at most ``BLOCK``)."""
    start = _start(warm_start, problem)
    alpha = None if start is None else warm_start.step
    if start is None and independent_start:
        start = independent_start_of(problem)
    state = MirrorDescent.start(problem, total, start, alpha, growth)
    tolerance = float(np.sqrt(sum(np.size(m.values) for m in problem.measurements) / 2))
    done, calm, last = 0, 0, np.inf
    if accelerated and alpha is None:  # find the step size first: plain steps until the doubling stops
        while done < min(BLOCK, iters) and state.growth == 2.0:
            state.step()
            done += 1
    while done < iters:
        n = min(BLOCK, iters - done)
        state.run(n, accelerated)
        done += n
        if progress is not None:
            progress(n)
        calm = calm + 1 if last - state.loss < tolerance else 0
        last = state.loss
        if converge and calm >= PATIENCE:
            break
    tables = {c: NamedTable(c, p) for c, p in zip(problem.cliques, state.potentials)}
    return PGMModel.from_tables(tables, problem.sizes, total, names, iters=done, tree=problem.tree, step=state.alpha)
