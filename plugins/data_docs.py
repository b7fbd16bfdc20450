"""GX Data Docs inside the Airflow UI: a "Data Docs" entry in the navigation and the pages under
`<airflow>/altlake/gx/`, for logged-in users only.

Every GX gate writes its Data Docs to `<lake>/gx/<run id>/` (see spark_jobs/quality.py); a path in a
task log is no link a browser may open from an http page, so the API server serves them itself.
Only lakes on local disk are served; for an object-storage lake the page says where the docs are.
"""

from __future__ import annotations

import html
from pathlib import Path

from airflow.api_fastapi.core_api.security import GetUserDep
from airflow.plugins_manager import AirflowPlugin
from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, HTMLResponse

from altlake.config import Settings
from altlake.paths import LakePaths
from plugins.defaults import DATA_DOCS_PREFIX, DATA_DOCS_ROUTE


def docs_root(settings: Settings) -> str:
    return LakePaths(settings.lake_dir).gx_docs("")


def create_app(settings: Settings | None = None) -> FastAPI:
    app = FastAPI(title="altlake GX Data Docs", docs_url=None, redoc_url=None, openapi_url=None)

    def root() -> Path:
        location = docs_root(settings or Settings.from_env())
        if "://" in location:
            raise HTTPException(404, f"this lake's Data Docs are in {location}; open them there")
        return Path(location).resolve()

    @app.get(f"/{DATA_DOCS_ROUTE}/", response_class=HTMLResponse)
    def runs(_: GetUserDep) -> str:
        """Every gate run's Data Docs, newest first."""
        folder = root()
        found = sorted((p for p in folder.glob("*/index.html")), key=lambda p: p.stat().st_mtime, reverse=True) if folder.is_dir() else []
        items = "".join(f'<li><a href="{html.escape(p.parent.name)}/index.html">{html.escape(p.parent.name)}</a></li>' for p in found)
        body = f"<ul>{items}</ul>" if items else "<p>No GX gate has run on this lake yet.</p>"
        return f"<!doctype html><title>GX Data Docs</title><h1>GX Data Docs</h1><p>{html.escape(str(folder))}</p>{body}"

    @app.get(f"/{DATA_DOCS_ROUTE}/{{path:path}}")
    def page(path: str, _: GetUserDep) -> FileResponse:
        folder = root()
        target = (folder / path).resolve()
        if not target.is_relative_to(folder) or not target.is_file():
            raise HTTPException(404, f"no Data Docs page {path!r}")
        return FileResponse(target)

    return app


class AltlakeDataDocs(AirflowPlugin):
    name = "altlake_data_docs"
    fastapi_apps = [{"app": create_app(), "url_prefix": DATA_DOCS_PREFIX, "name": "altlake GX Data Docs"}]
    external_views = [{"name": "GX Data Docs", "href": f"{DATA_DOCS_PREFIX.lstrip('/')}/{DATA_DOCS_ROUTE}/", "destination": "nav", "url_route": "gx-data-docs"}]
