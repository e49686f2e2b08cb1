# Evaluation (TRUSTED side, NOT DP): the synthetic table against the real one, for the data owner. It reads raw rows,
# so it runs as the measure account (reads raw, writes artifacts/scratch), never as the synthesize account; it writes
# report.html and evaluation.json to a trusted folder and prints no figure (jobs/evaluate_main.py).
# Build from the repository root:  docker build -f jobs/docker/evaluate.Dockerfile -t REGION-docker.pkg.dev/P/R/dpbeam-evaluate .
FROM python:3.11-slim

WORKDIR /opt/dpbeam
COPY pyproject.toml constraints.txt README.md ./
COPY dpbeam ./dpbeam
COPY transforms ./transforms
COPY jobs ./jobs
RUN pip install --no-cache-dir -c constraints.txt ".[evaluate,lake]" gcsfs

ENV PYTHONPATH=/opt/dpbeam
ENTRYPOINT ["python", "-m", "jobs.evaluate_main"]
