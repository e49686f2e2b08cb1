"""Post-processing entry point: measurements artifact -> fitted model -> synthetic Parquet table.

Engines: ``pgm`` (Private-PGM via mbi: exact inference on the junction tree of the measured cliques). ``auto`` picks
``pgm`` while its largest junction-tree clique fits in memory.
"""

from __future__ import annotations

import time
from typing import Any

from dpbeam.errors import SpecError
from dpbeam.measurements import MeasurementsArtifact
from dpbeam.progress import Reporter
from dpbeam.synth.generate import FittedModel, write_synthetic_table

# Private-PGM holds float64 tables over every junction-tree clique; 2^25 cells is 256 MiB for the largest one.
PGM_MAX_CELLS = 1 << 25


def choose_engine(artifact: MeasurementsArtifact, requested: str = "auto") -> str:
    from dpbeam.synth import pgm

    if requested not in ("auto", "pgm"):
        raise SpecError(f"synthesizer.engine {requested!r} is not available; use auto or pgm")
    cells = pgm.junction_tree_cells(artifact)
    if cells > PGM_MAX_CELLS:
        raise SpecError(
            f"the measured cliques need a junction-tree clique of {cells:,} cells, beyond Private-PGM's limit of "
            f"{PGM_MAX_CELLS:,}; measure fewer or smaller marginals (coarser bins)"
        )
    return "pgm"


def fit_model(artifact: MeasurementsArtifact, engine: str = "auto", iters: int = 1000, seed: int = 0) -> FittedModel:
    from dpbeam.synth import pgm

    choose_engine(artifact, engine)
    return pgm.fit(artifact, iters=iters, seed=seed)


def synthesize(
    artifact: MeasurementsArtifact | str,
    out_uri: str,
    rows: int | None = None,
    seed: int = 0,
    engine: str = "auto",
    iters: int = 1000,
    overwrite: bool = False,
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    """Fit a model to the artifact and write ``rows`` synthetic rows (default: the DP estimate of the row count)."""
    reporter = reporter or Reporter()
    if isinstance(artifact, str):
        artifact = MeasurementsArtifact.read(artifact)
    from dpbeam import lake

    lake.check_output_free(out_uri, overwrite)
    name = choose_engine(artifact, engine)
    t0 = time.perf_counter()
    with reporter.stage(f"fitting {name} model ({iters} iterations)", total=None):
        model = fit_model(artifact, name, iters=iters, seed=seed)
    fit_s = time.perf_counter() - t0
    n = rows if rows is not None else int(round(artifact.estimated_total()))
    info = {"engine": model.engine, "iters": iters, "fit_seconds": round(fit_s, 3)}
    return write_synthetic_table(model, artifact, out_uri, n, seed, info, overwrite=overwrite, reporter=reporter)
