"""Exact inference on a junction tree in numpy: calibrate the clique marginals of a graphical model once.

Post-processing only. mbi does the same in JAX, but its message passing is compiled per junction tree (a static
argument hashed by identity), which on two cores costs more than the inference itself; here the tables are small
enough that numpy is quicker end to end and nothing is compiled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

Clique = tuple[str, ...]


@dataclass(frozen=True)
class NamedTable:
    """A small numpy factor: an array whose axes are named columns."""

    names: Clique
    values: np.ndarray

    def aligned(self, names: Clique) -> np.ndarray:
        """The values with axes in ``names`` order, size-1 axes for names this table lacks (for broadcasting)."""
        mine = [n for n in names if n in self.names]
        moved = np.transpose(self.values, [self.names.index(n) for n in mine])
        return moved.reshape([self.values.shape[self.names.index(n)] if n in self.names else 1 for n in names])

    def project(self, keep: Clique) -> "NamedTable":
        """Sum out every axis not in ``keep``; axes in ``keep`` order."""
        keep = tuple(dict.fromkeys(keep))
        summed = self.values.sum(axis=tuple(i for i, n in enumerate(self.names) if n not in keep))
        rest = [n for n in self.names if n in keep]
        return NamedTable(keep, np.transpose(summed, [rest.index(n) for n in keep]))

    def logsumexp(self, keep: Clique) -> "NamedTable":
        """Log-space projection: log of the sum of exp over every axis not in ``keep``."""
        axes = tuple(i for i, n in enumerate(self.names) if n not in keep)
        if not axes:
            return NamedTable(self.names, self.values).project_order(keep)
        top = np.max(self.values, axis=axes, keepdims=True)
        top = np.where(np.isfinite(top), top, 0.0)
        out = np.log(np.sum(np.exp(self.values - top), axis=axes)) + np.squeeze(top, axis=axes)
        rest = tuple(n for n in self.names if n in keep)
        return NamedTable(rest, out).project_order(keep)

    def project_order(self, keep: Clique) -> "NamedTable":
        keep = tuple(n for n in keep if n in self.names)
        return NamedTable(keep, np.transpose(self.values, [self.names.index(n) for n in keep]))

    def times(self, other: "NamedTable") -> "NamedTable":
        names = tuple(dict.fromkeys(self.names + other.names))
        return NamedTable(names, self.aligned(names) * other.aligned(names))

    def divided_by(self, other: "NamedTable") -> "NamedTable":
        names = tuple(dict.fromkeys(self.names + other.names))
        x, y = np.broadcast_arrays(self.aligned(names), other.aligned(names))
        return NamedTable(names, np.divide(x, y, out=np.zeros(x.shape), where=y != 0))


def calibrate(
    log_potentials: Sequence[NamedTable],
    cliques: Sequence[Clique],
    message_order: Sequence[tuple[Clique, Clique]],
    sizes: Mapping[str, int],
    total: float,
) -> dict[Clique, np.ndarray]:
    """Every junction-tree clique's marginal (counts summing to ``total``, axes in the clique's order), by HUGIN
    message passing in log space over ``message_order`` (upward then downward, as mbi's ``message_passing_order``
    gives). Each potential is added to the first clique that holds it."""
    beliefs = {c: np.zeros([sizes[n] for n in c]) for c in cliques}
    for pot in log_potentials:
        home = next(c for c in cliques if set(pot.names) <= set(c))
        beliefs[home] = beliefs[home] + pot.aligned(home)
    messages: dict[tuple[Clique, Clique], NamedTable] = {}
    for i, j in message_order:
        sep = tuple(n for n in i if n in j)
        tau = NamedTable(i, beliefs[i])
        if (j, i) in messages:
            tau = NamedTable(i, beliefs[i] - messages[(j, i)].aligned(i))
        messages[(i, j)] = tau.logsumexp(sep)
        beliefs[j] = beliefs[j] + messages[(i, j)].aligned(j)
    out = {}
    for c, b in beliefs.items():
        top = float(np.max(b))
        p = np.exp(b - top)
        out[c] = p * (total / p.sum())
    return out
