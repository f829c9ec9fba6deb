# The orchestrator image: Airflow (scheduler, API server, DAG processor, triggerer) with the DAGs and operators.
# It holds no JAX or Spark runtime beyond what the local backend needs; stage containers use the pipeline image.
# BASE_IMAGE: any Debian bookworm image with Python 3.11 (python:3.11-slim-bookworm from a registry, or a local
# base made with debootstrap + `podman import` where no registry is reachable).
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    AIRFLOW_HOME=/opt/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/airflow/dags \
    AIRFLOW__CORE__LOAD_EXAMPLES=False

RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless procps \
 && rm -rf /var/lib/apt/lists/* \
 && pip install --no-cache-dir uv==0.13.9

WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project --extra orchestrator
COPY xgen_core ./xgen_core
COPY data_jobs ./data_jobs
COPY train_jobs ./train_jobs
COPY operators ./operators
COPY configs ./configs
COPY dags /opt/airflow/dags
COPY infra/local/run_dag.py ./infra/local/run_dag.py
RUN uv sync --frozen --no-dev --extra orchestrator

ENTRYPOINT ["airflow"]
CMD ["standalone"]
