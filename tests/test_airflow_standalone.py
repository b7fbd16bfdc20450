"""`altlake airflow` for real, as a person meets it in a browser: airflow standalone boots on
127.0.0.1, a headless Chromium logs in, opens each altlake DAG's trigger form and sends it with its
defaults (the takedown form with a URL only; cc_ingest with the shared sample WAT typed in), each
run is created, cc_ingest succeeds over the real WAT sample, score_candidates follows on the
candidates asset by itself (the DAGs are unpaused from the first start) and build_release on the
scores asset score_candidates updates. Screenshots of what a person sees go to tmp_path/screenshots,
or to $ALTLAKE_SCREENSHOTS when set.

Slow by nature (four Airflow components and two Spark JVMs on a shared 2-core machine), so every
wait is generous but bounded, and everything started is shut down at the end.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from altlake.paths import LakePaths
from altlake_cli.airflow_cmd import PASSWORDS_FILE
from tests.airflow_api import Api, admin_password, airflow_test_env, free_port, stop, tail, wait, wait_finished

REPO = Path(__file__).resolve().parent.parent
CRAWL = "CC-MAIN-2015-18"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ALTLAKE_DAGS = ("cc_ingest", "score_candidates", "build_release", "apply_takedowns")

pytestmark = [pytest.mark.integration, pytest.mark.timeout(2400)]


def _trigger_from_form(page, base: str, dag_id: str, fields: dict[str, str], shots: Path) -> None:
    """Open the DAG's trigger form, type `fields` (param -> text), send it, see it accepted."""
    page.goto(f"{base}/dags/{dag_id}")
    page.get_by_role("button", name="Trigger").first.click()
    dialog = page.locator("[role=dialog][data-state=open]")
    expect(dialog).to_contain_text(f"Trigger Dag - {dag_id}")
    for name, text in fields.items():
        dialog.locator(f"#element_{name}").fill(text)
    send = dialog.get_by_role("button", name="Trigger", exact=True)
    expect(send).to_be_enabled()
    page.screenshot(path=shots / f"trigger-{dag_id}.png")
    send.click()
    expect(page.get_by_text("Dag Run Triggered").first).to_be_visible(timeout=60_000)  # the run itself is checked by the API


def test_standalone_trigger_forms_in_a_browser_and_the_asset_chain(tmp_path, sample_wat):
    port, home, lake = free_port(), tmp_path / "airflow_home", tmp_path / "lake"
    # The worker never looks a name up: the sample's internet URLs are refused at once.
    env = airflow_test_env(lake, ALTLAKE_WORKER_ARGS="--allow-listed-only --decode-workers 1")
    log = tmp_path / "standalone.log"
    shots = Path(os.environ.get("ALTLAKE_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "altlake_cli.main", "airflow", "--port", str(port), "--home", str(home)],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    api = Api(port)
    try:
        wait("the API server", lambda: api.call("GET", "/api/v2/monitor/health")[0] == 200, 900, process, log)
        password = wait("the admin password", lambda: admin_password(home), 120, process, log)
        assert str(home / PASSWORDS_FILE) in tail(log, 100_000), "the start says where the password is"
        assert _listening_addresses(port) == {"127.0.0.1"}, "a laptop's UI is not on the network"
        status, body = api.call("POST", "/auth/token", {"username": "admin", "password": password})
        assert status == 201, body
        api.token = body["access_token"]
        for dag_id in ALTLAKE_DAGS:
            wait(f"{dag_id} to be parsed", lambda d=dag_id: api.call("GET", f"/api/v2/dags/{d}")[0] == 200, 600, process, log)
            assert api.call("GET", f"/api/v2/dags/{dag_id}")[1]["is_paused"] is False, f"{dag_id} starts paused"
        assert api.runs("cc_ingest") == [], "no run the user did not ask for"

        base = f"http://127.0.0.1:{port}"
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            # No internet here: what a page asks of a CDN (GX's Data Docs do) fails at once instead of hanging.
            page.route(re.compile(r"^https?://(?!127\.0\.0\.1[:/])"), lambda route: route.abort())
            page.goto(base)
            page.locator("input[name=username]").fill("admin")
            page.locator("input[type=password]").fill(password)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(lambda url: "login" not in url, timeout=120_000)
            # The forms that need nothing typed are sent as they open; each run is created, then
            # cancelled so that the Spark pool is free for the ingest below.
            for dag_id, fields in (
                ("score_candidates", {}),
                ("build_release", {}),
                ("apply_takedowns", {"url": "http://images.example.org/taken-down.jpg", "reason": "browser test"}),
            ):
                _trigger_from_form(page, base, dag_id, fields, shots)
                runs = wait(f"the {dag_id} run", lambda d=dag_id: api.runs(d), 120, process, log, every_s=1)
                assert [r["run_type"] for r in runs] == ["manual"]
                if dag_id == "apply_takedowns":
                    assert runs[0]["conf"]["url"] == [fields["url"]] and runs[0]["conf"]["hash_list"] is None
                api.call("PATCH", f"/api/v2/dags/{dag_id}/dagRuns/{runs[0]['dag_run_id']}", {"state": "failed"})
            _trigger_from_form(page, base, "cc_ingest", {"crawl": CRAWL, "wat_paths": str(sample_wat)}, shots)
            _check_cc_ingest_run(api, process, log, lake, sample_wat)

            # The gate's Data Docs open from the UI's navigation, for logged-in users only.
            page.goto(base)
            expect(page.get_by_role("link", name="GX Data Docs")).to_be_visible(timeout=60_000)
            page.goto(f"{base}/altlake/gx/")
            page.locator("li a").first.click()
            page.wait_for_url(re.compile(r"/altlake/gx/[^/]+/index\.html$"))  # the listing's own title says "Data Docs" too
            expect(page).to_have_title(re.compile("Data Docs"))  # GX's page (its tables are drawn by CDN scripts)
            assert "candidates_suite" in page.content()
            page.screenshot(path=shots / "gx-data-docs.png")
            assert _status(f"{base}/altlake/gx/") == 401  # no login, no Data Docs

            # The chain goes on by itself: scoring on the candidates asset, the release on the scores asset.
            for dag_id, asset in (("score_candidates", "candidates"), ("build_release", "scores")):
                chained = wait(
                    f"{dag_id} to follow on the {asset} asset",
                    lambda d=dag_id: [r for r in api.runs(d) if r["run_type"] == "asset_triggered"], 900, process, log,
                )  # fmt: skip
                assert len(chained) == 1
                if dag_id == "score_candidates":
                    wait_finished(api, dag_id, chained[0]["dag_run_id"], process, log)
                    page.goto(f"{base}/dags/{dag_id}/runs/{chained[0]['dag_run_id']}")
                    page.wait_for_load_state("networkidle")
                    page.screenshot(path=shots / "chain-score-candidates.png")
            page.goto(f"{base}/dags")
            page.wait_for_load_state("networkidle")
            page.screenshot(path=shots / "dag-list.png")
            # The graphs draw the assets that link the DAGs once "External conditions" is chosen.
            assert set(_graph_nodes(page, base, "cc_ingest", shots)) == {"resolve_inputs", "extract", "validate_candidates", "altlake_candidates"}
            scoring = _graph_nodes(page, base, "score_candidates", shots)
            assert {"altlake_candidates", "altlake_scores"} <= set(scoring) and "plan" in scoring
            browser.close()
    finally:
        stop(process)
    assert process.poll() is not None, "airflow standalone is still running"


def _graph_nodes(page, base: str, dag_id: str, shots: Path) -> list[str]:
    """The first line of each node of a DAG's graph view with its Dependencies option on "External
    conditions" (the UI's default shows tasks only)."""
    page.goto(f"{base}/dags/{dag_id}")
    page.get_by_role("button", name="Show Graph (Press g)").click()
    page.get_by_role("button", name="Options").click()
    page.get_by_role("combobox").filter(has_text="Only tasks").click()
    page.get_by_role("option", name="External conditions").click()
    page.keyboard.press("Escape")
    nodes = page.locator(".react-flow__node")
    expect(nodes.filter(has_text="altlake_candidates")).to_have_count(1, timeout=30_000)
    page.get_by_role("button", name="Fit View").click()
    page.screenshot(path=shots / f"graph-{dag_id}.png")
    return [text.split("\n")[0] for text in nodes.all_inner_texts() if text.strip()]


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def _check_cc_ingest_run(api: Api, process: subprocess.Popen, log: Path, lake: Path, sample_wat: Path) -> None:
    """The run the form started: its conf, its success, and what it wrote."""
    from deltalake import DeltaTable

    run = wait("the cc_ingest run", lambda: api.runs("cc_ingest"), 120, process, log, every_s=1)[0]
    assert run["conf"]["crawl"] == CRAWL and run["conf"]["wat_paths"] == [str(sample_wat)]
    run_path = f"/api/v2/dags/cc_ingest/dagRuns/{run['dag_run_id']}"
    states = wait_finished(api, "cc_ingest", run["dag_run_id"], process, log)
    assert states == {"resolve_inputs": "success", "extract": "success", "validate_candidates": "success"}

    status, xcom = api.call("GET", f"{run_path}/taskInstances/extract/xcomEntries/return_value")
    assert status == 200, xcom
    value = json.loads(xcom["value"]) if isinstance(xcom["value"], str) else xcom["value"]
    totals = value["totals"]
    candidates = DeltaTable(LakePaths(str(lake)).table("candidates")).to_pyarrow_table()
    assert candidates.num_rows > 0
    assert candidates.num_rows == totals["new_candidates"]
    assert set(candidates.column("last_seen_crawl").to_pylist()) == {CRAWL}
    assert list((lake / "gx").glob("*/index.html")), "the run's GX Data Docs are missing"


def _listening_addresses(port: int) -> set[str]:
    """The local addresses of the sockets listening on `port` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))  # kernel order, per 32-bit word
                found.add(str(ipaddress.ip_address(words)))
    return found
