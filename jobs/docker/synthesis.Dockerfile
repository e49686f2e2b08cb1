# Synthesis (post-processing only): measurements artifact in, synthetic Parquet out. Runs on a GPU when one is
# visible (CUDA build of torch), else on the CPU. It needs no access to raw data, and its service account has none.
# Build from the repository root:  docker build -f jobs/docker/synthesis.Dockerfile -t REGION-docker.pkg.dev/P/R/dpbeam-synthesize .
# torch from PyPI (pinned by constraints.txt) bundles its CUDA libraries; the host (Cloud Run GPU, Batch) gives the driver
FROM python:3.11-slim

WORKDIR /opt/dpbeam
COPY pyproject.toml constraints.txt README.md ./
COPY dpbeam ./dpbeam
COPY transforms ./transforms
COPY jobs ./jobs
RUN pip install --no-cache-dir -c constraints.txt ".[torch,ledger]" gcsfs

ENV PYTHONPATH=/opt/dpbeam
ENTRYPOINT ["python", "-m", "jobs.synthesize_main"]
