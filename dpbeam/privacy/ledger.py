"""The privacy ledger: every release per (dataset, privacy unit), and budgets that scheduled runs cannot overspend.

A dataset is a name a team gives to one sensitive table and its privacy unit (``dpbeam ledger set-budget``). Its
budget is an (epsilon, delta) for its whole life, and optionally a second (epsilon, delta over a sliding window of
days), as warehouse DP products offer. A run moves through states, each a single transaction:

    reserved   at plan time, after every spec check and before any row is read; counts against the budget until
               ``expires`` (a run killed while reading data leaves a reservation that stops counting then)
    spent      the measurements exist (noise was drawn and the artifact is about to be written): counts for good
    committed  the synthetic table is committed; the entry holds the statement, the output URIs and the table ref
    released   the run failed before any measurement existed; counts no longer
    expired    a reservation past its time (marked when the next reservation looks)

Accounting. Runs compose in zero-concentrated DP: run i is (rho_i, delta_i)-approximate zCDP, where rho_i is the
planned rho of its spec (what its budget guarantees, never a data-dependent spent figure) and delta_i the part of its
delta set aside for approximate mechanisms (thresholded selection). Composition adds both, so the releases together
are (epsilon_for(sum rho_i, delta - sum delta_i), delta)-DP; a run is admitted only if that epsilon stays within the
dataset's budget, i.e. ``sum rho_i <= rho_for(epsilon, delta - sum delta_i)``.

Concurrency. The reservation reads the budget row FOR UPDATE (PostgreSQL) or holds SQLite's write lock
(BEGIN IMMEDIATE) while it sums the entries and inserts its own, so two runs racing for the last of a budget are
serialized and at most one wins. Storage is any SQLAlchemy URL: a SQLite file (embedded, one host) or PostgreSQL
(shared, many hosts). A ledger that cannot be reached refuses the run: dpbeam never runs without accounting.
"""

from __future__ import annotations

import functools
import json
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any, Iterable

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from dpbeam.errors import BudgetError, DPBeamError

DEFAULT_TTL_S = 24 * 3600.0  # a reservation not marked spent within a day stops counting
COUNTING = ("spent", "committed")  # states that count for good; "reserved" counts until it expires
_TOLERANCE = 1e-9  # relative slack for rho sums (rho_for errs low by about this)

metadata = sa.MetaData()

datasets = sa.Table(
    "dpbeam_datasets",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("privacy_unit", sa.String(200), nullable=False),
    sa.Column("epsilon", sa.Float, nullable=False),
    sa.Column("delta", sa.Float, nullable=False),
    sa.Column("period_days", sa.Float, nullable=True),
    sa.Column("period_epsilon", sa.Float, nullable=True),
    sa.Column("updated", sa.Float, nullable=False),
)

entries = sa.Table(
    "dpbeam_releases",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("dataset", sa.String(200), sa.ForeignKey("dpbeam_datasets.name"), nullable=False, index=True),
    sa.Column("privacy_unit", sa.String(200), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("rho", sa.Float, nullable=False),
    sa.Column("delta_approx", sa.Float, nullable=False),
    sa.Column("epsilon", sa.Float, nullable=False),
    sa.Column("delta", sa.Float, nullable=False),
    sa.Column("spec_sha256", sa.String(64), nullable=False),
    sa.Column("code_version", sa.String(64), nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("expires", sa.Float, nullable=True),
    sa.Column("finished", sa.Float, nullable=True),
    sa.Column("measurements_uri", sa.Text, nullable=True),
    sa.Column("output_uri", sa.Text, nullable=True),
    sa.Column("table_ref", sa.Text, nullable=True),
    sa.Column("statement", sa.Text, nullable=True),
    sa.Column("note", sa.Text, nullable=True),
)


class LedgerError(DPBeamError):
    """The ledger refused: it cannot be reached, the dataset is unknown or conflicts, or an entry is in the wrong
    state."""


class LedgerBudgetError(LedgerError, BudgetError):
    """The run would exceed a dataset's budget."""


def redact(url: str) -> str:
    """The URL without its password, for messages and lineage."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable ledger URL>"


def _code_version() -> str:
    from importlib import metadata as md

    try:
        return md.version("dpbeam")
    except md.PackageNotFoundError:
        return "unknown"


@functools.lru_cache(maxsize=256)
def _rho_for(epsilon: float, delta: float) -> float:
    from dpbeam.privacy.accountant import rho_for

    return rho_for(epsilon, delta) if delta > 0 else 0.0


def _epsilon_for(rho: float, delta: float) -> float:
    from dpbeam.privacy.accountant import epsilon_for

    return epsilon_for(rho, delta) if delta > 0 else math.inf


@dataclass(frozen=True)
class Budget:
    """A dataset's budget and what its releases use of it (entries that count, at the time of asking)."""

    dataset: str
    privacy_unit: str
    epsilon: float
    delta: float
    period_days: float | None
    period_epsilon: float | None
    rho_used: float
    delta_used: float
    period_rho_used: float
    period_delta_used: float

    @property
    def rho_total(self) -> float:
        """The rho the lifetime budget allows after the deltas already set aside."""
        return _rho_for(self.epsilon, self.delta - self.delta_used)

    @property
    def rho_left(self) -> float:
        return max(0.0, self.rho_total - self.rho_used)

    @property
    def period_rho_left(self) -> float | None:
        if self.period_epsilon is None:
            return None
        return max(0.0, _rho_for(self.period_epsilon, self.delta - self.period_delta_used) - self.period_rho_used)

    def to_json(self) -> dict[str, Any]:
        out = {
            "dataset": self.dataset, "privacy_unit": self.privacy_unit, "epsilon": self.epsilon, "delta": self.delta,
            "rho_total": self.rho_total, "rho_used": self.rho_used, "rho_left": self.rho_left,
            "delta_used_by_thresholds": self.delta_used,
            "epsilon_used": _epsilon_for(self.rho_used, self.delta - self.delta_used) if self.rho_used else 0.0,
        }
        if self.period_epsilon is not None:
            out.update(period_days=self.period_days, period_epsilon=self.period_epsilon,
                       period_rho_used=self.period_rho_used, period_rho_left=self.period_rho_left)
        return out


class Ledger:
    """A ledger at a SQLAlchemy URL (``sqlite:///path/ledger.db``, ``postgresql+psycopg://...``)."""

    def __init__(self, url: str, ttl_s: float = DEFAULT_TTL_S):
        self.url = url
        self.ttl_s = ttl_s
        try:
            self.engine = _engine(url)
            _create(self.engine)
        except sa.exc.SQLAlchemyError as err:
            raise LedgerError(
                f"the privacy ledger at {redact(url)} cannot be reached ({type(err.orig or err).__name__}); dpbeam "
                "never runs without accounting: fix ledger.uri in the spec, or start the database"
            ) from None

    def close(self) -> None:
        self.engine.dispose()

    def _tx(self):
        try:
            return self.engine.begin()
        except sa.exc.SQLAlchemyError as err:
            raise LedgerError(f"the privacy ledger at {redact(self.url)} cannot be reached "
                              f"({type(err.orig or err).__name__}); the run is refused") from None

    # ------------------------------------------------------------------------------------------------------------------
    # Budgets

    def set_budget(self, dataset: str, privacy_unit: str, epsilon: float, delta: float,
                   period_days: float | None = None, period_epsilon: float | None = None) -> Budget:
        """Create or change a dataset's budget. The privacy unit of an existing dataset cannot change: a dataset is
        one table with one unit (give another name to a table released under another unit)."""
        if not (epsilon > 0 and 0 < delta < 1):
            raise LedgerError("a budget needs epsilon > 0 and 0 < delta < 1")
        if (period_days is None) != (period_epsilon is None):
            raise LedgerError("give both --period-days and --period-epsilon, or neither")
        if period_days is not None and not (period_days > 0 and 0 < period_epsilon <= epsilon):
            raise LedgerError("a period budget needs period_days > 0 and 0 < period_epsilon <= epsilon")
        with self._tx() as c:
            row = _dataset_row(c, dataset)
            values = dict(privacy_unit=privacy_unit, epsilon=epsilon, delta=delta, period_days=period_days,
                          period_epsilon=period_epsilon, updated=time.time())
            if row is None:
                c.execute(datasets.insert().values(name=dataset, **values))
            else:
                _same_unit(row, privacy_unit)
                c.execute(datasets.update().where(datasets.c.name == dataset).values(**values))
        return self.budget(dataset)

    def budget(self, dataset: str) -> Budget:
        with self._tx() as c:
            row = _dataset_row(c, dataset)
            if row is None:
                raise LedgerError(f"dataset {dataset!r} has no budget in the ledger; set one with "
                                  f"`dpbeam ledger set-budget {dataset} --unit UNIT --epsilon E --delta D`")
            return _budget(c, row, time.time())

    def datasets(self) -> list[str]:
        with self._tx() as c:
            return [r.name for r in c.execute(sa.select(datasets.c.name).order_by(datasets.c.name))]

    # ------------------------------------------------------------------------------------------------------------------
    # A run

    def reserve(self, dataset: str, privacy_unit: str, rho: float, delta_approx: float, epsilon: float, delta: float,
                spec_sha256: str, ttl_s: float | None = None) -> "Reservation":
        """Reserve a run's budget in one transaction, or refuse it with what is left. ``rho`` and ``delta_approx``
        are the run's planned rho and the delta it sets aside for approximate mechanisms; ``epsilon``/``delta`` are
        its spec's (recorded)."""
        now = time.time()
        ttl = self.ttl_s if ttl_s is None else ttl_s
        with self._tx() as c:
            row = _dataset_row(c, dataset, lock=True)
            if row is None:
                raise LedgerError(f"dataset {dataset!r} has no budget in the ledger; set one before the first run "
                                  f"with `dpbeam ledger set-budget {dataset} --unit {privacy_unit} --epsilon E "
                                  "--delta D`")
            _same_unit(row, privacy_unit)
            c.execute(entries.update().where(entries.c.dataset == dataset, entries.c.state == "reserved",
                                             entries.c.expires <= now).values(state="expired", finished=now))
            b = _budget(c, row, now)
            _admit(b, rho, delta_approx, delta)
            entry = uuid.uuid4().hex
            c.execute(entries.insert().values(
                id=entry, dataset=dataset, privacy_unit=privacy_unit, state="reserved", rho=rho,
                delta_approx=delta_approx, epsilon=epsilon, delta=delta, spec_sha256=spec_sha256,
                code_version=_code_version(), created=now, expires=now + ttl,
            ))
        return Reservation(self, entry, dataset, spec_sha256)

    def _move(self, entry: str, from_states: Iterable[str], to_state: str, **values: Any) -> dict[str, Any]:
        now = time.time()
        with self._tx() as c:
            row = c.execute(sa.select(entries).where(entries.c.id == entry).with_for_update()).first()
            if row is None:
                raise LedgerError(f"ledger entry {entry} does not exist; `dpbeam ledger history DATASET` lists them")
            if row.state not in from_states:
                raise LedgerError(f"ledger entry {entry} is {row.state}; it cannot become {to_state}")
            c.execute(entries.update().where(entries.c.id == entry).values(state=to_state, **values,
                                                                            **({"finished": now} if to_state != "spent" else {})))
            return row._asdict()

    def mark_spent(self, entry: str, measurements_uri: str | None) -> None:
        """The measurements exist: the entry counts for good from now on (a crash later cannot free the budget). An
        entry whose reservation expired meanwhile is taken back if the budget still allows it, else refused."""
        now = time.time()
        with self._tx() as c:
            row = c.execute(sa.select(entries).where(entries.c.id == entry).with_for_update()).first()
            if row is None:
                raise LedgerError(f"ledger entry {entry} does not exist")
            if row.state in ("expired",) or (row.state == "reserved" and row.expires <= now):
                dataset = _dataset_row(c, row.dataset, lock=True)
                c.execute(entries.update().where(entries.c.id == entry).values(state="expired", finished=now))
                _admit(_budget(c, dataset, now), row.rho, row.delta_approx, row.delta,
                       what="this run outlived its reservation and")
            elif row.state != "reserved":
                raise LedgerError(f"ledger entry {entry} is {row.state}; it cannot become spent")
            c.execute(entries.update().where(entries.c.id == entry).values(
                state="spent", expires=None, measurements_uri=measurements_uri))

    def commit(self, entry: str, spec_sha256: str, output_uri: str | None, measurements_uri: str | None,
               table_ref: dict[str, Any] | None, statement: dict[str, Any] | None) -> None:
        """Record the committed release. Refused when the release was made from another spec than the one reserved
        for (the entry then keeps counting: its measurements exist)."""
        with self._tx() as c:
            row = c.execute(sa.select(entries).where(entries.c.id == entry).with_for_update()).first()
            if row is None:
                raise LedgerError(f"ledger entry {entry} does not exist")
            if row.spec_sha256 != spec_sha256:
                raise LedgerError(
                    f"the spec changed between reservation and commit of ledger entry {entry} (reserved for spec "
                    f"{row.spec_sha256[:12]}, released from {spec_sha256[:12]}); the entry keeps counting. Rerun "
                    "with the spec unchanged while a job runs"
                )
            if row.state not in ("reserved", "spent"):
                raise LedgerError(f"ledger entry {entry} is {row.state}; it cannot be committed")
            c.execute(entries.update().where(entries.c.id == entry).values(
                state="committed", expires=None, finished=time.time(), output_uri=output_uri,
                measurements_uri=measurements_uri or row.measurements_uri,
                table_ref=json.dumps(table_ref, sort_keys=True) if table_ref else None,
                statement=json.dumps(statement, sort_keys=True, default=str) if statement else None,
            ))

    def release(self, entry: str, note: str, force: bool = False) -> None:
        """Free a reservation (the run failed before any measurement existed). A spent entry (its measurements
        exist) is freed only with ``force``, by a person who knows they were never released."""
        states = ("reserved", "expired", "spent") if force else ("reserved", "expired")
        try:
            self._move(entry, states, "released", note=note)
        except LedgerError as err:
            if not force and "is spent" in str(err):
                raise LedgerError(f"ledger entry {entry} is spent: its measurements exist. Free it only if they were "
                                  "never released, with --force") from None
            raise

    def history(self, dataset: str) -> list[dict[str, Any]]:
        with self._tx() as c:
            rows = c.execute(sa.select(entries).where(entries.c.dataset == dataset).order_by(entries.c.created))
            return [r._asdict() for r in rows]

    def entry(self, entry: str) -> dict[str, Any]:
        with self._tx() as c:
            row = c.execute(sa.select(entries).where(entries.c.id == entry)).first()
        if row is None:
            raise LedgerError(f"ledger entry {entry} does not exist")
        return row._asdict()


@dataclass
class Reservation:
    """A run's handle on its ledger entry."""

    ledger: Ledger
    entry: str
    dataset: str
    spec_sha256: str

    def lineage(self) -> dict[str, str]:
        return {"ledger": redact(self.ledger.url), "ledger_dataset": self.dataset, "ledger_entry": self.entry}

    def mark_spent(self, measurements_uri: str | None) -> None:
        self.ledger.mark_spent(self.entry, measurements_uri)

    def commit(self, statement: dict[str, Any], output_uri: str | None, measurements_uri: str | None,
               table_ref: dict[str, Any] | None = None) -> None:
        self.ledger.commit(self.entry, statement.get("spec_sha256") or "", output_uri, measurements_uri, table_ref,
                           statement)

    def release(self, note: str = "the run failed before any measurement existed") -> None:
        """Free the reservation if it is still only reserved; a spent entry keeps counting."""
        try:
            self.ledger.release(self.entry, note)
        except LedgerError:
            pass  # spent (measurements exist) or the ledger is gone: the entry counts until it expires or for good


# ----------------------------------------------------------------------------------------------------------------------
# Helpers


def _engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 60}, poolclass=sa.pool.NullPool)

        @event.listens_for(engine, "connect")
        def _no_implicit_tx(dbapi_conn, _record):  # SQLAlchemy's recipe: let "begin" below own the transaction
            dbapi_conn.isolation_level = None

        @event.listens_for(engine, "begin")
        def _write_lock(conn):  # the write lock from the first statement on: reservations serialize
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return sa.create_engine(url, pool_pre_ping=True, poolclass=sa.pool.NullPool)


def _create(engine: Engine) -> None:
    for attempt in range(3):  # two processes creating the tables at once: one wins, the other sees them
        try:
            metadata.create_all(engine, checkfirst=True)
            return
        except (sa.exc.IntegrityError, sa.exc.ProgrammingError):
            if attempt == 2:
                raise
            time.sleep(0.2)
    with engine.connect():
        pass


def _dataset_row(c: Connection, name: str, lock: bool = False):
    q = sa.select(datasets).where(datasets.c.name == name)
    return c.execute(q.with_for_update() if lock else q).first()


def _same_unit(row, privacy_unit: str) -> None:
    if row.privacy_unit != privacy_unit:
        raise LedgerError(
            f"dataset {row.name!r} is recorded in the ledger with privacy unit {row.privacy_unit!r}, not "
            f"{privacy_unit!r}: budgets of different units do not compose. Use another ledger.dataset name for "
            "this unit, or fix privacy.unit"
        )


def _counting(now: float):
    return sa.or_(entries.c.state.in_(COUNTING), sa.and_(entries.c.state == "reserved", entries.c.expires > now))


def _budget(c: Connection, row, now: float) -> Budget:
    def sums(*where) -> tuple[float, float]:
        rows = c.execute(sa.select(entries.c.rho, entries.c.delta_approx).where(
            entries.c.dataset == row.name, _counting(now), *where)).all()
        return math.fsum(r.rho for r in rows), math.fsum(r.delta_approx for r in rows)

    rho, dlt = sums()
    prho, pdlt = (0.0, 0.0)
    if row.period_days is not None:
        prho, pdlt = sums(entries.c.created > now - row.period_days * 86400)
    return Budget(row.name, row.privacy_unit, row.epsilon, row.delta, row.period_days, row.period_epsilon,
                  rho, dlt, prho, pdlt)


def _admit(b: Budget, rho: float, delta_approx: float, run_delta: float, what: str = "this run") -> None:
    """Refuse a run the budget cannot afford, saying what is left."""
    checks = [("lifetime", b.epsilon, b.rho_used, b.delta_used)]
    if b.period_epsilon is not None:
        checks.append((f"{b.period_days:g}-day", b.period_epsilon, b.period_rho_used, b.period_delta_used))
    for label, eps, used, dlt in checks:
        room_delta = b.delta - dlt - delta_approx
        total = _rho_for(eps, room_delta) if room_delta > 0 else 0.0
        if used + rho <= total * (1 + _TOLERANCE) and room_delta > 0:
            continue
        left = max(0.0, total - used)
        most = _epsilon_for(left, run_delta - delta_approx) if left > 0 else 0.0
        raise LedgerBudgetError(
            f"{what} would exceed the {label} budget of dataset {b.dataset!r} (epsilon {eps:g}, delta {b.delta:g}): "
            f"it needs rho {rho:.6g}, and rho {left:.6g} is left (used: {used:.6g} of {total:.6g}). "
            + (f"Lower privacy.epsilon to at most {most:.4g}, or raise the budget with `dpbeam ledger set-budget`"
               if left > 0 else "Nothing is left: raise the budget with `dpbeam ledger set-budget` if that is "
               "justified, or wait for the period to pass")
        )


def reserve_for(spec: Any, accountant: Any) -> Reservation:
    """Reserve a job's budget (a :class:`dpbeam.spec.JobSpec` with a ``ledger`` section): its planned rho and the
    delta its accountant sets aside for approximate mechanisms, under the spec's dataset name and privacy unit."""
    led = spec.ledger
    unit = spec.privacy.unit_column or "row"
    return Ledger(led.uri, ttl_s=led.reservation_ttl_s).reserve(
        led.dataset, unit, rho=accountant.rho, delta_approx=accountant.delta_reserved, epsilon=spec.privacy.epsilon,
        delta=spec.privacy.delta, spec_sha256=spec.sha256(),
    )
