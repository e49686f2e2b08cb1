"""Private-PGM (mbi) as a synthesis engine: exact graphical-model inference, best for narrow or sparse models.

Post-processing only: the model is fitted to the artifact's noisy measurements, and rows are drawn from it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from dpbeam.synth import _jax  # noqa: F401  (must precede mbi)

import mbi  # noqa: E402
import networkx as nx  # noqa: E402
from mbi import estimation, junction_tree, marginal_oracles  # noqa: E402
from mbi.marginal_loss import WeightedQuery  # noqa: E402

from dpbeam.measurements import MeasurementsArtifact  # noqa: E402

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


@contextlib.contextmanager
def _seeded_global_numpy(seed: int) -> Iterator[None]:
    """mbi samples with numpy's global generator; seed it for reproducibility and restore it afterwards."""
    state = np.random.get_state()
    np.random.seed(seed % (2**32))
    try:
        yield
    finally:
        np.random.set_state(state)


@dataclass
class PGMModel:
    """A fitted Private-PGM model over the artifact's model domain."""

    model: mbi.MarkovRandomField
    names: list[str]
    engine: str = ENGINE

    def marginal(self, clique: tuple[str, ...]) -> np.ndarray:
        """The model's marginal (counts, model domain) on a clique."""
        return np.asarray(self.model.project(clique).datavector(flatten=False))

    def pair_marginals(self, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], np.ndarray]:
        """The model's marginals (counts) on many pairs at once, by propagation along the junction tree in numpy.

        mbi answers an arbitrary query by variable elimination, compiled once per query (~0.4 s each on Adult); here
        the junction tree is calibrated once and each pair is a walk from a clique holding one column to a clique
        holding the other, carrying a table over (first column, separator) and multiplying in each clique's
        conditional given its separator."""
        potentials = self.model.potentials
        jtree, _ = junction_tree.make_junction_tree(potentials.domain, potentials.cliques)
        cliques = [tuple(c) for c in jtree.nodes]
        calibrated = marginal_oracles.message_passing_stable(potentials.expand(cliques), float(self.model.total))
        tables = {c: _NamedTable.of(calibrated.project(c)) for c in cliques}
        holding = {n: [c for c in cliques if n in c] for n in self.names}
        out = {}
        for a, b in pairs:
            both = [c for c in holding[a] if b in c]
            if both:
                out[(a, b)] = tables[both[0]].project((a, b)).values
                continue
            path = min(
                (nx.shortest_path(jtree, ca, cb) for ca in holding[a] for cb in holding[b]), key=len
            )
            t = tables[path[0]].project((a,) + tuple(n for n in path[0] if n in path[1] and n != a))
            for i in range(1, len(path)):
                here = tables[path[i]]
                sep = tuple(n for n in path[i] if n in path[i - 1])
                t = t.times(here.divided_by(here.project(sep)))
                nxt = path[i + 1] if i + 1 < len(path) else (b,)
                t = t.project((a,) + tuple(n for n in path[i] if n in nxt and n != a))
            out[(a, b)] = t.project((a, b)).values
        return out

    def sample(self, rows: int, seed: int) -> np.ndarray:
        """Model-domain codes (rows, columns) by mbi's randomized rounding."""
        with _seeded_global_numpy(seed):
            data = self.model.synthetic_data(rows).to_dict()
        return np.stack([np.asarray(data[n]) for n in self.names], axis=1)


@dataclass(frozen=True)
class _NamedTable:
    """A small numpy factor: an array whose axes are named columns."""

    names: tuple[str, ...]
    values: np.ndarray

    @classmethod
    def of(cls, factor) -> "_NamedTable":
        return cls(tuple(factor.domain.attributes), np.asarray(factor.values, dtype=np.float64))

    def project(self, keep: tuple[str, ...]) -> "_NamedTable":
        keep = tuple(dict.fromkeys(keep))
        summed = self.values.sum(axis=tuple(i for i, n in enumerate(self.names) if n not in keep))
        rest = [n for n in self.names if n in keep]
        return _NamedTable(keep, np.transpose(summed, [rest.index(n) for n in keep]))

    def _einsum(self, other: "_NamedTable", op) -> "_NamedTable":
        names = tuple(dict.fromkeys(self.names + other.names))
        letter = {n: chr(97 + i) for i, n in enumerate(names)}
        spec = lambda ns: "".join(letter[n] for n in ns)  # noqa: E731
        ones = np.ones([dict(zip(self.names + other.names, self.values.shape + other.values.shape))[n] for n in names])
        x = np.einsum(f"{spec(self.names)},{spec(names)}->{spec(names)}", self.values, ones)
        y = np.einsum(f"{spec(other.names)},{spec(names)}->{spec(names)}", other.values, ones)
        return _NamedTable(names, op(x, y))

    def times(self, other: "_NamedTable") -> "_NamedTable":
        return self._einsum(other, np.multiply)

    def divided_by(self, other: "_NamedTable") -> "_NamedTable":
        return self._einsum(other, lambda x, y: np.divide(x, y, out=np.zeros_like(x), where=y != 0))


def fit(artifact: MeasurementsArtifact, iters: int = 1000, seed: int = 0, progress=None) -> PGMModel:
    """Fit Private-PGM by mirror descent to every measurement in the artifact. ``progress(n)`` is called as
    iterations complete (mbi reports every 50)."""
    domain = _mbi_domain(artifact)
    callback = None if progress is None else (lambda _value: progress(estimation.CALLBACK_EVERY))
    model = estimation.MirrorDescent().estimate(
        domain, _mbi_measurements(artifact), known_total=artifact.estimated_total(), iters=iters, callback_fn=callback
    )
    return PGMModel(model, artifact.domain.names)
