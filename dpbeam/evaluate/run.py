"""Running an evaluation from a spec or from paths: read, encode, compute every section, plot, write the report.

Two ways in:

- ``evaluate_release``: an existing synthetic table (and its measurements artifact) against the real table it was
  made from, plus real rows it did not see (a holdout) when there are some. Canaries cannot be measured this way:
  they must be planted before measurement.
- ``evaluation_run``: from a job spec, split the source into training and holdout units, plant canary units in the
  training part, run the whole job on it (local engine by default) into the report's own directory, and evaluate.

Everything here except the audit compares with real data: NOT DP, for the data owner only. Nothing here writes into a
release directory (see :func:`check_out_dir`).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dpbeam import lake
from dpbeam.errors import SpecError
from dpbeam.evaluate import plots as P
from dpbeam.evaluate.attacks import canary_reappearance, closeness, make_canaries, membership_inference
from dpbeam.evaluate.audit import run_audit
from dpbeam.evaluate.data import Release, codes, read_release, read_spec_source
from dpbeam.evaluate.fairness import fairness
from dpbeam.evaluate.fidelity import fidelity
from dpbeam.evaluate.report import render
from dpbeam.evaluate.utility import MODELS, utility
from dpbeam.progress import Reporter
from dpbeam.spec import load_spec

HOLDOUT_SHARE = 0.2
CANARIES = 20


def check_out_dir(out_dir: str | Path, releases: Sequence[str] = ()) -> None:
    """Refuse an output directory that is, or lies inside, a release (a synthetic table or measurements artifact):
    the report is not DP and must never travel with one."""
    out = Path(out_dir).resolve()
    for r in releases:
        rp = Path(lake.filesystem(r)[1]).resolve() if "://" not in r or r.startswith("file://") else None
        if rp is not None and (out == rp or rp in out.parents):
            raise SpecError(f"the report directory {out} lies inside the release {r}; the report is not DP and must "
                            "never be part of a release: choose another --out")
    for p in [out, *out.parents]:
        if (p / "_release.json").exists() or (p / "privacy.json").exists() and (p / "manifest.json").exists():
            raise SpecError(f"the report directory {out} lies inside a release directory ({p}); choose another --out")


def evaluate_release(
    real: pa.Table,
    release: Release,
    holdout: pa.Table | None = None,
    target: str | None = None,
    groups: Sequence[str] = (),
    reporter: Reporter | None = None,
    seed: int = 0,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every section that compares ``release`` with ``real`` (and ``holdout``). Returns (evaluation, plots)."""
    reporter = reporter or Reporter()
    domain = release.domain
    target = target or domain.names[-1]
    r, s = codes(real, domain), codes(release.table, domain)
    h = codes(holdout, domain) if holdout is not None else None
    ev: dict[str, Any] = {"not_dp": True, "statement": release.statement, "privacy": release.privacy,
                          "synthetic_uri": release.uri, "measurements_uri": release.measurements_uri}
    sections = 3 + (2 if h is not None else 0)
    with reporter.stage("evaluating (not DP: compares with the real data)", total=sections) as advance:
        advance.set_total(sections, "sections")
        ev["fidelity"] = fidelity(r, s, domain, real, release.table)
        advance(1)
        if h is None:  # no unseen rows: a seeded 80/20 split of the real rows (the synthesizer saw both parts)
            perm = np.random.default_rng(seed).permutation(len(r))
            cut = int(len(r) * (1 - HOLDOUT_SHARE))
            train_r, test_r = r[perm[:cut]], r[perm[cut:]]
        else:
            train_r, test_r = r, h
        util = utility(train_r, test_r, s, domain, target, seed=seed)
        util.summary["test_rows_are"] = ("holdout rows the synthesizer did not see" if h is not None else
                                         "a 20% split of the real rows (the synthesizer saw them too)")
        ev["utility"] = util.summary
        advance(1)
        ev["fairness"] = fairness(r, test_r, s, domain, list(groups), util) if groups else {}
        advance(1)
        if h is not None:
            ev["closeness"] = closeness(r, h, s, domain, seed)
            advance(1)
            ev["membership_inference"] = membership_inference(r, h, s, domain, seed)
            advance(1)
    with reporter.stage("plotting"):
        plots: dict[str, Any] = {"distributions": P.distributions(r, s, domain),
                                 "association": P.association(ev["fidelity"]["association"]), "fairness": {}}
        for g, v in ev["fairness"].items():
            vals = {e["value"]: e["tvd_2way"] for e in v["groups"] if e.get("tvd_2way") is not None}
            if vals:
                plots["fairness"][g] = P.bars(vals, f"mean 2-way TVD within each {g} group", "TVD")
        if "membership_inference" in ev:
            m = ev["membership_inference"]
            plots["roc"] = P.roc({"density ratio": m["density_ratio"], "closest record": m["closest_record"]})
    return ev, plots


def split_units(table: pa.Table, unit_column: str | None, share: float, seed: int) -> tuple[pa.Table, pa.Table]:
    """(training, holdout): a seeded share of the privacy units (of the rows, for row-level jobs) held out."""
    rng = np.random.default_rng(seed)
    if unit_column is None:
        mask = rng.random(table.num_rows) < share
    else:
        units = pc.unique(table[unit_column])
        held = units.take(pa.array(np.flatnonzero(rng.random(len(units)) < share)))
        mask = pc.is_in(table[unit_column], value_set=held).to_numpy(zero_copy_only=False)
    return table.filter(pa.array(~mask)), table.filter(pa.array(mask))


def _canary_units(train: pa.Table, unit_column: str, n: int) -> pa.Array:
    t = train.schema.field(unit_column).type
    if pa.types.is_integer(t):
        start = int(pc.max(train[unit_column]).as_py() or 0) + 1
        return pa.array(np.arange(start, start + n), type=t)
    return pa.array([f"__dpbeam_canary_{i}" for i in range(n)]).cast(t)


def evaluation_run(
    spec_path: str | Path,
    out_dir: str | Path,
    overrides: dict[str, Any] | None = None,
    engine: str = "local",
    holdout_share: float = HOLDOUT_SHARE,
    canaries: int = CANARIES,
    target: str | None = None,
    groups: Sequence[str] = (),
    reporter: Reporter | None = None,
    seed: int = 0,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split, plant canaries, run the job on the training part into ``out_dir/evaluation-run``, evaluate."""
    from dpbeam.job import run_job

    reporter = reporter or Reporter()
    spec = load_spec(spec_path, overrides)
    unit = spec.privacy.unit_column
    columns = list(spec.columns)
    real = read_spec_source(spec)
    train, holdout = split_units(real, unit, holdout_share, seed)
    drawn = make_canaries(train, columns, 2 * canaries, seed)
    planted, control = drawn.slice(0, canaries), drawn.slice(canaries)
    extra = planted.append_column(unit, _canary_units(train, unit, canaries)) if unit else planted
    with_canaries = pa.concat_tables([train, extra.select(train.column_names).cast(train.schema)])
    work = Path(out_dir).resolve() / "evaluation-run"
    with tempfile.TemporaryDirectory(prefix="dpbeam-eval-") as tmp:
        pq.write_table(with_canaries, f"{tmp}/train.parquet")
        run_spec = load_spec(spec_path, {**(overrides or {}), "source.uri": f"{tmp}/train.parquet",
                                         "source.format": "parquet", "output.uri": str(work / "synthetic"),
                                         "output.measurements_uri": str(work / "synthetic.measurements"),
                                         "output.overwrite": True})
        run_job(run_spec, engine=engine, reporter=reporter)
    release = read_release(str(work / "synthetic"), str(work / "synthetic.measurements"))
    ev, plots = evaluate_release(with_canaries.select(columns), release, holdout.select(columns), target, groups,
                                 reporter, seed)
    d = release.domain
    ev["canaries"] = {**canary_reappearance(codes(planted, d), codes(control, d), codes(release.table, d)),
                      "rows_per_canary_unit": 1}
    ev["evaluation_run"] = {"spec": str(spec_path), "engine": engine, "holdout_share": holdout_share,
                            "synthetic_uri": str(work / "synthetic")}
    return ev, plots


def add_audits(ev: dict[str, Any], plots: dict[str, Any], runs: int, reporter: Reporter | None = None,
               workers: int | None = None) -> None:
    """The mechanism audit at the release's claimed (epsilon, delta) and k, and its broken variant."""
    st = ev["statement"]
    k = int(st.get("max_rows_per_unit") or 1)
    results = [run_audit(st["epsilon"], st["delta"], k=k, runs=runs, broken=b, reporter=reporter, workers=workers)
               for b in (False, True)]
    ev["audit"] = [a.to_json() for a in results]
    plots["audit"] = P.bars({("broken (no bounding)" if a.broken else "dpbeam"): a.epsilon_lower_bound for a in results},
                            f"epsilon lower bound ({results[0].confidence:.0%} confidence)", "epsilon",
                            line=results[0].claimed_epsilon, line_label="claimed epsilon")


def write_report(out_dir: str | Path, ev: dict[str, Any], plots: dict[str, Any]) -> Path:
    """``out_dir/report.html`` and ``out_dir/evaluation.json`` (the figures without the plots)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluation.json").write_text(json.dumps(ev, indent=2, default=str) + "\n")
    path = out / "report.html"
    path.write_text(render(ev, plots), encoding="utf-8")
    return path


def headline(ev: dict[str, Any]) -> dict[str, Any]:
    """The figures a closing note quotes."""
    f = ev.get("fidelity", {})
    out: dict[str, Any] = {}
    if f:
        out.update({"tvd_1way": f["release_domain"]["mean_1way"], "tvd_2way": f["release_domain"]["mean_2way"],
                    "tvd_3way_sampled": f["release_domain"]["mean_3way"],
                    "tvd_2way_real_bins": f["real_bins"]["mean_2way"],
                    "association_mean_abs_diff": f["association"]["mean_abs_difference"]})
        if "quality" in f:
            out["sdmetrics_quality"] = f["quality"]["score"]
    for m in MODELS:
        for on in ("synthetic", "real"):
            for k, v in ev.get("utility", {}).get("models", {}).get(m, {}).get(on, {}).items():
                out[f"{m} trained on {on}: {k}"] = v
    if "membership_inference" in ev:
        out["mia_auc_density_ratio"] = ev["membership_inference"]["density_ratio"]["auc"]
        out["mia_auc_closest_record"] = ev["membership_inference"]["closest_record"]["auc"]
    if "closeness" in ev:
        out["exact_match_train"] = ev["closeness"]["exact_match_rate_train"]
        out["exact_match_holdout"] = ev["closeness"]["exact_match_rate_holdout"]
    if ev.get("canaries"):
        out["canary_reappearance"] = ev["canaries"]["reappearance_rate"]
        out["canary_control_reappearance"] = ev["canaries"]["control_reappearance_rate"]
    for a in ev.get("audit", []):
        tag = "broken" if a["broken"] else "audit"
        out[f"{tag}_epsilon_lower_bound"] = a["epsilon_lower_bound"]
    return out
