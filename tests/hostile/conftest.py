"""Servers the hostile-input suite aims at: a target that must never be reached (it counts every TCP
connection it accepts) and a raw HTTP server that answers with exactly the bytes a test gives it
(a UTF-8 Location header, say), both on 127.0.0.0/8."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class Target:
    """Listens on host:port (and on [::1] at the same port where it can); counts connections."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.connections = 0
        self._lock = threading.Lock()
        target = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                with target._lock:
                    target.connections += 1
                self.request.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 4\r\nConnection: close\r\n\r\nSECR")

        self._servers = [_Server((host, 0), Handler)]
        self.port = self._servers[0].server_address[1]
        try:
            class V6(_Server):
                address_family = socket.AF_INET6

            self._servers.append(V6(("::1", self.port), Handler))
        except OSError:
            pass  # no IPv6 loopback here: the IPv6 spellings then cannot connect anywhere either
        for server in self._servers:
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()


@pytest.fixture
def target() -> Iterator[Target]:
    server = Target()
    yield server
    server.close()


@contextmanager
def raw_http(host: str, respond: Callable[[str], bytes]) -> Iterator[str]:
    """A server answering each request with respond(path) verbatim; yields its base URL."""

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            request_line = self.rfile.readline().decode("latin-1")
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            parts = request_line.split()
            self.wfile.write(respond(parts[1] if len(parts) > 1 else "/"))

    server = _Server((host, 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
