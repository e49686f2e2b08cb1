"""What a run prints, tried as an attacker would: neighbouring tables must print the same lines apart from DP outputs
and durations, and errors never carry a value, a row number or a count from the data."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from conftest import small_spec, small_table
from dpbeam.cli import app
from dpbeam.errors import SourceError, worker_error

ENGINES = ["local", "beam", "spark"]
# Lines that report DP outputs (discovered k, domains and bounds; refinement choices; the synthetic row count, a DP
# estimate): their numbers may differ between two runs even on one table, so their digits are masked.
DP_LINES = re.compile(r"^\W*(DP |refinement|generating rows|wrote \S+ synthetic rows)")
DURATION = re.compile(r"\d+:\d\d:\d\d")


def _engine_args(engine: str, request) -> list[str]:
    if engine == "beam":
        pytest.importorskip("apache_beam")
        import transforms.beam  # noqa: F401  (imported here: Beam logs a warning to stderr on first import)

        return ["--engine", "beam", "--engine-option", "runner=FnApiRunner"]
    if engine == "spark":
        request.getfixturevalue("spark")  # the session fixture: the CLI run picks up the active session
        return ["--engine", "spark"]
    return ["--engine", "local"]


def _normalised(output: str, root: Path) -> list[str]:
    lines = []
    for line in output.replace(str(root), "<root>").splitlines():
        line = DURATION.sub("<time>", line.rstrip())
        lines.append(re.sub(r"\d", "#", line) if DP_LINES.match(line) else line)
    return lines


def _write_source(root: Path, extra_unit_rows: int) -> Path:
    """Two Parquet files of units; with ``extra_unit_rows``, one more unit with that many rows in the second file
    (the same listing: same files, same names)."""
    table = small_table(n=3000, seed=3, units=200)
    src = root / "src"
    src.mkdir(parents=True)
    first, second = table.slice(0, 1500), table.slice(1500)
    if extra_unit_rows:
        extra = small_table(n=extra_unit_rows, seed=9)
        extra = extra.add_column(0, "user_id", pa.array(np.full(extra_unit_rows, 10_000, dtype=np.int64)))
        second = pa.concat_tables([second, extra.select(second.schema.names).cast(second.schema)])
    pq.write_table(first, src / "part-0.parquet")
    pq.write_table(second, src / "part-1.parquet")
    return src


def _run(root: Path, engine_args: list[str]) -> str:
    spec = small_spec(str(root / "src"), str(root / "out"), unit={"column": "user_id"}, max_rows_per_unit=2)
    # plain MST, a fixed output row count, few iterations: every line but the DP ones is then fixed by the spec
    spec["synthesizer"] = {"method": "mst", "engine": "pgm", "iters": 20}
    spec["output"]["rows"] = 100
    (root / "job.yaml").write_text(yaml.safe_dump(spec))
    result = CliRunner().invoke(app, ["run", str(root / "job.yaml"), *engine_args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_neighbouring_tables_print_the_same_lines(engine, tmp_path, request):
    """A table, and the same table plus one unit with 1,234 rows (the same files): every printed line is the same,
    apart from DP outputs and durations. Progress that counted rows printed 3,000 against 4,234."""
    args = _engine_args(engine, request)
    a, b = tmp_path / "a", tmp_path / "b"
    _write_source(a, 0)
    _write_source(b, 1234)
    out_a, out_b = _run(a, args), _run(b, args)
    assert _normalised(out_a, a) == _normalised(out_b, b)
    assert "2/2 files" in out_a  # progress is counted in files of the listing
    for count in ("3000", "3,000", "4234", "4,234", "1234", "1,234"):
        assert count not in out_a + out_b


@pytest.fixture
def bad_csv(tmp_path) -> Path:
    """A CSV whose integer column `age` holds one unparseable value, far past the first block (so that even a
    reader inferring types from the first block declares the column int64)."""
    n = 60_000
    table = small_table(n=n, seed=4, units=2000).drop_columns(["day"])
    path = tmp_path / "people.csv"
    pacsv.write_csv(table, path)
    lines = path.read_text().splitlines()
    header = lines[0].replace('"', "").split(",")
    age = header.index("age")
    fields = lines[BAD_ROW + 1].split(",")
    fields[age] = SECRET
    lines[BAD_ROW + 1] = ",".join(fields)
    path.write_text("\n".join(lines) + "\n")
    return path


SECRET = "SSN-123-45-6789"
BAD_ROW = 59_990  # 0-based data row; Arrow calls it Row #59992 (1-based, header included)


@pytest.mark.parametrize("engine", ENGINES)
def test_unparseable_csv_value_is_named_by_column_never_quoted(engine, bad_csv, tmp_path, request):
    args = _engine_args(engine, request)
    spec = small_spec(str(bad_csv), str(tmp_path / "out"), unit={"column": "user_id"}, max_rows_per_unit=2)
    del spec["columns"]["day"]
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    result = CliRunner().invoke(app, ["run", str(tmp_path / "job.yaml"), *args])
    out = result.output
    assert result.exit_code == 2, out
    assert "column 'age'" in out and "people.csv" in out and "columns.age" in out, out
    assert "SSN" not in out and "6789" not in out
    for row in (BAD_ROW, BAD_ROW + 1, BAD_ROW + 2):  # no row number in any numbering
        assert str(row) not in out and f"{row:,}" not in out
    assert "Row #" not in out and "Traceback" not in out
    assert len([line for line in out.splitlines() if line.startswith("error:")]) == 1
    assert not (tmp_path / "out").exists()


def test_unexpected_error_prints_no_message_without_debug(small_parquet, tmp_path, monkeypatch):
    """An exception that is not dpbeam's own (here raised inside the counting pass) may quote data: without --debug
    only a generic line naming the stage is printed; with --debug the traceback, for the trusted side."""
    from dpbeam.aggregate import MarginalCounts

    def leaky(self, prepared):
        raise RuntimeError(f"bad cell {SECRET} at row 1234")

    monkeypatch.setattr(MarginalCounts, "partial", leaky)
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(small_spec(small_parquet, str(tmp_path / "out"))))
    runner = CliRunner()
    for command in (["run", str(tmp_path / "job.yaml")], ["measure", str(tmp_path / "job.yaml")]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2, result.output
        assert SECRET not in result.output and "1234" not in result.output
        assert "internal error in `dpbeam " in result.output and "reading, bounding and counting" in result.output
        assert "rerun with --debug on the trusted side" in result.output
    debug = runner.invoke(app, ["run", str(tmp_path / "job.yaml"), "--debug"])
    assert debug.exit_code == 2 and SECRET in debug.output and "Traceback" in debug.output


def test_synthesize_error_is_one_line(tmp_path):
    result = CliRunner().invoke(app, ["synthesize", str(tmp_path / "missing"), "--out", str(tmp_path / "s")])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "missing" in lines[0], result.output


def test_worker_errors_are_rebuilt_from_their_traceback_text():
    """An engine wraps a worker's SourceError in its own exception whose text holds the whole worker traceback,
    Arrow's message (with the value) included; only dpbeam's one line is taken back."""
    text = (
        "org.apache.spark.api.python.PythonException: Traceback (most recent call last):\n"
        f"pyarrow.lib.ArrowInvalid: In CSV column #2: Row #59992: invalid value '{SECRET}'\n\n"
        "The above exception was the direct cause of the following exception:\n"
        "dpbeam.errors.SourceError: cannot read /x.csv: a value in column 'age' does not parse\n\tat org.apache..."
    )
    found = worker_error(RuntimeError(text))
    assert isinstance(found, SourceError)
    assert str(found) == "cannot read /x.csv: a value in column 'age' does not parse"
    assert worker_error(RuntimeError("no dpbeam error here")) is None
    assert worker_error(SourceError("already ours")) is None


def test_a_stage_without_a_public_unit_shows_no_count():
    """A catalog table has no file listing: its stage never gets a total, so whatever was ticked is not shown."""
    import io

    from rich.console import Console

    from dpbeam.progress import RichReporter

    buffer = io.StringIO()
    reporter = RichReporter(Console(file=buffer, width=120))
    with reporter.stage("reading (spark engine)") as advance:
        advance(4321)
    with reporter.stage("reading (local engine)") as advance:
        advance.set_total(3, "files")
        advance(3)
    out = buffer.getvalue()
    assert "4321" not in out and "4,321" not in out
    assert "reading (spark engine)" in out and "3/3 files" in out
