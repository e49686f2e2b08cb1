"""zCDP accounting: (epsilon, delta) <-> rho, a budget plan split by stage, and the record of every charge.

dpbeam's internal currency is zero-concentrated DP (Bun & Steinke 2016): a job is rho-zCDP for adding or removing
one privacy unit. The user states (epsilon, delta); we convert once with OpenDP's zCDP -> approximate-DP conversion
(the tight bound of Canonne, Kamath & Steinke 2020, as implemented in OpenDP's ``make_zCDP_to_approxDP``), split rho
across stages by a stated plan, and refuse any charge beyond a stage's allotment. zCDP composes by addition: a job
whose stages spend rho_1, ..., rho_m, each within its allotment, is rho-zCDP for the budget's rho.

What is reported is the budget, never the realised spend. Whether a stage spends all of its allotment can depend on
the data (refinement that finds nothing it may measure, a cell limit that blocks every candidate), and stages'
parameters are chosen adaptively from earlier outputs; what holds whatever the data is the budget's rho (a Renyi
filter, see :meth:`ZCDPAccountant.replan`). So the record states (epsilon, delta, rho) of the budget and a privacy
profile (epsilon over a grid of delta) from the same rho; the rho charged per stage is kept as information only.

Charges are checked exactly (rational arithmetic on the floats, no tolerance): the mechanisms' noise scales err safe
(:func:`dpbeam.privacy.noise.gaussian_sigma`, :func:`dpbeam.privacy.selection.em_scale`), so no charge needs slack.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Iterable, Mapping

from dpbeam.errors import BudgetError
from dpbeam.privacy._opendp import dp
from dpbeam.privacy.noise import require_noise_never_disabled

# The deltas of the privacy profile (as google/dpsynth's report gives it): epsilon at each, from the same rho.
PROFILE_DELTAS = (1e-5, 1e-6, 1e-7, 1e-8, 1e-9, 1e-10)

CHARGED_NOTE = (
    "information only, not the guarantee: what the mechanisms were charged. It can fall short of the budget when a "
    "stage finds nothing to measure, and that shortfall depends on the data; the guarantee is the budget's "
    "(epsilon, delta, rho) above."
)


def _exact_sum(values: Iterable[float]) -> Fraction:
    return sum((Fraction(v) for v in values), Fraction(0))


def epsilon_for(rho: float, delta: float) -> float:
    """The smallest epsilon such that rho-zCDP implies (epsilon, delta)-DP, by OpenDP's conversion."""
    if rho <= 0:
        return 0.0
    # A Gaussian mechanism with scale 1/sqrt(2 rho) on a sensitivity-1 query is exactly rho-zCDP; ask OpenDP to
    # convert that measurement's privacy loss, so the conversion is OpenDP's and not a formula copied here.
    scale = 1.0 / math.sqrt(2.0 * rho)
    meas = dp.m.make_gaussian(dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float), scale=scale)
    return float(dp.c.make_zCDP_to_approxDP(meas).map(1.0).epsilon(delta))


def rho_for(epsilon: float, delta: float) -> float:
    """The largest rho such that rho-zCDP implies (epsilon, delta)-DP (bisection over :func:`epsilon_for`).

    The answer errs low: the returned rho converts back to at most ``epsilon``.
    """
    if epsilon <= 0 or not 0 < delta < 1:
        raise ValueError("need epsilon > 0 and 0 < delta < 1")
    lo, hi = 0.0, max(1.0, epsilon)
    while epsilon_for(hi, delta) < epsilon:
        hi *= 2
    for _ in range(100):
        mid = (lo + hi) / 2
        if epsilon_for(mid, delta) <= epsilon:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * hi:
            break
    return lo


def privacy_profile(rho: float, delta_thresholds: float = 0.0) -> list[dict[str, float | None]]:
    """Epsilon at each delta of :data:`PROFILE_DELTAS` for a (rho, delta_thresholds)-approximate zCDP release:
    (epsilon_for(rho, d - delta_thresholds), d)-DP for every total d above the thresholds' delta. At or below it this
    analysis gives no finite epsilon: the entry's epsilon is None."""
    return [
        {"delta": d, "epsilon": epsilon_for(rho, d - delta_thresholds) if d > delta_thresholds else None}
        for d in PROFILE_DELTAS
    ]


def safe_share(total: float, parts: int) -> float:
    """The largest float x with ``parts`` * x <= ``total`` exactly (``total / parts`` can round up by an ulp)."""
    if parts < 1:
        raise ValueError("parts must be a positive integer")
    share = total / parts
    while Fraction(share) * parts > Fraction(total):
        share = math.nextafter(share, 0.0)
    return share


@dataclass(frozen=True)
class Charge:
    """One private release: which stage, which mechanism, what rho, and the facts that justify it."""

    stage: str
    mechanism: str
    rho: float
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"stage": self.stage, "mechanism": self.mechanism, "rho": self.rho, **self.detail}


class ZCDPAccountant:
    """Holds a total rho, a plan that splits it across named stages, and every charge made against it.

    A charge that would overspend its stage raises :class:`BudgetError` before any noise is drawn. The comparison is
    exact (rational arithmetic on the floats), with no tolerance.

    Approximate zCDP. Mechanisms such as thresholded partition selection are (rho_i, delta_i)-approximate zCDP: with
    ``delta_reserved`` > 0 the accountant sets aside that much of delta for them and converts rho with the rest.
    Composition adds rhos and adds deltas; the release is (rho, delta_reserved)-approximate zCDP, hence
    (epsilon_for(rho, delta - delta_reserved), delta)-DP, and epsilon_for(rho, delta - delta_reserved) <= epsilon.
    """

    def __init__(self, epsilon: float, delta: float, plan: dict[str, float], delta_reserved: float = 0.0):
        if not plan or any(f <= 0 for f in plan.values()) or abs(sum(plan.values()) - 1.0) > 1e-9:
            raise ValueError(f"a budget plan needs positive fractions that sum to 1; got {plan}")
        if not 0 <= delta_reserved < delta:
            raise ValueError("delta_reserved must be in [0, delta)")
        self.epsilon = epsilon
        self.delta = delta
        self.delta_reserved = delta_reserved
        self.rho = rho_for(epsilon, delta - delta_reserved)
        self.plan = dict(plan)
        self.charges: list[Charge] = []
        self.reallocations: list[dict[str, Any]] = []

    def allotted(self, stage: str) -> float:
        """The rho the plan gives ``stage``."""
        if stage not in self.plan:
            raise KeyError(f"stage {stage!r} is not in the budget plan {list(self.plan)}")
        return self.rho * self.plan[stage]

    def spent(self, stage: str | None = None) -> float:
        return math.fsum(c.rho for c in self.charges if stage is None or c.stage == stage)

    def replan(self, fractions: Mapping[str, float]) -> None:
        """Split everything allotted to the stages that have spent nothing anew: ``fractions`` (summing to 1) over
        new or existing stage names.

        Why this keeps the guarantee: the total rho is fixed before the run, and the new split is chosen from outputs
        already released. A rho-zCDP budget is a Renyi-DP budget of rho * alpha at every order alpha, and Renyi
        filters (Feldman & Zrnic 2021, Thm 3.1) allow each mechanism's parameters to depend on earlier outputs as long
        as the sum stays within the budget at every order; so the adaptive composition is still rho-zCDP."""
        if abs(sum(fractions.values()) - 1.0) > 1e-9 or any(f <= 0 for f in fractions.values()):
            raise ValueError("replan fractions must be positive and sum to 1")
        spent = {s for s in self.plan if self.spent(s) > 0}
        if spent & set(fractions):
            raise BudgetError(f"cannot replan stages that have already spent: {sorted(spent & set(fractions))}")
        free = sum(f for s, f in self.plan.items() if s not in spent)
        before = dict(self.plan)
        self.plan = {**{s: self.plan[s] for s in spent}, **{s: free * f for s, f in fractions.items()}}
        self.reallocations.append({"before": before, "after": dict(self.plan)})

    def delta_spent(self) -> float:
        return math.fsum(c.detail.get("delta", 0.0) for c in self.charges)

    def delta_share(self, parts: int) -> float:
        """The largest float x with ``parts`` * x <= delta_reserved exactly: the delta each of ``parts``
        approximate-DP mechanisms may spend so that together they stay within the reserve (plain division can round
        up by an ulp)."""
        return safe_share(self.delta_reserved, parts)

    def check(self, stage: str, rho: float, delta: float = 0.0) -> None:
        """Refuse, before anything is released, a charge the stage cannot afford (compared exactly)."""
        if rho < 0 or delta < 0:
            raise ValueError("a charge cannot be negative")
        spent = _exact_sum(c.rho for c in self.charges if c.stage == stage)
        if spent + Fraction(rho) > Fraction(self.allotted(stage)):
            raise BudgetError(
                f"stage {stage!r} would spend rho={float(spent + Fraction(rho)):.17g} but the plan allots "
                f"{self.allotted(stage):.17g}"
            )
        delta_spent = _exact_sum(c.detail.get("delta", 0.0) for c in self.charges)
        if delta_spent + Fraction(delta) > Fraction(self.delta_reserved):
            raise BudgetError(f"approximate-DP charges would spend delta={float(delta_spent + Fraction(delta)):.17g} "
                              f"but {self.delta_reserved:.17g} is reserved for them")

    def charge(self, stage: str, mechanism: str, rho: float, **detail: Any) -> Charge:
        self.check(stage, rho, detail.get("delta", 0.0))
        c = Charge(stage, mechanism, rho, detail)
        self.charges.append(c)
        return c

    @property
    def approximate(self) -> bool:
        """Whether delta is reserved for approximate-DP mechanisms (thresholding): the release is then approximate
        zCDP, (rho, delta_reserved), not pure rho-zCDP."""
        return self.delta_reserved > 0

    def privacy_profile(self) -> list[dict[str, float | None]]:
        """Epsilon at each delta of :data:`PROFILE_DELTAS`, from the budget's rho (see :func:`privacy_profile`)."""
        return privacy_profile(self.rho, self.delta_reserved)

    def record(self) -> dict[str, Any]:
        """The guarantee (the budget's epsilon, delta, rho and the privacy profile), the plan, and every charge.

        Refused in a process where noise was switched off by the test hook (it would describe noise that was never
        added)."""
        require_noise_never_disabled("a privacy record")
        stages = {
            s: {"fraction": f, "rho_allotted": self.allotted(s), "rho_charged": self.spent(s)}
            for s, f in self.plan.items()
        }
        return {
            "measure": "zero-concentrated DP (rho-zCDP), converted to (epsilon, delta)-DP with OpenDP",
            "guarantee": "approximate zCDP" if self.approximate else "zCDP",
            "epsilon": self.epsilon,
            "delta": self.delta,
            "rho": self.rho,
            "delta_thresholds": self.delta_reserved,
            "privacy_profile": self.privacy_profile(),
            "stages": stages,
            "charged": {"rho": self.spent(), "delta": self.delta_spent(), "note": CHARGED_NOTE},
            "reallocations": self.reallocations,
            "charges": [c.to_json() for c in self.charges],
        }


# ----------------------------------------------------------------------------------------------------------------------
# Composition with DP-SGD (task-guided synthesis, :mod:`dpbeam.task`)

# Renyi orders: dp_accounting's defaults (1.1 to 1024) plus a smaller and two larger ones, which small rho and many
# DP-SGD steps can need. A superset of the defaults: the conversion can only be tighter than dp_accounting's default.
def _orders() -> tuple[float, ...]:
    from dp_accounting.rdp import rdp_privacy_accountant as rdp

    return tuple(sorted(set(rdp.DEFAULT_RDP_ORDERS) | {1.05, 2048.0, 4096.0}))


MAX_NOISE_MULTIPLIER = 1e4


def _composed_event(rho: float, sample_rate: float, noise_multiplier: float, steps: int):
    """The job as one dp_accounting event: the zCDP part as a Gaussian event with RDP rho * alpha (a Gaussian of noise
    multiplier 1 / sqrt(2 rho) has RDP alpha / (2 sigma^2) = rho * alpha at every order, which is exactly what
    rho-zCDP bounds), composed with ``steps`` Poisson-subsampled Gaussian steps (DP-SGD)."""
    from dp_accounting import dp_event

    events = []
    if rho > 0:
        events.append(dp_event.GaussianDpEvent(1.0 / math.sqrt(2.0 * rho)))
    if steps > 0:
        step = dp_event.PoissonSampledDpEvent(sample_rate, dp_event.GaussianDpEvent(noise_multiplier))
        events.append(dp_event.SelfComposedDpEvent(step, steps))
    return dp_event.ComposedDpEvent(events)


def rdp_curve(rho: float, sample_rate: float, noise_multiplier: float, steps: int) -> list[tuple[float, float]]:
    """(alpha, RDP epsilon(alpha)) of the composed job at each Renyi order (dp_accounting's RDP accountant)."""
    from dp_accounting.rdp import rdp_privacy_accountant as rdp

    acc = rdp.RdpAccountant(list(_orders()))
    acc.compose(_composed_event(rho, sample_rate, noise_multiplier, steps))
    return list(zip(_orders(), (float(x) for x in acc._rdp)))  # noqa: SLF001 (the curve, for the record and tests)


def composed_epsilon(rho: float, sample_rate: float, noise_multiplier: float, steps: int, delta: float) -> float:
    """Epsilon at ``delta`` of rho-zCDP measurements composed with DP-SGD (``steps`` steps, Poisson sampling rate
    ``sample_rate``, noise multiplier ``noise_multiplier``), by RDP composition and dp_accounting's RDP -> (epsilon,
    delta) conversion. RDP, not PLD: the zCDP stages (exponential-mechanism selection among them) have no privacy loss
    distribution, only an RDP curve; RDP composes both exactly at each order."""
    from dp_accounting.rdp import rdp_privacy_accountant as rdp

    acc = rdp.RdpAccountant(list(_orders()))
    acc.compose(_composed_event(rho, sample_rate, noise_multiplier, steps))
    return float(acc.get_epsilon(delta))


def noise_multiplier_for(rho: float, sample_rate: float, steps: int, epsilon: float, delta: float) -> float:
    """The smallest DP-SGD noise multiplier (within 0.1%, erring high) such that the rho-zCDP measurements and the
    DP-SGD steps together are (epsilon, delta)-DP (:func:`composed_epsilon`). Raises :class:`BudgetError` when no
    noise multiplier fits (the zCDP part alone uses the whole budget)."""
    if composed_epsilon(rho, sample_rate, MAX_NOISE_MULTIPLIER, steps, delta) > epsilon:
        raise BudgetError(
            f"with task.budget_share this small the measurements leave no room for DP-SGD within epsilon {epsilon:g}: "
            "raise task.budget_share, or lower task.epochs or task.sample_rate"
        )
    lo, hi = 0.0, 1.0
    while composed_epsilon(rho, sample_rate, hi, steps, delta) > epsilon:
        lo, hi = hi, hi * 2
    while hi - lo > 1e-3 * hi:
        mid = (lo + hi) / 2
        if composed_epsilon(rho, sample_rate, mid, steps, delta) <= epsilon:
            hi = mid
        else:
            lo = mid
    return hi


class ComposedAccountant(ZCDPAccountant):
    """A :class:`ZCDPAccountant` for the zCDP measurements, plus DP-SGD, composed in Renyi DP against one budget.

    The budget (epsilon, delta) is split by ``dpsgd_share``: the zCDP stages get rho = (1 - dpsgd_share) times the
    rho that the whole budget would give (:func:`rho_for`); DP-SGD gets the rest of the budget, through its noise
    multiplier: the smallest one for which the composition (:func:`composed_epsilon`, at delta - delta_reserved) is at
    most epsilon. Every DP-SGD parameter (sampling rate, steps, clipping bound, noise multiplier) is fixed here, before
    any row is read, so nothing about the training depends on the data but its output.

    The release is (epsilon, delta)-DP: the zCDP part is (rho, delta_reserved)-approximate zCDP, so apart from an event
    of probability delta_reserved its RDP is rho * alpha; DP-SGD's RDP is the subsampled Gaussian's; RDP adds over the
    mechanisms at each order; conversion at delta - delta_reserved, plus delta_reserved, gives delta. The reported
    epsilon is the budget's, which the composition meets whatever the data."""

    def __init__(self, epsilon: float, delta: float, plan: dict[str, float], dpsgd_share: float, sample_rate: float,
                 steps: int, clip: float, delta_reserved: float = 0.0):
        if not 0 < dpsgd_share < 1:
            raise ValueError("dpsgd_share must be in (0, 1)")
        super().__init__(epsilon, delta, plan, delta_reserved=delta_reserved)
        self.rho_budget = self.rho
        self.rho = self.rho_budget * (1.0 - dpsgd_share)
        self.dpsgd_share = dpsgd_share
        self.sample_rate = sample_rate
        self.steps = steps
        self.clip = clip
        self.noise_multiplier = noise_multiplier_for(self.rho, sample_rate, steps, epsilon, delta - delta_reserved)

    def epsilon_at(self, delta: float) -> float:
        """Epsilon of the whole composition at total ``delta`` (> delta_reserved)."""
        return composed_epsilon(self.rho, self.sample_rate, self.noise_multiplier, self.steps,
                                delta - self.delta_reserved)

    def dpsgd_epsilon_alone(self, delta: float | None = None) -> float:
        """Epsilon of the DP-SGD training alone (the task model's own guarantee) at ``delta`` (default: the budget's)."""
        return composed_epsilon(0.0, self.sample_rate, self.noise_multiplier, self.steps,
                                self.delta if delta is None else delta)

    def privacy_profile(self) -> list[dict[str, float | None]]:
        """Epsilon of the composition at each delta of :data:`PROFILE_DELTAS` (None at or below delta_reserved)."""
        return [{"delta": d, "epsilon": self.epsilon_at(d) if d > self.delta_reserved else None}
                for d in PROFILE_DELTAS]

    def dpsgd_record(self) -> dict[str, Any]:
        """DP-SGD's part of the record: its parameters and what they protect."""
        return {
            "mechanism": "DP-SGD (Opacus): Poisson sampling of privacy units, per-unit clipping, Gaussian noise",
            "protects": "one privacy unit: its <= k bounded rows form one training example whose summed loss "
                        "gradient is clipped to clip_norm",
            "sensitivity_l2": self.clip,
            "sample_rate": self.sample_rate,
            "steps": self.steps,
            "clip_norm": self.clip,
            "noise_multiplier": self.noise_multiplier,
            "noise_stddev": self.noise_multiplier * self.clip,
            "budget_share": self.dpsgd_share,
            "epsilon_alone": self.dpsgd_epsilon_alone(),
        }

    def record(self) -> dict[str, Any]:
        """The guarantee of the composition (the budget's epsilon and delta, the profile from the composed RDP curve),
        its split (the zCDP measurements' rho, DP-SGD's parameters), and the zCDP charges."""
        out = super().record()
        dprime = self.delta - self.delta_reserved
        out.update(
            measure="Renyi DP: the rho-zCDP measurements (RDP rho * alpha) composed with DP-SGD (Poisson-subsampled "
                    "Gaussian) by dp_accounting's RDP accountant, converted to (epsilon, delta)-DP",
            guarantee="RDP composition of " + ("approximate zCDP" if self.approximate else "zCDP") + " and DP-SGD",
            composition={
                "accountant": "dp_accounting RDP",
                "epsilon_composed": self.epsilon_at(self.delta),
                "rho_budget": self.rho_budget,
                "split": {
                    "measurements": {"rho": self.rho, "share": 1.0 - self.dpsgd_share,
                                     "epsilon_alone": epsilon_for(self.rho, dprime)},
                    "dpsgd": {"share": self.dpsgd_share, "epsilon_alone": self.dpsgd_epsilon_alone(dprime)},
                },
            },
            dpsgd=self.dpsgd_record(),
        )
        return out
