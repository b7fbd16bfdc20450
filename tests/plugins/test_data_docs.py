"""The Data Docs pages the Airflow API server serves: only to logged-in users, only from the lake's
gx/ folder, newest run first."""

from __future__ import annotations

import os
import time

from airflow.api_fastapi.core_api.security import get_user
from fastapi.testclient import TestClient

from plugins.data_docs import create_app
from plugins.defaults import data_docs_url


def _client(settings, logged_in: bool = True) -> TestClient:
    app = create_app(settings)
    if logged_in:
        app.dependency_overrides[get_user] = lambda: "admin"
    return TestClient(app)


def test_runs_are_listed_newest_first_and_pages_served(settings, tmp_path):
    gx = tmp_path / "lake" / "gx"
    for i, run in enumerate(("manual__old", "manual__new")):
        (gx / run).mkdir(parents=True)
        (gx / run / "index.html").write_text(f"<h1>docs of {run}</h1>")
        os.utime(gx / run / "index.html", (time.time() + i, time.time() + i))
    client = _client(settings)
    listing = client.get("/gx/").text
    assert listing.index("manual__new") < listing.index("manual__old")
    assert client.get("/gx/manual__old/index.html").text == "<h1>docs of manual__old</h1>"
    assert client.get("/gx/../../etc/passwd").status_code == 404
    assert client.get("/gx/%2e%2e/%2e%2e/etc/passwd").status_code == 404
    assert client.get("/gx/manual__none/index.html").status_code == 404
    assert data_docs_url("http://localhost:8080/", "manual__new") == "http://localhost:8080/altlake/gx/manual__new/index.html"


def test_nothing_without_a_login(settings):
    client = _client(settings, logged_in=False)
    assert client.get("/gx/").status_code == 401
    assert client.get("/gx/any/index.html").status_code == 401


def test_an_object_storage_lake_says_where_its_docs_are(settings):
    client = _client(settings.with_(lake_dir="s3a://bucket/lake"))
    response = client.get("/gx/")
    assert response.status_code == 404 and "s3a://bucket/lake/gx" in response.json()["detail"]
