"""A job for the crash test: run a spec, and stop where told (after the first Parquet files of the table are on disk,
or when the data is first read), touch a file, and wait to be killed.

Usage: python crash_job.py SPEC_JSON write|measure SIGNAL_FILE
"""

from __future__ import annotations

import json
import pathlib
import sys
import time

from dpbeam import job, lake
from dpbeam.spec import parse_spec

spec_path, where, signal = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3])


def stop() -> None:
    signal.write_text("here")
    time.sleep(600)


if where == "write":
    write = lake.DatasetWriter.write

    def write_then_stop(self, table):
        write(self, table)
        self._flush()  # part files exist under the temporary directory
        stop()

    lake.DatasetWriter.write = write_then_stop
else:
    job.run_aggregation = lambda *a, **k: stop()

job.run_job(parse_spec(json.loads(pathlib.Path(spec_path).read_text())))
