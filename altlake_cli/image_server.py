"""A real, local HTTP image server with hostile endpoints, for tests, `make demo` and benchmarks.

Serves real photos (scikit-image's and scikit-learn's sample images), generated images, a
directory of files, and every way a web server can misbehave towards an image downloader. It is a
plain threaded HTTP/1.1 server (keep-alive, like a real CDN) bound to 127.0.0.1 on a free port, and
counts hits per path and the peak number of concurrent requests so tests can assert what the
downloader did on the wire (robots.txt fetched once, an opted-out body never streamed, ...).

Endpoints (every one takes `?delay=SECONDS` to hold the response first):
  /robots.txt                      disallows /private/ for every user agent
  /photos                          JSON list of photo names
  /photo/NAME.EXT?size=N           a real photo as jpg|png|webp, longest side N (default: original)
  /gen/NAME.EXT?w=W&h=H            a generated image (noise + gradient seeded by NAME) as jpg|png|webp|gif|bmp
  /files/RELPATH                   a file of the served directory (`files_dir`)
  /status/CODE                     an empty response with that status (404, 500, 503, ...)
  /flaky/CODE/N/ANY?retry_after=S  CODE (429, 503) with Retry-After S (a number or "date") for the
                                   first N hits of this exact URL, then a photo
  /slow/ANY?bytes=N&interval=S     a JPEG Content-Type and length N, dripped one byte per interval
  /endless/ANY[?tag=V]             an image Content-Type and a body that never ends (X-Robots-Tag V)
  /large/ANY?bytes=N[&chunked=1]   N bytes of "image", with Content-Length (or streamed without it)
  /html/ANY                        an HTML page (wrong content type)
  /truncated/ANY.jpg               the first half of a real JPEG
  /bomb/ANY.png                    an 8 KB PNG whose header claims 100000 x 100000 pixels
  /loop/N                          302 to /loop/N+1, for ever
  /redirect?to=LOCATION            302 to LOCATION (relative, or absolute such as a private address)
  /noai/ANY                        a photo with `X-Robots-Tag: noai`
  /xrobots/ANY?tag=V[&tag=V2]      a photo with one X-Robots-Tag header per `tag`
  /private/ANY                     a photo, but robots.txt disallows the path
"""

from __future__ import annotations

import argparse
import email.utils
import functools
import importlib.util
import io
import json
import random
import struct
import threading
import time
import zlib
from collections import Counter
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from PIL import Image

ROBOTS_TXT = "User-agent: *\nDisallow: /private/\n"
_CONTENT_TYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp", "gif": "image/gif", "bmp": "image/bmp"}
_PIL_FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP", "gif": "GIF", "bmp": "BMP"}
_ENDLESS_CAP = 1 << 30  # even "endless" stops after 1 GiB, so a broken client cannot hang a test run


def photo_files() -> dict[str, Path]:
    """Real sample photos shipped inside scikit-image and scikit-learn, by name (file stem)."""
    found: dict[str, Path] = {}
    for package, subdir in (("skimage", "data"), ("sklearn", "datasets/images")):
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError(f"{package} is not installed: it provides the image server's photos")
        folder = Path(spec.submodule_search_locations[0]) / subdir
        for path in sorted(folder.iterdir()):
            if path.suffix in (".png", ".jpg"):
                found[path.stem] = path
    return found


@functools.lru_cache(maxsize=256)
def photo_bytes(name: str, ext: str = "jpg", size: int | None = None) -> bytes:
    """A real photo re-encoded as `ext`, its longest side scaled to `size` when given."""
    files = photo_files()
    if name not in files:
        raise KeyError(f"no photo {name!r}; have: {', '.join(files)}")
    with Image.open(files[name]) as image:
        image = image.convert("RGB")
        if size:
            scale = size / max(image.size)
            image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.LANCZOS)
        return _encode(image, ext)


@functools.lru_cache(maxsize=256)
def generated_bytes(name: str, ext: str = "jpg", width: int = 640, height: int = 480) -> bytes:
    """A synthetic image seeded by `name`: a colour gradient plus noise (so it compresses like a photo)."""
    rng = random.Random(name)
    base = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    tint = Image.new("RGB", (width, height), tuple(rng.randrange(256) for _ in range(3)))
    noise = Image.effect_noise((width, height), 64).convert("RGB")
    image = Image.blend(Image.blend(base, tint, 0.5), noise, 0.3)
    return _encode(image, ext)


def _encode(image: Image.Image, ext: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, _PIL_FORMATS[ext], **({"quality": 90} if ext in ("jpg", "webp") else {}))
    return buffer.getvalue()


def bomb_png(width: int = 100_000, height: int = 100_000, padding: int = 8192) -> bytes:
    """A valid-looking PNG of a few KB whose header claims width x height pixels.

    Padded with a text chunk so it passes a minimum-size check and reaches the pixel check.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    text = chunk(b"tEXt", b"Comment\x00" + b"x" * padding)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + text + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


class ImageServer:
    """The server object: start/stop (or `with`), URLs, and per-path hit counters for assertions."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, files_dir: str | Path | None = None, robots_txt: str = ROBOTS_TXT):
        self.files_dir = Path(files_dir).resolve() if files_dir else None
        self.robots_txt = robots_txt
        self._lock = threading.Lock()
        self._hits: Counter[str] = Counter()  # by path and by path?query
        self._bytes_sent: Counter[str] = Counter()  # body bytes the client accepted, by path
        self._user_agents: dict[str, str] = {}  # last User-Agent seen, by path?query
        self._active = 0
        self.peak_concurrency = 0
        self._httpd = ThreadingHTTPServer((host, port), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return self.base_url + "/" + path.lstrip("/")

    def hits(self, path: str) -> int:
        """Requests seen for `path` (e.g. "/robots.txt"), or for an exact "path?query"."""
        with self._lock:
            return self._hits[path]

    def bytes_sent(self, path: str) -> int:
        """Body bytes written to clients for `path` (how much of a body was actually streamed)."""
        with self._lock:
            return self._bytes_sent[path]

    def user_agent(self, target: str) -> str | None:
        """The User-Agent of the last request for `target` ("path?query"), to check crawler honesty."""
        with self._lock:
            return self._user_agents.get(target)

    def reset_stats(self) -> None:
        with self._lock:
            self._hits.clear()
            self._bytes_sent.clear()
            self._user_agents.clear()
            self.peak_concurrency = self._active

    def start(self) -> ImageServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="image-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> ImageServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def serve_forever(self) -> None:
        """Serve in the calling thread until interrupted (the CLI's mode)."""
        try:
            self._httpd.serve_forever()
        finally:
            self._httpd.server_close()

    def _enter(self, path: str, target: str, user_agent: str | None) -> int:
        """Count a request; return how many times this exact URL has now been requested."""
        with self._lock:
            self._user_agents[target] = user_agent or ""
            self._hits[path] += 1
            if target != path:
                self._hits[target] += 1
            self._active += 1
            self.peak_concurrency = max(self.peak_concurrency, self._active)
            return self._hits[target]

    def _sent(self, path: str, size: int) -> None:
        with self._lock:
            self._bytes_sent[path] += size

    def _leave(self) -> None:
        with self._lock:
            self._active -= 1


def _make_handler(server: ImageServer) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        owner = server

    return Handler


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so clients can (and must) reuse connections
    server_version = "altlake-image-server/1"
    owner: ImageServer

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        pass  # tests and benches would drown in access logs

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        hit = self.owner._enter(parts.path, self.path, self.headers.get("User-Agent"))
        try:
            if "delay" in query:
                time.sleep(float(query["delay"][0]))
            self._route(parts.path, query, hit)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (as it should on endless bodies)
        finally:
            self.owner._leave()

    def _route(self, path: str, query: dict[str, list[str]], hit: int) -> None:
        segments = [s for s in path.split("/") if s]
        head = segments[0] if segments else ""
        arg = lambda name, default: query.get(name, [default])[0]  # noqa: E731
        if path == "/robots.txt":
            return self._send(200, self.owner.robots_txt.encode(), "text/plain; charset=utf-8")
        if path == "/photos":
            return self._send(200, json.dumps(sorted(photo_files())).encode(), "application/json")
        if head == "photo" and len(segments) == 2:
            name, _, ext = segments[1].rpartition(".")
            size = int(arg("size", "0")) or None
            try:
                return self._send(200, photo_bytes(name, ext, size), _CONTENT_TYPES[ext])
            except KeyError as exc:
                return self._send(404, str(exc).encode(), "text/plain")
        if head == "gen" and len(segments) == 2:
            name, _, ext = segments[1].rpartition(".")
            if ext not in _CONTENT_TYPES:
                return self._send(404, f"unknown format {ext!r}".encode(), "text/plain")
            body = generated_bytes(name, ext, int(arg("w", "640")), int(arg("h", "480")))
            return self._send(200, body, _CONTENT_TYPES[ext])
        if head == "files" and self.owner.files_dir is not None:
            return self._send_file("/".join(segments[1:]))
        if head == "status" and len(segments) == 2:
            return self._send(int(segments[1]), b"", "text/plain")
        if head == "flaky" and len(segments) >= 3:
            code, times = int(segments[1]), int(segments[2])
            if hit <= times:
                retry_after = arg("retry_after", "0")
                if retry_after == "date":
                    retry_after = email.utils.formatdate(time.time() + 1, usegmt=True)
                return self._send(code, b"try again later", "text/plain", {"Retry-After": retry_after})
            return self._send(200, photo_bytes("astronaut", "jpg", 256), "image/jpeg")
        if head == "slow":
            return self._drip(int(arg("bytes", "100000")), float(arg("interval", "0.2")))
        if head == "endless":
            return self._stream(_ENDLESS_CAP, [("X-Robots-Tag", tag) for tag in query.get("tag", [])])
        if head == "large":
            size = int(arg("bytes", str(64 << 20)))
            if arg("chunked", "0") == "1":
                return self._stream(size)
            return self._send(200, b"\xff" * size, "image/jpeg")
        if head == "html":
            return self._send(200, b"<!doctype html><html><body><img src=x.jpg></body></html>", "text/html; charset=utf-8")
        if head == "truncated":
            body = photo_bytes("astronaut", "jpg", None)
            return self._send(200, body[: len(body) // 2], "image/jpeg")
        if head == "bomb":
            return self._send(200, bomb_png(), "image/png")
        if head == "loop" and len(segments) == 2:
            return self._redirect(f"/loop/{int(segments[1]) + 1}")
        if head == "redirect" and "to" in query:
            return self._redirect(query["to"][0])
        if head == "noai":
            return self._send(200, photo_bytes("astronaut", "jpg", 256), "image/jpeg", {"X-Robots-Tag": "noai"})
        if head == "xrobots":
            headers = [("X-Robots-Tag", tag) for tag in query.get("tag", [])]
            return self._send(200, photo_bytes("astronaut", "jpg", 256), "image/jpeg", headers)
        if head == "private":
            return self._send(200, photo_bytes("astronaut", "jpg", 256), "image/jpeg")
        return self._send(404, f"no such endpoint: {path}".encode(), "text/plain")

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | list[tuple[str, str]] = ()) -> None:
        self.send_response(status, HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "")
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items() if isinstance(headers, dict) else headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
        self.owner._sent(urlsplit(self.path).path, len(body))

    def _send_file(self, relative: str) -> None:
        root = self.owner.files_dir
        assert root is not None
        path = (root / unquote(relative)).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            return self._send(404, b"not found", "text/plain")
        ext = path.suffix.lstrip(".").lower().replace("jpeg", "jpg")
        self._send(200, path.read_bytes(), _CONTENT_TYPES.get(ext, "application/octet-stream"))

    def _redirect(self, location: str) -> None:
        self._send(302, b"", "text/plain", {"Location": location})

    def _drip(self, size: int, interval_s: float) -> None:
        """Promise `size` bytes, then send one byte per interval: only a total deadline stops this."""
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        for _ in range(size):
            self.wfile.write(b"\xff")
            self.wfile.flush()
            self.owner._sent(urlsplit(self.path).path, 1)
            time.sleep(interval_s)

    def _stream(self, limit: int, headers: list[tuple[str, str]] = ()) -> None:
        """A body without Content-Length, streamed until `limit` bytes or the client hangs up."""
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Connection", "close")
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        chunk, sent, path = b"\xff" * 65536, 0, urlsplit(self.path).path
        while sent < limit:
            self.wfile.write(chunk)
            sent += len(chunk)
            self.owner._sent(path, len(chunk))


# --- CLI: `python -m altlake_cli.image_server` or `altlake image-server` ----------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (keep it local)")
    parser.add_argument("--port", type=int, default=0, help="port (0: a free one, printed on start)")
    parser.add_argument("--files", default=None, help="also serve this directory under /files/")


def run(args: argparse.Namespace) -> int:
    server = ImageServer(args.host, args.port, files_dir=args.files)
    print(f"serving on {server.base_url} (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m altlake_cli.image_server", description=__doc__.splitlines()[0])
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
