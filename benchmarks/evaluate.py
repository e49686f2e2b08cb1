"""Evaluation of the default synthesizer on Adult at epsilon = 1: `python benchmarks/run.py evaluate`.

One evaluation run (`dpbeam report` from the embedded spec: 20% of the rows held out, 20 canaries planted, the whole
job on the rest, local engine), the mechanism audit and its broken variant at the release's (epsilon, delta), the
HTML report and a headless-Chromium screenshot of it under benchmarks/results/evaluate-adult/ (git-ignored).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from dpbeam.datasets import adult_dir
from dpbeam.evaluate.browser import find_browser, screenshot
from dpbeam.evaluate.run import add_audits, evaluation_run, headline, write_report
from dpbeam.progress import RichReporter

OUT = Path(__file__).resolve().parent / "results" / "evaluate-adult"


def run(reps: int = 1, epsilons=(1.0,), audit_runs: int = 1_000_000) -> list[dict[str, Any]]:
    rows = []
    for eps in epsilons:
        out = OUT if len(epsilons) == 1 else OUT.with_name(f"evaluate-adult-eps{eps:g}")
        t0 = time.perf_counter()
        ev, plots = evaluation_run(adult_dir() / "adult.yaml", out, {"privacy.epsilon": eps},
                                   target="income>50K", groups=["sex", "race"], reporter=RichReporter())
        t_eval = time.perf_counter() - t0
        add_audits(ev, plots, audit_runs, RichReporter())
        path = write_report(out, ev, plots)
        shot = screenshot(path, out / "report.png") if find_browser() else None
        audit = {a["broken"]: a for a in ev["audit"]}
        rows.append({
            "benchmark": "evaluate", "dataset": "adult", "epsilon": eps, "delta": ev["statement"]["delta"],
            **headline(ev),
            "canaries_planted": ev["canaries"]["planted"],
            "canary_columns_shared": ev["canaries"]["mean_columns_shared_with_closest_row"],
            "canary_control_columns_shared": ev["canaries"]["control_mean_columns_shared"],
            "audit_runs_per_table": audit[False]["runs_per_table"], "audit_confidence": audit[False]["confidence"],
            "audit_seconds": audit[False]["seconds"], "broken_audit_seconds": audit[True]["seconds"],
            "audit_unit_rows_broken": audit[True]["unit_rows"],
            "evaluation_wall_s": round(t_eval, 1), "report": str(path), "screenshot": str(shot) if shot else None,
        })
    return rows


COLUMNS = [("epsilon", "ε"), ("tvd_2way", "2-way TVD"), ("tvd_3way_sampled", "3-way TVD"),
           ("sdmetrics_quality", "SDMetrics quality"), ("gradient boosting trained on synthetic: auc", "TSTR AUC (GB)"),
           ("gradient boosting trained on real: auc", "TRTR AUC (GB)"), ("mia_auc_density_ratio", "MIA AUC"),
           ("canary_reappearance", "canaries reappearing"), ("audit_epsilon_lower_bound", "audit ε lower bound"),
           ("broken_epsilon_lower_bound", "broken ε lower bound"), ("audit_runs_per_table", "runs per table")]
