# The scoring worker alone (reader -> downloader -> resize -> CLIP -> safety heads -> writer):
# no Spark, no Airflow. One image runs `altlake score` on any GPU node (Kubernetes Job, AWS Batch)
# and falls back to CPU when no GPU is visible.
#
#   docker build -f infra/docker/worker.Dockerfile -t altlake-worker:0.1.0 .
#   docker run --gpus all -e ALTLAKE_S3_ENDPOINT=... altlake-worker:0.1.0 \
#       score --input s3://lake/batches/b1/input.parquet --output s3://lake/batches/b1/output --device cuda
#
# The torch wheels bundle CUDA 13 user-space libraries (nvidia-* pins in worker-requirements.txt);
# the base image brings the matching runtime layout and the node only needs a driver >= 580.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-runtime-ubuntu24.04
ARG PYTHON_VERSION=3.11

FROM ${CUDA_IMAGE} AS build
ARG PYTHON_VERSION
COPY --from=ghcr.io/astral-sh/uv:0.9 /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python UV_LINK_MODE=copy UV_COMPILE_BYTECODE=1
COPY infra/docker/worker-requirements.txt /tmp/worker-requirements.txt
RUN uv venv --python ${PYTHON_VERSION} /opt/venv \
 && VIRTUAL_ENV=/opt/venv uv pip install --no-cache -r /tmp/worker-requirements.txt

FROM ${CUDA_IMAGE}
COPY --from=build /opt/python /opt/python
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# Only the worker's packages: the contracts, the CLI front door and gpu_workers (demo models included).
COPY altlake/ altlake/
COPY altlake_cli/ altlake_cli/
COPY gpu_workers/ gpu_workers/
RUN useradd --create-home --uid 10001 altlake && chown -R altlake /app
USER altlake
ENV PATH=/opt/venv/bin:$PATH PYTHONPATH=/app PYTHONUNBUFFERED=1 \
    XDG_CACHE_HOME=/tmp/cache HF_HUB_OFFLINE=1
ENTRYPOINT ["python", "-m", "altlake_cli.main"]
CMD ["score", "--help"]
