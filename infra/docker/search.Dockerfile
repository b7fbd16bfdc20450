# altlake's search service (`altlake serve`): clip-retrieval's API, metrics and the web page over
# published releases, read from a local folder (releases on object storage are copied down first).
# No Spark, no Airflow: explore/ plus the CLIP text tower it borrows from gpu_workers for queries.
#
#   docker build -f infra/docker/search.Dockerfile -t altlake-search:0.1.0 .
#   docker run --rm -p 1234:1234 -v /srv/releases:/releases -e ALTLAKE_RELEASE_STORE=/releases \
#       altlake-search:0.1.0 serve --release <release-id> --host 0.0.0.0 --port 1234
#
# Queries are embedded on the CPU by default (`--device cuda` with `docker run --gpus all`).
# Base images are pinned by tag; to pin by digest as well, append @sha256:<digest> to a tag
# (`docker buildx imagetools inspect python:3.11-slim-bookworm` prints it), e.g.
#   docker build --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:<digest> ...
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
COPY --from=ghcr.io/astral-sh/uv:0.9 /uv /usr/local/bin/uv
ENV UV_LINK_MODE=copy UV_COMPILE_BYTECODE=1
COPY infra/docker/search-requirements.txt /tmp/search-requirements.txt
RUN uv venv --python /usr/local/bin/python /opt/venv \
 && VIRTUAL_ENV=/opt/venv uv pip install --no-cache -r /tmp/search-requirements.txt

FROM ${PYTHON_IMAGE}
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY altlake/ altlake/
COPY altlake_cli/ altlake_cli/
COPY explore/ explore/
COPY gpu_workers/ gpu_workers/
RUN useradd --create-home --uid 10001 altlake && chown -R altlake /app
USER 10001
ENV PATH=/opt/venv/bin:$PATH PYTHONPATH=/app PYTHONUNBUFFERED=1 \
    XDG_CACHE_HOME=/tmp/cache HF_HUB_OFFLINE=1
EXPOSE 1234
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:1234/healthz', timeout=4)"]
ENTRYPOINT ["python", "-m", "altlake_cli.main"]
CMD ["serve", "--help"]
