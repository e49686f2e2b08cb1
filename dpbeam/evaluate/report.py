"""The HTML report: one self-contained file (PNG plots inlined as base64) that a data owner opens in a browser.

Top: a notice that the evaluation is NOT differentially private, then the release statement (quoted from the synthetic
table's ``_release.json``, the module that owns the promise text) and the privacy profile. Then fidelity, utility,
fairness, membership inference, canaries and the mechanism audit. A script marks on load how many images decoded
(``data-images`` / ``data-images-ok`` on <body>, and a ``#render-check`` element), so a headless browser can check
that every plot is displayed.
"""

from __future__ import annotations

import html
from typing import Any

NOT_DP = (
    "This report is NOT differentially private. Its fidelity, utility, fairness and attack figures compare the "
    "synthetic table with the real data; it is for the data owner, on the trusted side, and is never part of a "
    "release. Only the synthetic table, its measurements and its release statement are released."
)

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
.warning{background:#fde2e1;border:2px solid #c0392b;padding:1em;font-weight:600}
.statement{background:#eef6ee;border-left:4px solid #2e7d32;padding:.8em 1em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f3f3f3}.grid{display:flex;flex-wrap:wrap;gap:8px}.grid img{width:430px}
.pass{color:#2e7d32;font-weight:700}.fail{color:#c0392b;font-weight:700}small{color:#666}
"""

_CHECK = """
<script>
window.addEventListener('error', function (e) {
  document.body.setAttribute('data-errors', (parseInt(document.body.getAttribute('data-errors') || '0') + 1));
});
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images', imgs.length);
  document.body.setAttribute('data-images-ok', ok);
  var m = document.createElement('div');
  m.id = 'render-check';
  m.textContent = 'rendered ' + ok + '/' + imgs.length + ' plots';
  m.style.color = '#999';
  document.body.appendChild(m);
});
</script>
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def table(rows: list[dict[str, Any]] | dict[str, Any], headers: list[str] | None = None) -> str:
    """A dict as two columns, or a list of dicts as one row each."""
    if isinstance(rows, dict):
        body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(fmt(v))}</td></tr>" for k, v in rows.items())
        return f"<table>{body}</table>"
    if not rows:
        return "<p><small>none</small></p>"
    headers = headers or list(rows[0])
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_e(fmt(r.get(h)))}</td>" for h in headers) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def img(b64: str, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{b64}">'


def privacy_profile(statement: dict[str, Any], privacy: dict[str, Any]) -> str:
    """The statement's ``privacy_profile`` (epsilon over a grid of delta) when it has one; the privacy record's
    headline figures always."""
    out = ""
    profile = statement.get("privacy_profile")
    if isinstance(profile, list) and profile and isinstance(profile[0], dict):
        out += table(profile)
    elif isinstance(profile, dict):
        inner = profile.get("points") or profile.get("profile")
        out += table(inner) if isinstance(inner, list) and inner and isinstance(inner[0], dict) else table(profile)
    keys = ("privacy_unit", "adjacency", "max_rows_per_unit", "epsilon", "delta", "rho", "epsilon_spent", "rho_spent",
            "measure")
    out += table({k: privacy[k] for k in keys if k in privacy})
    stages = privacy.get("stages") or {}
    if stages:
        out += table([{"stage": s, **v} for s, v in stages.items()])
    return out


def _fidelity(f: dict[str, Any], plots: dict[str, Any]) -> str:
    rd, rb = f["release_domain"], f["real_bins"]
    rows = [{"marginals": f"{w}", "release domain": rd[f"mean_{w}"], "bins from the real data": rb[f"mean_{w}"]}
            for w in ("1way", "2way", "3way")]
    s = "<h2>Fidelity</h2><p>Mean total-variation distance of marginals (0 = identical, 1 = disjoint); 3-way: " \
        f"{rd['cliques_3way']} cliques sampled.</p>" + table(rows)
    q = f.get("quality")
    if q:
        s += "<h3>SDMetrics quality report</h3>" + table(q)
    a = f["association"]
    s += (f"<h3>Associations</h3><p>Pearson's r between numeric columns, Cramér's V otherwise. Mean |difference| "
          f"{fmt(a['mean_abs_difference'])}, max {fmt(a['max_abs_difference'])}.</p>")
    s += img(plots["association"], "association matrices")
    s += "<h3>Worst 2-way marginals</h3>" + table([{"columns": " × ".join(w["columns"]), "TVD": w["tvd"]}
                                                  for w in rd["worst_2way"]])
    s += "<h3>Column distributions</h3><div class='grid'>" + "".join(
        img(b, f"distribution of {n}") for n, b in plots["distributions"].items()) + "</div>"
    return s


def _utility(u: dict[str, Any]) -> str:
    rows = [{"model": m, "trained on": on, **sc} for m, by in u["models"].items() for on, sc in by.items()]
    return (f"<h2>Utility</h2><p>Target <b>{_e(u['target'])}</b> ({_e(u['task'])}); tested on {_e(u['test_rows_are'])}. "
            "Trained on synthetic (TSTR) vs trained on real (reference).</p>" + table(rows))


def _fairness(fair: dict[str, Any], plots: dict[str, Any]) -> str:
    s = "<h2>Fairness</h2>"
    for g, v in fair.items():
        rows = []
        for e in v["groups"]:
            r = {k: e.get(k) for k in ("value", "real_share", "synthetic_share", "tvd_1way", "tvd_2way", "note")}
            for m, by in e.get("models", {}).items():
                for on, sc in by.items():
                    for metric, x in sc.items():
                        r[f"{m} ({on}) {metric}"] = x
            rows.append(r)
        headers = list(dict.fromkeys(k for r in rows for k in r))
        s += f"<h3>{_e(g)}</h3>" + table(rows, headers) + "<p>Gap between best and worst group:</p>" + table(v["gap"])
        if g in plots.get("fairness", {}):
            s += img(plots["fairness"][g], f"fairness by {g}")
    return s


def _privacy(ev: dict[str, Any], plots: dict[str, Any]) -> str:
    s = "<h2>Empirical privacy</h2>"
    c = ev.get("closeness")
    if c:
        s += "<h3>Exact matches and distance to the closest record</h3>" + table(c)
    m = ev.get("membership_inference")
    if m:
        s += "<h3>Membership inference</h3>" + table(
            [{"attack": a, **{k: v for k, v in m[a].items() if k not in ("fpr", "tpr")}}
             for a in ("density_ratio", "closest_record")])
        s += img(plots["roc"], "membership inference ROC")
    elif not c:
        s += "<p><small>No holdout was given: exact matches, DCR and membership inference need real rows the " \
             "synthesizer did not see (run the report from a spec, or pass --holdout).</small></p>"
    k = ev.get("canaries")
    s += "<h3>Canaries</h3>" + (table(k) if k else "<p><small>Not run: canaries must be planted before measurement "
                                                   "(run the report from a spec without a synthetic table).</small></p>")
    audits = ev.get("audit") or []
    if audits:
        s += ("<h3>Mechanism audit</h3><p>dpbeam's bounding, counting and OpenDP noise kernels run many times on two "
              "neighbouring tables; the best threshold test's error rates give a lower bound on epsilon with "
              "Clopper-Pearson confidence. A correct mechanism stays below the claimed epsilon; the broken variant "
              "(contribution bounding switched off) must exceed it.</p>")
        rows = []
        for a in audits:
            ok = a["passed"]
            rows.append({"variant": "broken (no bounding)" if a["broken"] else "dpbeam",
                         "claimed ε": a["claimed_epsilon"], "δ": a["delta"], "ε lower bound": a["epsilon_lower_bound"],
                         "confidence": a["confidence"], "runs per table": a["runs_per_table"], "k": a["k"],
                         "unit rows": a["unit_rows"], "σ": a["sigma"], "seconds": a["seconds"],
                         "result": "as expected" if ok else "UNEXPECTED"})
        s += table(rows) + img(plots["audit"], "audit epsilon lower bounds")
    return s


def render(evaluation: dict[str, Any], plots: dict[str, Any]) -> str:
    """The whole report as one HTML string."""
    st = evaluation.get("statement") or {}
    pv = evaluation.get("privacy") or {}
    parts = [f"<div class='warning'>{_e(NOT_DP)}</div>", "<h1>dpbeam evaluation report</h1>",
             "<h2>Release statement</h2>",
             f"<div class='statement'>{_e(st.get('statement', 'no release statement found'))}</div>",
             "<h3>Privacy profile</h3>", privacy_profile(st, pv)]
    if evaluation.get("fidelity"):
        parts.append(_fidelity(evaluation["fidelity"], plots))
    if evaluation.get("utility"):
        parts.append(_utility(evaluation["utility"]))
    if evaluation.get("fairness"):
        parts.append(_fairness(evaluation["fairness"], plots))
    parts.append(_privacy(evaluation, plots))
    body = "\n".join(parts)
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>dpbeam evaluation report</title>"
            f"<style>{_CSS}</style></head><body>\n{body}\n{_CHECK}</body></html>\n")
