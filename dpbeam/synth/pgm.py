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
from mbi import estimation, junction_tree  # noqa: E402
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


def junction_tree_cells(artifact: MeasurementsArtifact) -> int:
    """Cells of the largest junction-tree clique of the artifact's measured cliques: the memory Private-PGM needs."""
    domain = _mbi_domain(artifact)
    cliques = [tuple(m.clique) for m in artifact.measurements]
    jtree, _ = junction_tree.make_junction_tree(domain, cliques)
    return max(domain.size(tuple(cl)) for cl in jtree.nodes)


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

    def sample(self, rows: int, seed: int) -> np.ndarray:
        """Model-domain codes (rows, columns) by mbi's randomized rounding."""
        with _seeded_global_numpy(seed):
            data = self.model.synthetic_data(rows).to_dict()
        return np.stack([np.asarray(data[n]) for n in self.names], axis=1)


def fit(artifact: MeasurementsArtifact, iters: int = 3000, seed: int = 0) -> PGMModel:
    """Fit Private-PGM by mirror descent to every measurement in the artifact."""
    domain = _mbi_domain(artifact)
    model = estimation.MirrorDescent().estimate(
        domain, _mbi_measurements(artifact), known_total=artifact.estimated_total(), iters=iters
    )
    return PGMModel(model, artifact.domain.names)
