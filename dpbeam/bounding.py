"""Contribution bounding: keep at most k rows of each privacy unit, chosen by a keyed hash.

Privacy argument. Bounding is a stable transformation from "add/remove one unit with all its rows" to "add/remove at
most k rows": the rows kept for a unit are a function of that unit's own rows and the run key only, so adding or
removing one unit adds or removes at most k kept rows and changes no other unit's choice. Every sensitivity in
dpbeam is derived from this k.

Why a keyed hash. Distributed engines do not agree on row order or arrival order, so "the first k rows" would differ
between local, Beam and Spark. Instead every row gets a score ``H(key, unit, row's codes)`` and a unit keeps its k rows
with the smallest (score, codes). Two rows of one unit with equal scores have equal codes (short of a 64-bit
collision, which the codes tie-break makes harmless), so the kept multiset of codes is the same on every engine.
The per-run secret key means nobody can predict or steer which of their rows survive.

Units are identified by a 128-bit keyed hash of the unit value; two different units collide with probability about
n^2 / 2^129 (below 1e-20 for a billion units). Hashing is vectorized numpy; strings use pandas' SipHash-2-4.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pandas.util import hash_array

from dpbeam.errors import SourceError

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True)
class BoundingKey:
    """The per-run secret that drives row choice. Never written anywhere; a new one per run unless a test pins it."""

    secret: bytes

    @classmethod
    def fresh(cls) -> "BoundingKey":
        return cls(secrets.token_bytes(32))

    def _derive(self, label: str, n: int) -> bytes:
        return hashlib.blake2b(self.secret, digest_size=n, person=label.encode()[:16]).digest()

    @property
    def siphash_keys(self) -> tuple[str, str]:
        """Two 16-character keys for pandas' SipHash (it wants a str of 16 bytes once utf-8 encoded)."""
        k = self._derive("dpbeam-unit-sip", 16).hex()
        return k[:16], k[16:]

    @property
    def words(self) -> tuple[np.uint64, np.uint64, np.uint64]:
        raw = self._derive("dpbeam-words", 24)
        return tuple(np.uint64(int.from_bytes(raw[i : i + 8], "little")) for i in (0, 8, 16))  # type: ignore[return-value]


def mix64(z: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer: a bijective avalanche on uint64 arrays (wrapping arithmetic)."""
    z = z.astype(np.uint64, copy=True)
    z ^= z >> np.uint64(30)
    z *= np.uint64(0xBF58476D1CE4E5B9)
    z ^= z >> np.uint64(27)
    z *= np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return z


def unit_hashes(units: pa.Array | pa.ChunkedArray, key: BoundingKey) -> tuple[np.ndarray, np.ndarray]:
    """A 128-bit keyed hash of each unit value, as two uint64 arrays. Nulls are an error: a row without a unit
    cannot be bounded (engines apply ``privacy.null_units`` first, see :func:`dpbeam.aggregate.drop_null_units`).
    The error carries no count: how many units are null is data."""
    if isinstance(units, pa.ChunkedArray):
        units = units.combine_chunks()
    if pa.types.is_dictionary(units.type):
        units = units.dictionary_decode()
    if units.null_count:
        raise SourceError(
            "the privacy-unit column holds null values; every row needs a unit. Set privacy.null_units: drop, fill "
            "the column before the job, or use unit: row"
        )
    w0, w1, _ = key.words
    if pa.types.is_integer(units.type):
        x = units.cast(pa.int64()).to_numpy().view(np.uint64)
        return mix64(mix64(x ^ w0) + _GOLDEN), mix64(mix64(x ^ w1) + _GOLDEN)
    if not (pa.types.is_string(units.type) or pa.types.is_large_string(units.type)):
        units = pc.cast(units, pa.string())
    values = units.to_numpy(zero_copy_only=False)
    k1, k2 = key.siphash_keys
    return hash_array(values, hash_key=k1, categorize=False), hash_array(values, hash_key=k2, categorize=False)


def row_scores(unit_h1: np.ndarray, codes: np.ndarray, key: BoundingKey) -> np.ndarray:
    """The keyed score of each row: a hash of (unit, the row's codes, key)."""
    s = mix64(unit_h1 ^ key.words[2])
    for j in range(codes.shape[1]):
        salt = np.uint64(((j + 1) * int(_GOLDEN)) % (1 << 64))
        s = mix64(s ^ (codes[:, j].astype(np.uint64) + salt))
    return s


def bound_rows(h1: np.ndarray, h2: np.ndarray, codes: np.ndarray, k: int, key: BoundingKey) -> np.ndarray:
    """Indices of the rows kept: for each unit (h1, h2), its k rows of smallest (score, codes).

    The result is sorted by (unit, score); it depends on the set of rows only, not on their order.
    """
    if len(h1) == 0:
        return np.zeros(0, dtype=np.int64)
    scores = row_scores(h1, codes, key)
    keys = [codes[:, j] for j in range(codes.shape[1] - 1, -1, -1)] + [scores, h2, h1]
    order = np.lexsort(keys)
    uh1, uh2 = h1[order], h2[order]
    new_unit = np.ones(len(order), dtype=bool)
    new_unit[1:] = (uh1[1:] != uh1[:-1]) | (uh2[1:] != uh2[:-1])
    starts = np.flatnonzero(new_unit)
    rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.append(starts, len(order))))
    return order[rank < k]
