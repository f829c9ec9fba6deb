# The pipeline image: what every stage container runs (`python -m data_jobs.<stage>` / `python -m train_jobs.<stage>`).
# Spark stages need Java; JAX stages on TPU hosts build with --build-arg EXTRAS="--extra tpu" (jax[tpu], libtpu).
# BASE_IMAGE: any Debian bookworm image with Python 3.11 (python:3.11-slim-bookworm from a registry, or a local
# base made with debootstrap + `podman import` where no registry is reachable).
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ARG EXTRAS=""
# Build-time only (not kept in the image): where HTTPS is intercepted, mount the host's CA bundle and name it here.
ARG SSL_CERT_FILE
ARG PIP_CERT
ENV PYTHONUNBUFFERED=1 \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYSPARK_PYTHON=/opt/venv/bin/python

RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless procps \
 && rm -rf /var/lib/apt/lists/* \
 && pip install --no-cache-dir uv==0.13.9

WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project $EXTRAS
COPY xgen_core ./xgen_core
COPY data_jobs ./data_jobs
COPY train_jobs ./train_jobs
COPY operators ./operators
COPY configs ./configs
RUN uv sync --frozen --no-dev $EXTRAS

ENTRYPOINT ["python", "-m"]
CMD ["xgen_core.cli", "--help"]
