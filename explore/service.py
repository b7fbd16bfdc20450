"""`altlake serve`: clip-retrieval's clip back protocol over a release, plus metrics and a web page.

Endpoints (request and response shapes as in rom1504/clip-retrieval's clip_back.py, so its
ClipClient and front end work unchanged):
    POST /knn-service   text | image (base64) | image_url | embedding_input -> [{id, similarity, url, caption, ...}]
    POST /metadata      {ids, indice_name} -> [{id, metadata: {...}}]
    GET  /indices-list  -> [name, ...]: each release, then each of its derived subsets as <release>/<subset>
and ours: GET /indices/{name} (what the web page needs to know), /healthz, Prometheus /metrics,
the web page at /, the OpenAPI spec at /openapi.json.

Every bad input ends in a 4xx with {"error": "..."}: bodies over the size limit (413), malformed
JSON or fields (422), bad base64 / images / embeddings (400, 415), unknown indices (404), and an
option the release cannot honour (422: aesthetic_score without aesthetic scores, safe mode without
punsafe, the violence detector without a CLIP model). No accepted option is silently ignored.

Browsers: the web page is same-origin. Cross-origin callers (the clip-retrieval front end on its
own host) are served only from the origins given with --cors-origin, and a body sent as a CORS
"simple request" (no Content-Type, text/plain, a form) is accepted only from such an origin or
from a non-browser client, so no other web page can drive a visitor's local server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import faiss
import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from pydantic import AliasChoices, BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from altlake.config import Settings
from explore.encoder import ModelOverrides, QueryEncoder
from explore.errors import QueryError
from explore.image_url import ImageUrlFetcher
from explore.release import open_release, resolve_release
from explore.search import Explorer, SearchOptions, decode_base64_image

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent / "web"
MAX_NUM_IMAGES = 10_000
MAX_EMBEDDING_DIM = 4096
MAX_METADATA_IDS = 10_000
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
HIDDEN_HEADER = "X-Altlake-Hidden"  # "unsafe=3,violence=1,duplicate_urls=1,near_duplicates=0": rows each filter removed
SERVE_ARGS_ENV = "ALTLAKE_SERVE_ARGS"  # `altlake serve --workers N`: each worker process rebuilds the app from these
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


# --- the protocol ------------------------------------------------------------------------------


class KnnRequest(BaseModel):
    """clip back's /knn-service body; `hide_duplicate_urls` is altlake's addition."""

    model_config = ConfigDict(extra="ignore")

    text: str | None = Field(None, max_length=2000)
    image: str | None = Field(None, description="base64 image bytes (a data: URL prefix is accepted)")
    image_url: str | None = Field(None, max_length=2048)
    embedding_input: Annotated[list[float], Field(max_length=MAX_EMBEDDING_DIM)] | None = Field(
        None, validation_alias=AliasChoices("embedding_input", "embedding")
    )
    modality: Literal["image", "text"] = "image"
    num_images: int = Field(40, ge=1, le=MAX_NUM_IMAGES)
    num_result_ids: int | None = Field(None, ge=1, le=MAX_NUM_IMAGES, description="candidates before filtering; default num_images")
    indice_name: str | None = Field(None, max_length=256)
    use_mclip: bool = False
    deduplicate: bool = Field(False, description="hide near-duplicate images (image embedding cosine)")
    hide_duplicate_urls: bool = False
    use_safety_model: bool = Field(False, description="safe mode: hide results whose punsafe exceeds the threshold (or is unknown)")
    use_violence_detector: bool = Field(False, description="hide results whose image is closer to violent than to peaceful prompts")
    aesthetic_score: Annotated[int, Field(ge=0, le=9)] | Literal[""] | None = Field(
        None, description="steer the query toward images of this rating (the release's `aesthetic` column, rounded); \"\" for none"
    )
    aesthetic_weight: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] | Literal[""] | None = Field(
        None, description="how far to steer toward aesthetic_score (default 0.5); nothing to scale without a score"
    )


class MetadataRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    ids: Annotated[list[Annotated[int, Field(ge=0)]], Field(max_length=MAX_METADATA_IDS)]
    indice_name: str | None = Field(None, max_length=256)


class ErrorBody(BaseModel):
    error: str


class KnnResult(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: int
    similarity: float
    url: str | None = None
    caption: str | None = None


# --- the app -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceConfig:
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    allow_hosts: tuple[str, ...] = ()  # SSRF allow-list for image_url queries (tests, private mirrors)
    search: SearchOptions = field(default_factory=SearchOptions)
    models: ModelOverrides = field(default_factory=ModelOverrides)
    search_threads: int = 1  # OpenMP threads per faiss call; parallelism comes from worker processes
    cors_origins: tuple[str, ...] = ()  # cross-origin front ends allowed to call the API (none: same-origin only)
    max_image_url_fetches: int = 32  # image_url downloads at once per process; more wait


def download_config(config: ServiceConfig, settings: Settings):
    """The worker's downloader settings for image_url queries: one attempt, a short deadline."""
    from gpu_workers.downloader import DownloadConfig

    return DownloadConfig.from_settings(settings, allow_hosts=config.allow_hosts, timeout_s=15.0, retries=0, max_bytes=config.max_body_bytes)


def load_explorers(releases: list[str], config: ServiceConfig, settings: Settings | None = None) -> list[Explorer]:
    """Open each release (id or path) with its indices and its CLIP, failing fast on any problem."""
    settings = settings or Settings.from_env()
    explorers = []
    for release in releases:
        opened = open_release(resolve_release(release, settings))
        encoder = QueryEncoder.for_manifest(opened.manifest, config.models)
        explorers.append(Explorer(opened, encoder, config.search))
        notice = opened.deprecation()
        if notice:  # still served (people pin releases), but nobody should pick it up unawares
            superseded = f"; use {notice['superseded_by']} instead" if notice.get("superseded_by") else ""
            print(f"altlake serve: warning: release {opened.release_id} is deprecated: {notice['reason']}{superseded}", file=sys.stderr)
    names = [e.name for e in explorers]
    if len(set(names)) != len(names):
        raise ValueError(f"two releases share a name: {names}")
    return explorers


def create_app(explorers: list[Explorer], config: ServiceConfig | None = None, settings: Settings | None = None) -> FastAPI:
    if not explorers:
        raise ValueError("serve at least one release")
    config = config or ServiceConfig()
    # Each release, then each of its derived subsets as `<release>/<subset>` (an allow-mask over its index).
    by_name = {view.name: view for e in explorers for view in (e, *e.subset_views())}
    image_urls = ImageUrlFetcher(download_config(config, settings or Settings.from_env()), config.max_image_url_fetches)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        await image_urls.close()

    app = FastAPI(
        title="altlake explore",
        version="1",
        description="clip-retrieval compatible KNN search over altlake releases",
        lifespan=lifespan,
    )
    registry = CollectorRegistry()
    requests = Counter("altlake_explore_requests", "HTTP requests by route and status", ["route", "method", "status"], registry=registry)
    latency = Histogram("altlake_explore_request_seconds", "request latency by route", ["route"], buckets=LATENCY_BUCKETS, registry=registry)
    results = Histogram("altlake_explore_results", "results returned per knn query", buckets=(0, 1, 10, 40, 100, 1000, 10_000), registry=registry)
    batches = Histogram("altlake_explore_search_batch", "queries answered per faiss call (micro-batching)", buckets=(1, 2, 4, 8, 16, 32, 64), registry=registry)

    def explorer_for(name: str | None) -> Explorer:
        if name is None or name == "":
            return explorers[0]
        if name not in by_name:
            raise QueryError(404, f"unknown indice_name {name!r}; available: {sorted(by_name)}")
        return by_name[name]

    @app.exception_handler(QueryError)
    async def query_error(_: Request, exc: QueryError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors()]
        return JSONResponse({"error": "invalid request: " + "; ".join(problems)[:2000]}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    errors = {400: {"model": ErrorBody}, 404: {"model": ErrorBody}, 413: {"model": ErrorBody}, 415: {"model": ErrorBody}, 422: {"model": ErrorBody}}

    batcher = SearchBatcher(config.search_threads, batches)

    @app.post("/knn-service", responses={200: {"model": list[KnnResult]}, **errors}, response_class=Response)
    async def knn_service(body: KnnRequest) -> Response:
        """Nearest pairs of a text, image, image URL or embedding (clip back's protocol)."""
        explorer = explorer_for(body.indice_name)
        score = None if body.aesthetic_score == "" else body.aesthetic_score  # clip back's "" means unset
        weight = None if body.aesthetic_weight == "" else body.aesthetic_weight
        explorer.check_options(score, body.use_safety_model, body.use_violence_detector)  # before any fetch or search
        image = None
        if not body.text and body.image:
            image = decode_base64_image(body.image)
        elif not body.text and body.image_url:
            image = await image_urls.fetch(body.image_url)  # on this loop: a slow host holds no thread
        query = (body.text, image, body.embedding_input, body.use_mclip)
        if body.text or image is not None:  # CLIP encoding: keep the event loop free
            vector = await run_in_threadpool(explorer.query_vector, *query)
        else:  # an embedding is validated and normalised in microseconds: a thread hop would cost more
            vector = explorer.query_vector(*query)
        vector = explorer.steer(vector, score, weight)
        k = max(body.num_result_ids or body.num_images, body.num_images)
        sims, ids = await batcher.search(explorer, body.modality, vector, k)
        hidden: dict[str, int] = {}
        found = explorer.results(
            sims, ids, body.num_images, body.use_safety_model, body.hide_duplicate_urls, body.deduplicate,
            hide_violent=body.use_violence_detector, hidden=hidden,
        )  # fmt: skip
        results.observe(len(found))
        # The body stays clip back's list; what each filter hid among the candidates rides in a header.
        counts = {HIDDEN_HEADER: ",".join(f"{name}={n}" for name, n in hidden.items())} if hidden else None
        return Response(orjson.dumps(found, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json", headers=counts)

    @app.post("/metadata", responses=errors, response_class=Response)
    async def metadata(body: MetadataRequest) -> Response:
        """Metadata of result ids (clip back's protocol)."""
        found = explorer_for(body.indice_name).metadata_for(body.ids)
        return Response(orjson.dumps(found, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")

    @app.get("/indices-list")
    async def indices_list() -> list[str]:
        return list(by_name)

    @app.get("/indices/{name:path}", responses=errors)  # :path: a derived subset is named <release>/<subset>
    async def index_details(name: str) -> dict:
        """What a client needs to build queries: rows, dimension, model, index quality."""
        explorer = explorer_for(name)
        encoder = explorer.encoder
        return {
            "name": explorer.name,
            "rows": explorer.rows,
            "dim": explorer.dim,
            "columns": explorer.metadata.columns,
            "clip_model": encoder.models.clip_id if encoder else None,
            "text_queries": encoder is not None,
            "multilingual": bool(encoder and encoder.has_multilingual),
            "unsafe_threshold": explorer.options.unsafe_threshold,
            "safe_mode": explorer.has_punsafe,  # which of clip back's options this release can honour
            "aesthetic_scores": explorer.aesthetic is not None,
            "violence_detector": explorer.violence is not None,
            "deprecated": explorer.release.deprecation(),  # superseded: the notice says why and by what
            "indices": {
                m: {k: v for k, v in i.items() if k in ("factory", "kind", "nprobe", "recall_at_10", "rows")}
                for m, i in explorer.info["indices"].items()
            },
        }

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok", "indices": list(by_name)}

    @app.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        """This process's counters, or every worker's summed when several serve (prometheus multiprocess)."""
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
        combined = CollectorRegistry()
        multiprocess.MultiProcessCollector(combined)
        return Response(generate_latest(combined), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html")

    app.mount("/web", StaticFiles(directory=WEB_DIR), name="web")
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    app.add_middleware(ProtocolJson, paths=("/knn-service", "/metadata"), trusted_origins=config.cors_origins)
    if config.cors_origins:  # outside ProtocolJson and BodyLimit: preflight requests are answered before either
        app.add_middleware(
            CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
            allow_headers=["Content-Type"], expose_headers=[HIDDEN_HEADER],
        )  # fmt: skip
    app.add_middleware(Metrics, requests=requests, latency=latency)
    return app


class SearchBatcher:
    """Concurrent queries for the same index and k share one faiss call (micro-batching).

    A request queues its vector and awaits; the first one in a queue schedules the flush for the
    end of the current event-loop pass, so every request parsed in that pass joins the batch. The
    search runs on the event loop itself: ~1 ms of CPU, cheaper than a thread hop, and several
    worker processes give the parallelism. Grouping by k keeps every answer identical to a lone
    query's (a wider k would widen the reranked shortlist).
    """

    def __init__(self, omp_threads: int, batch_sizes: Histogram):
        self.omp_threads, self.batch_sizes = omp_threads, batch_sizes
        self.queues: dict[tuple[str, str, int], list[tuple[np.ndarray, asyncio.Future]]] = {}

    async def search(self, explorer, modality: str, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        key = (explorer.name, modality, k)
        future = asyncio.get_running_loop().create_future()
        queue = self.queues.setdefault(key, [])
        queue.append((vector, future))
        if len(queue) == 1:
            asyncio.get_running_loop().call_soon(self._flush, explorer, key)
        return await future

    def _flush(self, explorer, key: tuple[str, str, int]) -> None:
        batch = self.queues.pop(key)
        self.batch_sizes.observe(len(batch))
        faiss.omp_set_num_threads(self.omp_threads)  # per thread: the loop's thread may not be the main one
        try:
            sims, ids = explorer.knn[key[1]].search(np.stack([vector for vector, _ in batch]), key[2])
        except Exception as exc:  # noqa: BLE001 - every waiting request gets the error, none hangs
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for row, (_, future) in enumerate(batch):
            if not future.done():  # a client that disconnected cancelled its future
                future.set_result((sims[row], ids[row]))


class BodyLimit:
    """413 for bodies over the limit, by Content-Length up front or by counting a streamed body."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            body = orjson.dumps({"error": f"request body over the {self.max_bytes}-byte limit (or a bad Content-Length)"})
            response = Response(body, status_code=413, media_type="application/json")
            return await response(scope, receive, send)
        seen = 0

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(413, f"request body over the {self.max_bytes}-byte limit")
            return message

        return await self.app(scope, counted_receive, send)


# Content types a browser may POST cross-origin without a CORS preflight ("simple requests").
SIMPLE_CONTENT_TYPES = (b"text/plain", b"application/x-www-form-urlencoded", b"multipart/form-data")


class ProtocolJson:
    """clip back parses any body as JSON (Flask's force=True): ClipClient sends no Content-Type and
    the clip-retrieval front end sends text/plain. Those bodies are labelled JSON on the protocol
    routes, but only for callers that cannot be a foreign web page: no Origin header (a program),
    the page's own origin, or a trusted front end. A browser on any other page gets a 415 before
    the request does anything (no image_url fetch, no search)."""

    def __init__(self, app, paths: tuple[str, ...], trusted_origins: tuple[str, ...] = ()):
        self.app, self.paths = app, paths
        self.trusted = {origin.rstrip("/").lower().encode() for origin in trusted_origins}

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.paths:
            raw = dict(scope.get("headers") or [])
            declared = raw.get(b"content-type", b"").split(b";")[0].strip().lower()
            if not declared or declared in SIMPLE_CONTENT_TYPES:
                origin = raw.get(b"origin")
                if origin is not None and not self._trusted(origin, scope, raw):
                    body = orjson.dumps({"error": "send JSON with Content-Type: application/json (a cross-origin simple request is refused)"})
                    return await Response(body, status_code=415, media_type="application/json")(scope, receive, send)
                if declared in (b"", b"text/plain"):
                    headers = [(k, v) for k, v in scope.get("headers") or [] if k != b"content-type"]
                    scope["headers"] = [*headers, (b"content-type", b"application/json")]  # in place: Metrics reads scope["route"]
        return await self.app(scope, receive, send)

    def _trusted(self, origin: bytes, scope, raw: dict) -> bool:
        origin = origin.rstrip(b"/").lower()
        own = (scope.get("scheme", "http").encode() + b"://" + raw.get(b"host", b"")).lower()
        return origin == own or origin in self.trusted


class Metrics:
    """Request count and latency per route template (unmatched paths share one label)."""

    def __init__(self, app, requests: Counter, latency: Histogram):
        self.app, self.requests, self.latency = app, requests, latency

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = {"code": 500}

        async def observed_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            route = getattr(scope.get("route"), "path", None) or ("/web" if scope["path"].startswith("/web/") else "unmatched")
            self.requests.labels(route, scope["method"], str(status["code"])).inc()
            self.latency.labels(route).observe(time.perf_counter() - started)


# --- CLI -----------------------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    settings = Settings.from_env()
    parser.add_argument("--release", action="append", required=True, help="release id or path (repeat to serve several)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1234)
    parser.add_argument("--unsafe-threshold", type=float, default=SearchOptions.unsafe_threshold, help="safe mode hides punsafe above this")
    parser.add_argument("--near-duplicate-cosine", type=float, default=settings.near_duplicate_cosine, help="image cosine of near duplicates")
    parser.add_argument("--max-body-mb", type=float, default=DEFAULT_MAX_BODY_BYTES / 2**20, help="largest accepted request body")
    parser.add_argument("--allow-host", action="append", default=[], help="host/IP/CIDR image_url queries may reach despite the SSRF guard")
    parser.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                        help="a cross-origin front end allowed to call the API, e.g. http://localhost:3005 (repeatable; default none)")
    parser.add_argument("--workers", type=int, default=1, help="server processes sharing the memory-mapped indices (about one per core)")
    parser.add_argument("--search-threads", type=int, default=1, help="OpenMP threads per faiss call (more only helps big exact indices on idle cores)")
    parser.add_argument("--device", default="cpu", help="torch device for query embeddings")
    parser.add_argument("--clip-checkpoint", help="CLIP weights file, for releases embedded from a checkpoint")
    parser.add_argument("--multilingual-checkpoint", help="multilingual text tower file, when not the demo one")


def run(args: argparse.Namespace) -> int:
    import uvicorn

    if args.workers < 1:
        raise SystemExit("altlake serve: --workers must be at least 1")
    if args.workers == 1:
        uvicorn.run(app_from_args(args), host=args.host, port=args.port, log_level="info", access_log=False)  # /metrics counts requests
        return 0
    # Worker processes are spawned fresh: each rebuilds the app from the arguments (the indices and
    # metadata are memory-mapped, so the page cache holds them once) and counts into shared metric files.
    metrics_dir = tempfile.mkdtemp(prefix="altlake-serve-metrics-")
    os.environ[SERVE_ARGS_ENV] = json.dumps(vars(args))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        uvicorn.run(
            "explore.service:app_from_environment", factory=True, workers=args.workers,
            host=args.host, port=args.port, log_level="info", access_log=False,
        )  # fmt: skip
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def app_from_environment() -> FastAPI:
    """uvicorn's app factory in each worker process of `altlake serve --workers N`."""
    return app_from_args(argparse.Namespace(**json.loads(os.environ[SERVE_ARGS_ENV])))


def app_from_args(args: argparse.Namespace) -> FastAPI:
    import pyarrow

    # One query is tiny: kernel thread pools only add wake-up overhead (pyarrow's made a 10-row
    # take cost 10x). Concurrency comes from micro-batching and worker processes instead.
    pyarrow.set_cpu_count(1)
    config = ServiceConfig(
        max_body_bytes=int(args.max_body_mb * 2**20),
        allow_hosts=tuple(args.allow_host),
        search=SearchOptions(unsafe_threshold=args.unsafe_threshold, near_duplicate_cosine=args.near_duplicate_cosine),
        models=ModelOverrides(clip_checkpoint=args.clip_checkpoint, multilingual_checkpoint=args.multilingual_checkpoint, device=args.device),
        search_threads=args.search_threads,
        cors_origins=tuple(args.cors_origin),
    )
    return create_app(load_explorers(args.release, config), config)
