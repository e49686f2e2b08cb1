"""Named numpy factors (:class:`NamedTable`): small tables whose axes are named columns, for projections, products
and quotients of a graphical model's marginals (:mod:`dpbeam.synth.cliquetree`, :mod:`dpbeam.synth.pgm`).

Post-processing only. The inference itself is :class:`dpbeam.synth.cliquetree.Inference`.
"""

from __future__ import annotations

from dataclasses import dataclass

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

    def times(self, other: "NamedTable") -> "NamedTable":
        names = tuple(dict.fromkeys(self.names + other.names))
        return NamedTable(names, self.aligned(names) * other.aligned(names))

    def divided_by(self, other: "NamedTable") -> "NamedTable":
        names = tuple(dict.fromkeys(self.names + other.names))
        x, y = np.broadcast_arrays(self.aligned(names), other.aligned(names))
        return NamedTable(names, np.divide(x, y, out=np.zeros(x.shape), where=y != 0))
