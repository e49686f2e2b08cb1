"""The whole job on small tables: spec -> measurements artifact -> synthetic Parquet + release statement."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from conftest import small_spec
from dpbeam.cli import app
from dpbeam.evaluate.metrics import mean_tvd
from dpbeam.job import plan_job, run_job
from dpbeam.measurements import MeasurementsArtifact
from dpbeam.spec import parse_spec
from dpbeam.synth.synthesize import synthesize


def test_row_level_job(small_parquet, tmp_path):
    spec = parse_spec(small_spec(small_parquet, str(tmp_path / "out")))
    spec = spec.model_copy(update={"privacy": spec.privacy.model_copy(update={"epsilon": 20.0})})
    statement = run_job(spec)
    out = spec.output.uri
    assert sorted(os.listdir(out)) == ["_README.md", "_SUCCESS", "_release.json", "part-00000-0.parquet"]
    synth = pq.read_table(out)
    real = pq.read_table(small_parquet)
    assert synth.schema.types == [real.schema.field(n).type for n in synth.schema.names]
    # the number of rows is the DP estimate of the real count: sigma_1 = sqrt(3 * 5 / (2 rho)) ~ 1.3 at eps=20, so
    # the estimate (a weighted mean of five noisy sums of <= 6 cells each) is within a few rows of 2000
    assert abs(synth.num_rows - 2000) < 40
    # every value is inside the public domain
    ages = synth.column("age").to_numpy()
    assert ages.min() >= 18 and ages.max() <= 79
    assert set(synth.column("color").to_pylist()) <= {"red", "green", "blue", "__other__"}
    # utility at eps=20: noise is ~1 count per cell on 2000 rows, so 1-way marginals are nearly exact and 2-way ones
    # carry only the tree model's error; 0.05 / 0.12 leave room for sampling
    tvd = mean_tvd(real, synth, plan_job(spec, check_outputs=False).domain, orders=(1, 2))
    assert tvd[1] < 0.05 and tvd[2] < 0.12, tvd
    with open(os.path.join(out, "_release.json")) as f:
        release = json.load(f)
    assert release == json.loads(json.dumps(statement, default=str))
    assert release["privacy_unit"] == "row" and release["max_rows_per_unit"] == 1
    assert release["epsilon"] <= 20.0 and release["delta"] == 1e-6
    assert release["spec_sha256"] == spec.sha256()
    assert {"opendp", "mbi", "pyarrow"} <= set(release["library_versions"])
    assert release["synthesizer"]["engine"] == "pgm"


def test_user_level_job_and_resynthesis(users_parquet, tmp_path):
    spec = parse_spec(small_spec(users_parquet, str(tmp_path / "out"), unit={"column": "user_id"}, max_rows_per_unit=3))
    statement = run_job(spec)
    assert statement["privacy_unit"] == "column user_id" and statement["max_rows_per_unit"] == 3
    assert "user_id" not in pq.read_table(spec.output.uri).schema.names
    artifact = MeasurementsArtifact.read(spec.output.resolved_measurements_uri)
    assert artifact.privacy["max_rows_per_unit"] == 3
    for charge in artifact.privacy["charges"]:
        assert charge.get("sensitivity_l2", charge.get("sensitivity")) == 3
    again = synthesize(artifact, str(tmp_path / "again"), rows=777, seed=5)
    assert pq.read_table(tmp_path / "again").num_rows == 777 == again["synthesizer"]["rows"]


def test_same_seed_same_rows(small_parquet, tmp_path):
    spec = parse_spec(small_spec(small_parquet, str(tmp_path / "out")))
    run_job(spec)
    art = spec.output.resolved_measurements_uri
    synthesize(art, str(tmp_path / "a"), rows=500, seed=3)
    synthesize(art, str(tmp_path / "b"), rows=500, seed=3)
    synthesize(art, str(tmp_path / "c"), rows=500, seed=4)
    a, b, c = (pq.read_table(tmp_path / x) for x in "abc")
    assert a.equals(b) and not a.equals(c)


def test_streaming_generation_in_chunks(small_parquet, tmp_path):
    from dpbeam.synth import generate

    spec = parse_spec(small_spec(small_parquet, str(tmp_path / "out")))
    run_job(spec)
    artifact = MeasurementsArtifact.read(spec.output.resolved_measurements_uri)
    from dpbeam.synth.synthesize import fit_model

    model = fit_model(artifact, iters=50)
    stmt = generate.write_synthetic_table(model, artifact, str(tmp_path / "chunks"), rows=2500, seed=0,
                                          synthesis={"engine": "pgm"}, chunk_rows=1000)
    assert stmt["synthesizer"]["rows"] == 2500 == pq.read_table(tmp_path / "chunks").num_rows


def test_cli_demo_style_run(small_parquet, tmp_path):
    import yaml

    spec_path = tmp_path / "job.yaml"
    spec_path.write_text(yaml.safe_dump(small_spec(small_parquet, str(tmp_path / "cli-out"))))
    runner = CliRunner()
    result = runner.invoke(app, ["run", str(spec_path), "--set", "privacy.epsilon=3"])
    assert result.exit_code == 0, result.output
    assert pq.read_table(tmp_path / "cli-out").num_rows > 0
    again = runner.invoke(app, ["run", str(spec_path)])
    assert again.exit_code == 2 and "already exists" in again.output
    meas = runner.invoke(app, ["measure", str(spec_path), "--out", str(tmp_path / "m")])
    assert meas.exit_code == 0, meas.output
    syn = runner.invoke(app, ["synthesize", str(tmp_path / "m"), "--out", str(tmp_path / "s"), "--rows", "100"])
    assert syn.exit_code == 0, syn.output
    assert pq.read_table(tmp_path / "s").num_rows == 100


@pytest.mark.parametrize("modules", ["dpbeam.synth.synthesize, dpbeam.synth.pgm, dpbeam.synth.generate",
                                     "dpbeam.synth.torch_engine, dpbeam.synth.relaxed"])
def test_synthesis_never_imports_the_trusted_side(modules):
    """Post-processing must not be able to read raw data: importing the synthesis engines loads no source reader
    and no engine adapter."""
    code = (
        f"import sys; import {modules};"
        "bad = [m for m in sys.modules if m in ('dpbeam.source', 'dpbeam.bounding', 'dpbeam.job') "
        "or m.startswith('transforms') or m.startswith('pyarrow.dataset')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_failed_write_leaves_nothing(small_parquet, tmp_path, monkeypatch):
    from dpbeam.synth import generate

    spec = parse_spec(small_spec(small_parquet, str(tmp_path / "out")))
    run_job(spec)

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(generate, "decode_codes", boom)
    with pytest.raises(RuntimeError):
        synthesize(spec.output.resolved_measurements_uri, str(tmp_path / "half"), rows=10)
    assert not any(p.startswith(".half") or p == "half" for p in os.listdir(tmp_path))


def test_overwrite_replaces_a_table(small_parquet, tmp_path):
    spec = parse_spec(small_spec(small_parquet, str(tmp_path / "out")))
    run_job(spec)
    over = spec.model_copy(update={"output": spec.output.model_copy(update={"overwrite": True, "rows": 123})})
    run_job(over)
    assert pq.read_table(spec.output.uri).num_rows == 123
    assert sorted(p for p in os.listdir(tmp_path) if p.startswith(".")) == []


@pytest.mark.parametrize("open_domain", [False, True])
def test_decimal_columns_are_written_back_as_decimals(small_parquet, tmp_path, open_domain):
    """A decimal128 source column (money, in a warehouse table) is measured as a float and written back in its own
    type, rounded to its scale, inside its bounds: the output's schema once failed to name decimal128(10, 2), and the
    job crashed while generating, after its noise was drawn."""
    import decimal

    import pyarrow as pa

    from dpbeam.domain import arrow_type_from_str, arrow_type_to_str

    for t in (pa.decimal128(10, 2), pa.decimal256(40, 3)):
        assert arrow_type_from_str(arrow_type_to_str(t)) == t
    real = pq.read_table(small_parquet)
    money = pa.array([decimal.Decimal(f"{x:.2f}") for x in real.column("score").to_numpy() * 100],
                     pa.decimal128(10, 2))
    source = tmp_path / "money.parquet"
    pq.write_table(real.set_column(real.schema.get_field_index("score"), pa.field("score", money.type, False),
                                   money), source)
    data = small_spec(str(source), str(tmp_path / "out"), epsilon=20.0)
    data["columns"]["score"] = {"kind": "float"} if open_domain else {"kind": "float", "bounds": [0, 100], "bins": 4}
    if open_domain:
        data["privacy"]["discovery_fraction"] = 0.2
    run_job(parse_spec(data))
    out = pq.read_table(data["output"]["uri"]).column("score")
    assert out.type == pa.decimal128(10, 2)
    values = [float(v) for v in out.to_pylist()]
    assert min(values) >= 0 and max(values) <= 100.01
    assert all(round(v, 2) == v for v in values)
