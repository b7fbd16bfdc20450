"""The local image server: the CLI starts and serves, files mode stays inside its directory."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from altlake_cli.image_server import ImageServer, photo_files

REPO = Path(__file__).resolve().parent.parent


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_cli_serves_real_photos_on_a_free_port():
    process = subprocess.Popen(
        [sys.executable, "-m", "altlake_cli.image_server", "--port", "0"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        base_url = line.split()[2]
        assert base_url.startswith("http://127.0.0.1:")
        status, _, names = get(base_url + "/photos")
        assert status == 200 and set(json.loads(names)) == set(photo_files())
        status, headers, body = get(base_url + "/photo/chelsea.jpg?size=300")
        assert status == 200 and headers["Content-Type"] == "image/jpeg"
        with Image.open(io.BytesIO(body)) as image:
            assert max(image.size) == 300
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_photos_come_from_both_packages():
    names = photo_files()
    assert {"astronaut", "coffee", "china", "flower"} <= set(names)


def test_files_mode_serves_a_directory_and_refuses_to_escape_it(tmp_path: Path):
    (tmp_path / "shard").mkdir()
    (tmp_path / "shard" / "a.jpg").write_bytes(b"jpeg bytes")
    (tmp_path.parent / "outside.txt").write_text("secret")
    with ImageServer(files_dir=tmp_path) as server:
        status, headers, body = get(server.url("/files/shard/a.jpg"))
        assert (status, headers["Content-Type"], body) == (200, "image/jpeg", b"jpeg bytes")
        assert get(server.url("/files/../outside.txt"))[0] == 404
        assert get(server.url("/files/%2e%2e/outside.txt"))[0] == 404
        assert server.hits("/files/shard/a.jpg") == 1


@pytest.mark.parametrize(("path", "status"), [("/status/503", 503), ("/nowhere", 404), ("/loop/3", 302)])
def test_status_endpoints(path: str, status: int):
    with ImageServer() as server:
        request = urllib.request.Request(server.url(path))
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            code = opener.open(request, timeout=10).status
        except urllib.error.HTTPError as error:
            code = error.code
        assert code == status


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def test_registered_as_an_altlake_command():
    from altlake_cli.main import COMMANDS

    assert COMMANDS["image-server"][0] == "altlake_cli.image_server"
