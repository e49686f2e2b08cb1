"""Dataflow flex-template main: the trusted pass on Apache Beam, writing the measurements artifact.

    python -m jobs.beam_main --spec gs://bucket/specs/events.yaml \\
        --runner DataflowRunner --project P --region R --temp_location gs://artifacts/tmp [more Beam options]

``--spec`` (and ``--measurements_uri``, ``--overwrite``, ``--set``, ``--ledger_entry``: see
:func:`jobs.common.add_measure_args`) are this job's own; every other argument is a
standard Beam pipeline option, handed to ``PipelineOptions`` unchanged, so a flex template's launcher (which appends
``--runner``, ``--project``, ``--region``, ``--temp_location``, ``--staging_location``, ``--service_account_email``
and the template's parameters) works as is. Locally, ``--runner FnApiRunner`` runs in-process.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from jobs.common import add_measure_args, fail, measure_from_args


def parser() -> argparse.ArgumentParser:
    return add_measure_args(argparse.ArgumentParser(prog="jobs.beam_main", description=__doc__.split("\n")[0]))


def beam_options(argv: Sequence[str]) -> dict[str, Any]:
    """The Beam pipeline options in ``argv`` as keywords for :func:`transforms.beam.run_aggregation`: those that
    differ from Beam's defaults, under Beam's own names (``runner``, ``project``, ``temp_location``...). An argument
    Beam does not know is an error here, before any row is read."""
    from apache_beam.options.pipeline_options import PipelineOptions

    options = PipelineOptions(list(argv))
    unknown = [a for a in options.get_all_options(retain_unknown_options=True, drop_default=True)
               if a not in options.get_all_options(drop_default=False)]
    if unknown:
        from dpbeam.errors import SpecError

        raise SpecError(f"unknown pipeline option(s) {', '.join(sorted(unknown))}; see `python -m jobs.beam_main -h` "
                        "and Beam's PipelineOptions")
    return options.get_all_options(drop_default=True)


def main(argv: Sequence[str] | None = None) -> int:
    args, rest = parser().parse_known_args(argv)
    try:
        options = beam_options(rest)
        options.setdefault("runner", "FnApiRunner")
        measure_from_args(args, "beam", options)
    except Exception as err:
        return fail(err, "jobs.beam_main", args.debug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
