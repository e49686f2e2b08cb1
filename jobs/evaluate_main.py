"""Evaluation main (TRUSTED side, NOT DP): the synthetic table against the real one, for the data owner.

    python -m jobs.evaluate_main --spec gs://bucket/specs/events.yaml --synth gs://synthetic/events \\
        --measurements gs://artifacts/events/measurements --report-out gs://scratch/reports/events/2025-01-01

It reads the spec's source (raw rows), so it runs where the measure job runs, as the account that may read raw data,
and writes ``report.html`` and ``evaluation.json`` (fidelity, utility, fairness) to ``--report-out``: a trusted
location, never inside a release (refused) and never the synthetic bucket analysts read. It prints where the report
went and nothing else: the figures compare with real data, so they do not go to a scheduler's logs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from jobs.common import fail, load_spec_uri, parse_sets


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jobs.evaluate_main", description=(__doc__ or "").split("\n")[0])
    p.add_argument("--spec", required=True, help="The job spec's URI: its source is the real table.")
    p.add_argument("--synth", required=True, help="The synthetic table's URI (with _release.json).")
    p.add_argument("--measurements", default=None, help="Its measurements artifact (default: SYNTH.measurements).")
    p.add_argument("--report-out", required=True, help="A trusted folder URI for report.html and evaluation.json.")
    p.add_argument("--target", default=None, help="Column to predict for utility (default: the last column).")
    p.add_argument("--groups", default=None, help="Comma-separated columns for fairness, e.g. sex,race.")
    p.add_argument("--set", dest="sets", action="append", default=[], help="Override a spec field: KEY=VALUE.")
    p.add_argument("--overwrite", action="store_true", help="Replace an existing report.")
    p.add_argument("--debug", action="store_true", help="Raise with the full traceback (trusted side only).")
    return p


def _inside(child: str, parent: str) -> bool:
    c, p = child.rstrip("/"), parent.rstrip("/")
    return c == p or c.startswith(p + "/")


def evaluate(spec_uri: str, synth: str, measurements: str | None, report_out: str, target: str | None = None,
             groups: Sequence[str] = (), sets: Sequence[str] = (), overwrite: bool = False) -> str:
    """Write the evaluation of ``synth`` against the spec's source to ``report_out``; return its URI. Every check
    (spec, release, where the report goes) comes before the first raw row is read."""
    from dpbeam import lake
    from dpbeam.errors import SpecError
    from dpbeam.evaluate.data import read_release, read_spec_source
    from dpbeam.evaluate.run import check_out_dir, evaluate_release, write_report

    spec = load_spec_uri(spec_uri, parse_sets(sets))
    if spec.source.table is not None:
        raise SpecError(f"source.table {spec.source.table!r} is a catalog table; the evaluation reads files: give "
                        "--set source.uri=... (an export of the table) on the trusted side")
    release = read_release(synth, measurements)
    for r in (release.uri, release.measurements_uri):
        if _inside(report_out, r):
            raise SpecError(f"--report-out {report_out} lies inside the release {r}; the report is not DP and must "
                            "never travel with one: choose a trusted folder")
    if "://" not in report_out or report_out.startswith("file://"):
        check_out_dir(report_out.removeprefix("file://"), [release.uri, release.measurements_uri])
    lake.check_output_free(report_out, overwrite, "--report-out")
    real = read_spec_source(spec).select(release.domain.names)
    ev, plots = evaluate_release(real, release, None, target, list(groups))
    with tempfile.TemporaryDirectory() as tmp, lake.atomic_directory(report_out, overwrite) as staged:
        write_report(tmp, ev, plots)
        fs, path = lake.filesystem(staged)
        for f in sorted(Path(tmp).iterdir()):
            fs.put_file(str(f), f"{path}/{f.name}")
    return report_out


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        groups = [g.strip() for g in (args.groups or "").split(",") if g.strip()]
        out = evaluate(args.spec, args.synth, args.measurements, args.report_out, args.target, groups, args.sets,
                       args.overwrite)
        print(f"wrote the evaluation report (not DP, for the data owner) to {out}", file=sys.stderr)
    except Exception as err:
        return fail(err, "jobs.evaluate_main", args.debug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
