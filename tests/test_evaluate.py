"""Fidelity, utility, fairness and the empirical privacy attacks, on small generated tables with known answers."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from conftest import small_spec, small_table
from dpbeam.cli import app
from dpbeam.domain import TableDomain
from dpbeam.errors import SpecError
from dpbeam.evaluate.attacks import canary_reappearance, closeness, make_canaries, membership_inference
from dpbeam.evaluate.data import codes
from dpbeam.evaluate.fairness import fairness
from dpbeam.evaluate.fidelity import fidelity
from dpbeam.evaluate.metrics import cramers_v
from dpbeam.evaluate.run import check_out_dir
from dpbeam.evaluate.utility import utility
from dpbeam.job import plan_job
from dpbeam.measurements import MeasurementsArtifact
from dpbeam.spec import parse_spec


@pytest.fixture
def domain(small_parquet, tmp_path) -> TableDomain:
    return plan_job(parse_spec(small_spec(small_parquet, str(tmp_path / "o"))), check_outputs=False).domain


def _shuffled(c: np.ndarray, seed: int = 0) -> np.ndarray:
    """Each column permuted independently: the same 1-way marginals, the associations destroyed."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(c[:, j]) for j in range(c.shape[1])], axis=1)


def test_fidelity_identical_and_independent(domain):
    real = codes(small_table(2000, seed=0), domain)
    same = fidelity(real, real.copy(), domain)
    assert same["release_domain"]["mean_2way"] == 0 and same["real_bins"]["mean_2way"] == 0
    assert same["association"]["mean_abs_difference"] == 0
    ind = fidelity(real, _shuffled(real), domain)
    assert ind["release_domain"]["mean_1way"] == 0  # a permutation keeps every 1-way marginal
    # color drives age and score, score drives active: shuffling breaks those pairs (their TVD is > 0.1 in this
    # table), so the mean over the 10 pairs is well above the ~0.02 that 2,000 rows of sampling noise would give
    assert ind["release_domain"]["mean_2way"] > 0.05
    assert ind["association"]["max_abs_difference"] > 0.3
    assert ind["release_domain"]["cliques_3way"] == 10  # all C(5, 3) when fewer than the sample size


def test_sdmetrics_quality(domain):
    t = small_table(2000, seed=0)
    q = fidelity(codes(t, domain), codes(t, domain), domain, t, t)["quality"]
    assert q["score"] > 0.99 and set(q) >= {"column_shapes", "column_pair_trends"}


def test_cramers_v():
    assert cramers_v(np.array([[50, 0], [0, 50]])) == pytest.approx(1.0)
    assert cramers_v(np.array([[25, 25], [25, 25]])) == pytest.approx(0.0)


def test_utility_and_fairness(domain):
    real = codes(small_table(3000, seed=0), domain)
    test = codes(small_table(1000, seed=1), domain)
    # 'active' is score > 0.5: the score bin predicts it; a shuffled table teaches nothing beyond the base rate
    u = utility(real, test, _shuffled(real), domain, "active")
    gb = u.summary["models"]["gradient boosting"]
    assert gb["real"]["auc"] > 0.85 and gb["real"]["accuracy"] > 0.8
    assert abs(gb["synthetic"]["auc"] - 0.5) < 0.1  # 1,000 test rows: AUC's sd ~0.02 under no signal
    f = fairness(real, test, real, domain, ["color"], u)
    groups = {g["value"]: g for g in f["color"]["groups"]}
    assert {"red", "green", "blue"} <= set(groups)
    assert all(groups[c]["tvd_2way"] == 0 for c in ("red", "green", "blue"))  # synthetic == real here
    assert f["color"]["gap"]["tvd_2way"] == 0
    assert "gradient boosting (real) accuracy" in f["color"]["gap"]
    with pytest.raises(SpecError, match="--groups"):
        fairness(real, test, real, domain, ["nope"], u)


def test_closeness_and_mia_catch_a_copy(domain):
    train = codes(small_table(2000, seed=0), domain)
    hold = codes(small_table(2000, seed=1), domain)
    c = closeness(train, hold, train.copy(), domain)
    assert c["exact_match_rate_train"] == 1.0 and c["dcr_median_train"] == 0
    assert c["share_closer_to_train"] > 0.5
    # a copy of the training rows in a domain of 30^4 = 810,000 cells: every member sits at distance 0, almost no
    # non-member does (2,000 rows fill at most 0.25% of the cells)
    wide = TableDomain.from_json([{"name": f"c{i}", "kind": "integer", "arrow_type": "int64", "nullable": False,
                                   "edges": list(range(31))} for i in range(4)])
    rng = np.random.default_rng(0)
    w_train, w_hold = rng.integers(0, 30, (2000, 4)), rng.integers(0, 30, (2000, 4))
    m = membership_inference(w_train, w_hold, w_train.copy(), wide)
    assert m["closest_record"]["auc"] > 0.95
    # an independent sample from the same distribution: no membership signal. 1,000 members and non-members: the
    # AUC's sd is ~0.013, so 0.07 is 5 sd
    indep = codes(small_table(2000, seed=2), domain)
    m0 = membership_inference(train, hold, indep, domain)
    assert abs(m0["density_ratio"]["auc"] - 0.5) < 0.07 and abs(m0["closest_record"]["auc"] - 0.5) < 0.07


def test_canaries(domain):
    real = small_table(2000, seed=0)
    drawn = make_canaries(real, domain.names, 10, seed=0)
    assert drawn.schema == real.select(domain.names).schema and drawn.num_rows == 10
    planted, control = codes(drawn.slice(0, 5), domain), codes(drawn.slice(5), domain)
    synth = np.concatenate([codes(real, domain), planted])
    r = canary_reappearance(planted, control, synth)
    assert r["reappearance_rate"] == 1.0 and r["mean_columns_shared_with_closest_row"] == 5


def test_check_out_dir(tmp_path):
    rel = tmp_path / "synth"
    rel.mkdir()
    (rel / "_release.json").write_text("{}")
    with pytest.raises(SpecError, match="release"):
        check_out_dir(rel / "report")
    with pytest.raises(SpecError, match="release"):
        check_out_dir(tmp_path / "x" / "report", [str(tmp_path / "x")])
    check_out_dir(tmp_path / "report")


def write_release(tmp_path, domain: TableDomain, table: pa.Table, epsilon: float = 1.0) -> str:
    """A synthetic-table directory and its measurements artifact, as `dpbeam run` lays them out (no measurements:
    evaluation reads only the domain and the privacy record)."""
    privacy = {"privacy_unit": "row", "adjacency": "add or remove one row", "max_rows_per_unit": 1,
               "epsilon": epsilon, "delta": 1e-6, "rho": 0.1, "epsilon_spent": epsilon, "rho_spent": 0.1,
               "stages": {}, "charges": []}
    uri = str(tmp_path / "synth")
    MeasurementsArtifact(domain, {}, (), privacy, {"method": "test"}).write(uri + ".measurements")
    (tmp_path / "synth").mkdir()
    pq.write_table(table, f"{uri}/part-00000.parquet")
    statement = {"statement": "Differentially private synthetic table (test).", "epsilon": epsilon, "delta": 1e-6,
                 "max_rows_per_unit": 1, "privacy_profile": [{"delta": 1e-6, "epsilon": epsilon}]}
    (tmp_path / "synth" / "_release.json").write_text(json.dumps(statement))
    (tmp_path / "synth" / "_SUCCESS").write_text("")
    return uri


def test_cli_evaluate(small_parquet, domain, tmp_path):
    synth = write_release(tmp_path, domain, small_table(1500, seed=5).select(domain.names))
    hold = tmp_path / "hold.parquet"
    pq.write_table(small_table(800, seed=6), hold)
    out = tmp_path / "ev.json"
    res = CliRunner().invoke(app, ["evaluate", small_parquet, synth, "--holdout", str(hold), "--target", "active",
                                   "--groups", "color", "--out", str(out)])
    assert res.exit_code == 0, res.output
    ev = json.loads(out.read_text())
    assert ev["not_dp"] is True and ev["utility"]["target"] == "active"
    assert {"fidelity", "utility", "fairness", "closeness", "membership_inference"} <= set(ev)
    assert "not DP" in res.output
    bad = CliRunner().invoke(app, ["evaluate", small_parquet, str(tmp_path / "missing")])
    assert bad.exit_code == 2 and "not a complete synthetic table" in bad.output
