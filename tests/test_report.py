"""`dpbeam report` from a spec: an evaluation run (holdout, canaries, the job), the audit, one HTML file that a real
headless browser renders with every plot displayed."""

from __future__ import annotations

import base64
from html import escape as html_escape
import json
import re

import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from conftest import small_spec, small_table
from dpbeam.cli import app
from dpbeam.evaluate.browser import dump_dom, find_browser, render_check
from dpbeam.evaluate.report import NOT_DP


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    src = tmp / "small.parquet"
    pq.write_table(small_table(2000, seed=0), src)
    spec = small_spec(str(src), str(tmp / "unused-output"))
    spec["synthesizer"]["iters"] = 100
    (tmp / "spec.yaml").write_text(yaml.safe_dump(spec))
    out = tmp / "report"
    res = CliRunner().invoke(app, ["report", str(tmp / "spec.yaml"), "--out", str(out), "--target", "active",
                                   "--groups", "color", "--canaries", "5", "--audit-runs", "4000"])
    assert res.exit_code == 0, res.output
    return out


def test_report_contents(report_dir):
    html = (report_dir / "report.html").read_text()
    ev = json.loads((report_dir / "evaluation.json").read_text())
    # the not-DP notice comes first, then the release statement quoted from the evaluation run's _release.json
    statement = html_escape(ev["statement"]["statement"])  # the report escapes text (the statement has quotes)
    assert html.index(NOT_DP) < html.index(statement) < html.index("Fidelity")
    for section in ("Privacy profile", "Utility", "Fairness", "Membership inference", "Canaries", "Mechanism audit"):
        assert section in html
    assert not re.search(r"<img[^>]+src=\"(?!data:image/png;base64,)", html)  # self-contained: every plot inline
    for b64 in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html):
        assert base64.b64decode(b64)[:8] == b"\x89PNG\r\n\x1a\n"
    assert ev["canaries"]["planted"] == 5 and ev["membership_inference"]["members"] > 0
    assert {a["broken"] for a in ev["audit"]} == {False, True} and all(a["passed"] for a in ev["audit"])
    # the evaluation run's synthetic table lives in the report directory, not at the spec's output
    assert (report_dir / "evaluation-run" / "synthetic" / "_release.json").exists()
    assert not (report_dir.parent / "unused-output").exists()


@pytest.mark.skipif(find_browser() is None, reason="needs Chromium (.ci/run installs it)")
def test_report_renders_in_a_browser(report_dir):
    html = (report_dir / "report.html").read_text()
    n_img = html.count("<img ")
    check = render_check(dump_dom(report_dir / "report.html"))
    # 5 column distributions, associations, a fairness plot, the ROC curve, the audit: every one decoded
    assert n_img >= 9
    assert check == {"images": n_img, "images_ok": n_img, "errors": 0, "marker": 1}


def test_report_refuses_a_release_directory(report_dir):
    synth = report_dir / "evaluation-run" / "synthetic"
    res = CliRunner().invoke(app, ["report", str(report_dir.parent / "small.parquet"), str(synth), "--out",
                                   str(synth / "report"), "--audit-runs", "0"])
    assert res.exit_code == 2 and "never be part of a release" in res.output


def test_privacy_profile_from_the_statement():
    from dpbeam.evaluate.report import privacy_profile

    html = privacy_profile({"privacy_profile": [{"delta": 1e-6, "epsilon": 1.25}, {"delta": 1e-9, "epsilon": 1.7}]},
                           {"epsilon": 2.0, "delta": 1e-6, "privacy_unit": "row"})
    assert "1.25" in html and "1.7" in html and "1e-09" in html and "privacy_unit" in html
    assert "1.25" not in privacy_profile({}, {"epsilon": 2.0})
