"""Encoding to codes and decoding back: round trips, clamping, nulls, other, Arrow types preserved."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from conftest import small_table
from dpbeam.domain import TableDomain, build_table_domain
from dpbeam.encode import decode_codes, encode_batch
from dpbeam.errors import SpecError
from dpbeam.spec import parse_spec


def _domain(columns: dict, schema: pa.Schema) -> TableDomain:
    spec = parse_spec(
        {"source": {"uri": "x.parquet"}, "privacy": {"epsilon": 1, "delta": 1e-6}, "columns": columns,
         "output": {"uri": "y"}}
    )
    return build_table_domain(dict(spec.columns), schema)


def test_round_trip_codes_are_stable():
    """decode then encode gives back the same codes, for every kind, and the Arrow types come back unchanged."""
    t = small_table(500)
    from conftest import small_spec

    dom = _domain(small_spec("x", "y")["columns"], t.schema)
    codes = encode_batch(t, dom)
    out = decode_codes(codes, dom, np.random.default_rng(0))
    assert out.schema.types == [t.schema.field(n).type for n in dom.names]
    np.testing.assert_array_equal(encode_batch(out, dom), codes)


def test_clamping_other_and_nulls():
    t = pa.table({
        "c": pa.array(["a", "zzz", None, "b"]),
        "i": pa.array([-50, 5, 10_000, None], pa.int32()),
        "f": pa.array([-1.0, 0.49, 0.5, 7.0]),
    })
    dom = _domain({
        "c": {"kind": "categorical", "values": ["a", "b"], "nullable": True},
        "i": {"kind": "integer", "bounds": [0, 9], "nullable": True},
        "f": {"kind": "float", "bounds": [0, 1], "bins": 2},
    }, t.schema)
    codes = encode_batch(t, dom)
    assert codes[:, 0].tolist() == [0, 2, 3, 1]  # a, other, null, b
    assert codes[:, 1].tolist() == [0, 5, 9, 10]  # clamped low, 5, clamped high, null
    assert codes[:, 2].tolist() == [0, 0, 1, 1]  # clamped, [0,.5), [.5,1], clamped
    out = decode_codes(codes, dom, np.random.default_rng(0))
    assert out.column("c").to_pylist() == ["a", "__other__", None, "b"]
    assert out.column("i").to_pylist()[3] is None and out.column("i").type == pa.int32()


def test_decoded_values_fall_in_their_bins():
    t = pa.table({"i": pa.array(np.arange(0, 100)), "f": pa.array(np.linspace(0, 1, 100))})
    dom = _domain({"i": {"kind": "integer", "bounds": [0, 99], "bins": 7},
                   "f": {"kind": "float", "bounds": [0, 1], "bins": 3}}, t.schema)
    codes = np.stack([np.repeat(np.arange(7), 200), np.tile(np.arange(3), 1400)[:1400]], 1)
    out = decode_codes(codes, dom, np.random.default_rng(1))
    edges = np.asarray(dom["i"].edges)
    i = out.column("i").to_numpy()
    assert np.all((i >= edges[codes[:, 0]]) & (i < edges[codes[:, 0] + 1]))
    f = out.column("f").to_numpy()
    fe = np.asarray(dom["f"].edges)
    assert np.all((f >= fe[codes[:, 1]]) & (f <= fe[codes[:, 1] + 1]))


def test_dates_and_zoned_timestamps():
    t = pa.table({
        "d": pa.array([dt.date(2020, 1, 31), dt.date(2020, 2, 1), dt.date(2019, 5, 1)]),
        "ts": pa.array([dt.datetime(2020, 1, 1, 12), dt.datetime(2020, 6, 30), dt.datetime(2030, 1, 1)],
                       pa.timestamp("ms", tz="Europe/Berlin")),
    })
    dom = _domain({
        "d": {"kind": "datetime", "bounds": ["2020-01-01", "2020-12-31"], "granularity": "month"},
        "ts": {"kind": "datetime", "bounds": ["2020-01-01", "2020-12-31"], "bins": 4},
    }, t.schema)
    codes = encode_batch(t, dom)
    assert codes[:, 0].tolist() == [0, 1, 0]
    assert codes[:, 1].tolist() == [0, 1, 3]
    out = decode_codes(codes, dom, np.random.default_rng(0))
    assert out.column("d").type == pa.date32() and out.column("ts").type == pa.timestamp("ms", tz="Europe/Berlin")
    np.testing.assert_array_equal(encode_batch(out, dom), codes)


def test_dictionary_and_integer_categoricals():
    t = pa.table({"c": pa.array(["x", "y", "x", "q"]).dictionary_encode(), "n": pa.array([3, 1, 2, 3])})
    dom = _domain({"c": {"kind": "categorical", "values": ["x", "y"]},
                   "n": {"kind": "categorical", "values": [1, 3]}}, t.schema)
    codes = encode_batch(t, dom)
    assert codes[:, 0].tolist() == [0, 1, 0, 2]
    assert codes[:, 1].tolist() == [1, 0, 2, 1]
    out = decode_codes(codes, dom, np.random.default_rng(0))
    assert out.column("n").to_pylist() == [3, 1, -1, 3]  # "other" of an integer column: -1, a value it can hold


@pytest.mark.parametrize("gran,n", [("day", 366), ("week", 53), ("month", 12), ("year", 1), ("hour", None)])
def test_datetime_granularity_bins(gran, n):
    t = pa.table({"d": pa.array([dt.datetime(2020, 3, 4)])})
    columns = {"d": {"kind": "datetime", "bounds": ["2020-01-01", "2020-12-31T23:59:59"], "granularity": gran}}
    if n is None:  # 8784 hourly bins: too many, and the error says what to change
        with pytest.raises(SpecError, match="coarser granularity"):
            _domain(columns, t.schema)
        return
    assert abs(_domain(columns, t.schema)["d"].n_values - n) <= 1
