"""Post-processing entry point: measurements artifact -> fitted model -> synthetic Parquet table.

Engines: ``pgm`` (Private-PGM via mbi: exact inference on the junction tree of the measured cliques) and ``torch``
(relaxed projection, :mod:`dpbeam.synth.torch_engine`: any number of measured cliques, on a GPU when there is one).
``auto`` picks ``pgm`` while its largest junction-tree clique fits in memory, ``torch`` otherwise; the statement
says which engine ran and why. torch is imported only when its engine runs.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from dpbeam.errors import SpecError
from dpbeam.measurements import MeasurementsArtifact
from dpbeam.progress import Reporter
from dpbeam.synth.generate import FittedModel, write_synthetic_table

# Private-PGM holds float64 tables over every junction-tree clique; 2^25 cells is 256 MiB for the largest one.
PGM_MAX_CELLS = 1 << 25


def engine_choice(artifact: MeasurementsArtifact, requested: str = "auto") -> tuple[str, str]:
    """The engine to fit, and why, in words for the release statement (``synthesizer.engine_reason``).

    The cost that decides is Private-PGM's memory: the cells of the largest junction-tree clique of the measured
    cliques, computed by :func:`dpbeam.synth.jtree.max_cells` with mbi's own elimination rule (O(d^2), no junction
    tree built by mbi). Within ``PGM_MAX_CELLS`` ``auto`` takes pgm (exact inference); beyond, torch (whose memory is
    set by its relaxed table, not by the cliques). Post-processing: reads the artifact only."""
    if requested not in ("auto", "pgm", "torch"):
        raise SpecError(f"synthesizer.engine {requested!r} is not available; use auto, pgm or torch")
    if requested == "torch":
        return "torch", "requested by the spec (synthesizer.engine: torch)"
    from dpbeam.synth import jtree

    cells = jtree.max_cells(artifact.model_sizes, [tuple(m.clique) for m in artifact.measurements])
    size = f"the largest junction-tree clique of the {len(artifact.measurements)} measured cliques has {cells:,} cells"
    if cells <= PGM_MAX_CELLS:
        how = "requested by the spec" if requested == "pgm" else "auto"
        return "pgm", f"{how}: {size}, within Private-PGM's limit of {PGM_MAX_CELLS:,}"
    if requested == "pgm":
        raise SpecError(
            f"the measured cliques need a junction-tree clique of {cells:,} cells, beyond Private-PGM's limit of "
            f"{PGM_MAX_CELLS:,}; use engine torch (or auto), or measure fewer or smaller marginals (coarser bins)"
        )
    return "torch", f"auto: {size}, beyond Private-PGM's limit of {PGM_MAX_CELLS:,}"


def choose_engine(artifact: MeasurementsArtifact, requested: str = "auto") -> str:
    return engine_choice(artifact, requested)[0]


def _torch_engine():
    try:
        from dpbeam.synth import torch_engine
    except ImportError as err:
        raise SpecError(f"the torch synthesis engine needs torch: pip install 'dpbeam[torch]' ({err})") from None
    return torch_engine


def fit_model(
    artifact: MeasurementsArtifact,
    engine: str = "auto",
    iters: int = 1000,
    seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
    warm_start: Any = None,
) -> FittedModel:
    """Fit the chosen engine; ``progress(step, loss)`` reports steps done (at most ``iters``; Private-PGM reports no
    loss, so it passes nan). ``warm_start``: a Private-PGM model fitted to a subset of the artifact's measurements
    (the refinement's), where the pgm fit starts; ignored by torch."""
    if choose_engine(artifact, engine) == "torch":
        return _torch_engine().fit(artifact, steps=iters, seed=seed, progress=progress, report_every=10)
    from dpbeam.synth import pgm

    done = [0]

    def pgm_progress(n: int) -> None:
        done[0] += n
        progress(min(done[0], iters), float("nan"))

    return pgm.fit(artifact, iters=iters, seed=seed, progress=pgm_progress if progress else None,
                   warm_start=warm_start if isinstance(warm_start, pgm.PGMModel) else None)


def _device(model: FittedModel) -> str:
    device = getattr(model, "device", None)
    if device is None:  # Private-PGM runs on JAX's default backend
        import jax

        device = jax.default_backend()
    return str(device)


def synthesize(
    artifact: MeasurementsArtifact | str,
    out_uri: str,
    rows: int | None = None,
    seed: int = 0,
    engine: str = "auto",
    iters: int = 1000,
    overwrite: bool = False,
    reporter: Reporter | None = None,
    layout: dict[str, Any] | None = None,
    warm_start: Any = None,
    task: Any = None,
) -> dict[str, Any]:
    """Fit a model to the artifact and write ``rows`` synthetic rows (default: the DP estimate of the row count);
    ``layout``: :class:`dpbeam.lake.DatasetWriter`'s file sizing and partitioning; ``warm_start``: see
    :func:`fit_model`; ``task``: a DP task model (:mod:`dpbeam.task`) that draws the target column."""
    reporter = reporter or Reporter()
    if isinstance(artifact, str):
        artifact = MeasurementsArtifact.read(artifact)
    from dpbeam import lake

    lake.check_output_free(out_uri, overwrite)
    name, reason = engine_choice(artifact, engine)
    t0 = time.perf_counter()
    with reporter.timed("fit"), reporter.stage(f"fitting {name} model (up to {iters} iterations)", total=iters) as advance:
        done = [0]

        def progress(step: int, _loss: float) -> None:
            advance(step - done[0])
            done[0] = step

        model = fit_model(artifact, name, iters=iters, seed=seed, progress=progress, warm_start=warm_start)
    fit_s = time.perf_counter() - t0
    n = rows if rows is not None else int(round(artifact.estimated_total()))
    info = {"engine": model.engine, "engine_reason": reason, "device": _device(model), "iters": iters,
            "fit_seconds": round(fit_s, 3)}
    if name == "pgm":
        info["iters_run"] = model.iters  # the fit stops once the noisy loss levels off (pgm.PATIENCE)
    if name == "torch":
        info.update(relaxed_rows=model.rows, steps=model.steps,
                    loss_per_entry=round(model.loss / model.measured_entries, 4))
    if task is not None:  # task-guided synthesis: labels from the DP task model (post-processing)
        from dpbeam.task.job import guide

        model, info["task"] = guide(model, task, artifact, task.mix)
    with reporter.timed("generate and write"):
        return write_synthetic_table(model, artifact, out_uri, n, seed, info, overwrite=overwrite,
                                     reporter=reporter, layout=layout)
