"""`altlake serve` against hostile callers and hostile images: query-image bombs, cross-origin pages
driving a visitor's local server, error texts that would echo fetched bytes or map ports, and
slow image hosts starving health checks and embedding queries."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from altlake.config import Settings
from altlake_cli.image_server import ImageServer
from explore.image_url import NOT_FETCHED
from explore.index import build_index
from explore.search import QueryError, load_image
from explore.service import ServiceConfig, create_app, load_explorers
from tests.explore.conftest import make_release, uvicorn_server

DIM = 32
EMBEDDING = [0.1] * DIM


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), "red").save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def _b64(body: bytes) -> str:
    return base64.b64encode(body).decode()


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = make_release(tmp_path_factory.mktemp("served") / "rel-hostile", [64], dim=DIM)
    build_index(str(root))
    return root


@pytest.fixture(scope="module")
def images() -> Iterator[ImageServer]:
    with ImageServer() as server:
        yield server


def _client(release, **config) -> TestClient:
    service = ServiceConfig(allow_hosts=("127.0.0.1",), **config)
    return TestClient(create_app(load_explorers([str(release)], service, Settings.from_env()), service))


# --- query images: the worker's limits before any decode, bounded resizes -------------------------

QUERY_IMAGES = {  # name -> (body, status, words of the message)
    "200,000 x 1 strip (661 bytes)": (_png(200_000, 1), 400, "a side over"),
    "10,000 x 100 strip": (_png(10_000, 100), 400, "aspect ratio"),
    "2,000,000 x 1 strip": (_png(2_000_000, 1), 400, "a side over"),
    "1 x 1 pixel": (_png(1, 1), 400, "a side under"),
    "not an image": (b"<html>secret page</html>" * 10, 415, "not a recognised image"),
}


@pytest.mark.parametrize("name", list(QUERY_IMAGES))
def test_query_images_get_the_workers_limits_before_decoding(name, release):
    body, status, words = QUERY_IMAGES[name]
    response = _client(release).post("/knn-service", json={"image": _b64(body)})
    assert response.status_code == status, response.text
    assert words in response.json()["error"]
    assert "secret" not in response.text


def test_a_large_query_image_is_decoded_no_larger_than_the_model_input():
    big = Image.effect_noise((3000, 2000), 40).convert("RGB")
    for fmt in ("JPEG", "PNG"):
        buffer = io.BytesIO()
        big.save(buffer, fmt)
        picture = load_image(buffer.getvalue(), 40_000_000, side=224)
        assert picture.size == (336, 224), fmt  # shorter side at the model's input, ratio kept
    small = load_image(_png(64, 48), 40_000_000, side=224)
    assert small.size == (64, 48)  # never enlarged here: CLIP's preprocessing does that
    with pytest.raises(QueryError, match="aspect ratio"):
        load_image(_png(5000, 100), 40_000_000, side=224)


# --- image_url errors: nothing echoed, no port map --------------------------------------------------


def test_image_url_errors_never_echo_bytes_nor_tell_a_closed_port_from_a_404(release, images):
    client = _client(release)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    answers = {
        what: client.post("/knn-service", json={"image_url": url}).json()["error"]
        for what, url in {
            "closed port": f"http://127.0.0.1:{closed}/a.jpg",
            "404": images.url("/status/404"),
            "html page": images.url("/html/page"),
            "too large": images.url("/large/declared?bytes=999999999"),
        }.items()
    }
    assert set(answers.values()) == {NOT_FETCHED}, answers


# --- browsers: CORS and simple requests -------------------------------------------------------------


def test_a_foreign_page_cannot_drive_the_server(release, images):
    client = _client(release)
    before = images.hits("/photo/astronaut.jpg")
    body = json.dumps({"image_url": images.url("/photo/astronaut.jpg")})
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        headers = {"Origin": "http://evil.example"} | ({"Content-Type": content_type} if content_type else {})
        response = client.post("/knn-service", content=body, headers=headers)
        assert response.status_code == 415, (content_type, response.text)
        assert "access-control-allow-origin" not in response.headers
    assert images.hits("/photo/astronaut.jpg") == before, "a refused request fetched nothing"
    preflight = client.options("/knn-service", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers


def test_programs_the_page_itself_and_listed_front_ends_are_served(release):
    body = json.dumps({"embedding_input": EMBEDDING, "num_images": 3})
    client = _client(release, cors_origins=("http://front.example:3005",))
    # ClipClient sends no Content-Type and no Origin; the clip-retrieval front end sends text/plain.
    assert client.post("/knn-service", content=body).status_code == 200
    own = client.post("/knn-service", content=body, headers={"Content-Type": "text/plain", "Origin": "http://testserver"})
    assert own.status_code == 200
    front = client.post("/knn-service", content=body, headers={"Content-Type": "text/plain", "Origin": "http://front.example:3005"})
    assert front.status_code == 200 and front.headers["access-control-allow-origin"] == "http://front.example:3005"
    preflight = client.options("/knn-service", headers={"Origin": "http://front.example:3005", "Access-Control-Request-Method": "POST"})
    assert preflight.headers["access-control-allow-origin"] == "http://front.example:3005"


# --- slow image hosts do not starve anyone else ------------------------------------------------------


def test_health_and_embedding_queries_answer_while_48_slow_image_queries_are_in_flight(release):
    images = ImageServer().start()
    config = ServiceConfig(allow_hosts=("127.0.0.1",))
    app = create_app(load_explorers([str(release)], config, Settings.from_env()), config)
    finished: list[str] = []
    lock = threading.Lock()

    def post(base: str, body: dict, label: str) -> int:
        request = urllib.request.Request(f"{base}/knn-service", json.dumps(body).encode(), {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                status = response.status
        except urllib.error.HTTPError as error:
            status = error.code
        with lock:
            finished.append(label)
        return status

    with uvicorn_server(app) as base, ThreadPoolExecutor(48) as pool:
        slow = [pool.submit(post, base, {"image_url": images.url(f"/photo/astronaut.jpg?delay=3&n={i}")}, "slow") for i in range(48)]
        while images.peak_concurrency < 8:  # the host's slots are taken: the slow queries are in flight
            threading.Event().wait(0.05)
        with urllib.request.urlopen(f"{base}/healthz", timeout=60) as health:
            assert health.status == 200
        assert post(base, {"embedding_input": EMBEDDING}, "embedding") == 200
        with lock:
            assert finished == ["embedding"], "health and embedding queries came back before any slow one"
        assert all(future.result() == 400 for future in slow)  # the release has no CLIP: fetched, then refused
    images.stop()
