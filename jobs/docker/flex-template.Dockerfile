# Dataflow flex template: the launcher image runs jobs.beam_main, which submits the pipeline; the same image serves as
# the workers' SDK container (--sdk_container_image), so launcher and workers run one dpbeam.
# Build from the repository root:  docker build -f jobs/docker/flex-template.Dockerfile -t REGION-docker.pkg.dev/P/R/dpbeam-measure .
FROM gcr.io/dataflow-templates-base/python311-template-launcher-base:latest AS launcher
FROM apache/beam_python3.11_sdk:2.77.0

COPY --from=launcher /opt/google/dataflow/python_template_launcher /opt/google/dataflow/python_template_launcher

WORKDIR /opt/dpbeam
COPY pyproject.toml constraints.txt README.md ./
COPY dpbeam ./dpbeam
COPY transforms ./transforms
COPY jobs ./jobs
RUN pip install --no-cache-dir -c constraints.txt ".[beam,ledger]"

ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/opt/dpbeam/jobs/beam_main.py
ENV PYTHONPATH=/opt/dpbeam
# the launcher runs FLEX_TEMPLATE_PYTHON_PY_FILE; workers start from Beam's own boot entrypoint
ENTRYPOINT ["/opt/apache/beam/boot"]
