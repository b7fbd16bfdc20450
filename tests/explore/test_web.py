"""The web page in real headless Chromium: query, results, safe mode, image upload, export."""

from __future__ import annotations

import csv
import io
import json
import shutil

import pytest
import requests
from playwright.sync_api import expect, sync_playwright

from altlake.config import Settings
from explore.service import ServiceConfig, create_app, load_explorers
from tests.explore.conftest import uvicorn_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def site(model_release):
    config = ServiceConfig(allow_hosts=("127.0.0.1",))  # the release's images are on a local server
    with uvicorn_server(create_app(load_explorers([str(model_release)], config, Settings.from_env()), config)) as base:
        yield base


@pytest.fixture(scope="module")
def page(site):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = browser.new_context(accept_downloads=True)
        yield context.new_page()
        browser.close()


def api_results(site: str, **body) -> list[dict]:
    """What the page's own request returns, asked of the API directly."""
    defaults = {"modality": "image", "num_images": 40, "num_result_ids": 120, "hide_duplicate_urls": True, "deduplicate": True}
    response = requests.post(f"{site}/knn-service", json={**defaults, **body}, timeout=60)
    response.raise_for_status()
    return response.json()


def api_ids(site: str, **body) -> list[int]:
    return [r["id"] for r in api_results(site, **body)]


def shown_ids(page) -> list[int]:
    return [int(i) for i in page.locator("#results .result").evaluate_all("cards => cards.map(c => c.dataset.id)")]


def test_query_safe_mode_upload_and_export(page, site, image_site):
    page.goto(site)
    expect(page.locator("#index option")).to_have_count(1)
    expect(page.locator("#index-info")).to_contain_text("48 pairs")

    page.fill("#query", "a red circle")
    page.press("#query", "Enter")
    expect(page.locator("#results .result").first).to_be_visible()
    expect(page.locator("#status")).to_contain_text("results")
    safe = shown_ids(page)
    assert safe == api_ids(site, text="a red circle", use_safety_model=True)
    assert page.locator("#results .result .caption").first.inner_text().strip()
    assert "similarity" in page.locator("#results .result .similarity").first.inner_text()

    page.uncheck("#safe")  # re-runs the search: unsafe-proxy pictures come back
    expect(page.locator("#results .result")).not_to_have_count(len(safe))
    unsafe = shown_ids(page)
    assert unsafe == api_ids(site, text="a red circle", use_safety_model=False)
    assert not any(i % 3 == 0 for i in safe)  # every third row carries the unsafe proxy (punsafe 0.9)
    assert any(i % 3 == 0 for i in unsafe)

    page.uncheck("#show-similarity")
    expect(page.locator("#results .result .similarity").first).to_be_hidden()

    with page.expect_download() as download:
        page.click("#export-json")
    rows = json.loads(open(download.value.path()).read())
    assert [r["id"] for r in rows] == unsafe
    assert all(r["URL"].startswith(image_site[0]) and r["TEXT"] for r in rows)

    with page.expect_download() as download:
        page.click("#export-csv")
    table = list(csv.DictReader(io.StringIO(open(download.value.path()).read())))
    assert [int(r["id"]) for r in table] == unsafe and list(table[0])[:2] == ["URL", "TEXT"]

    page.set_input_files("#file", str(image_site[1] / "5.png"))  # query by image
    expect(page.locator("#query-image")).to_be_visible()
    expect(page.locator("#results .result").first).to_have_attribute("data-id", "5")


def test_shareable_queries_details_cutoff_similar_search_and_errors(page, site, image_site):
    page.goto(site)
    page.fill("#query", "a red circle")
    page.press("#query", "Enter")
    expect(page.locator("#results .result").first).to_be_visible()
    first = shown_ids(page)
    assert "q=a+red+circle" in page.url
    card = page.locator("#results .result").first
    expect(card.locator(".details")).to_contain_text("punsafe")
    expect(card.locator(".details")).to_contain_text("64×64")
    assert card.locator("a.source").get_attribute("href").startswith(image_site[0])

    page.goto(page.url)  # the shared link runs the same search
    expect(page.locator("#results .result").first).to_be_visible()
    assert shown_ids(page) == first
    unsafe = requests.post(f"{site}/knn-service", json={"text": "a red circle", "num_images": 40, "num_result_ids": 120,
                           "use_safety_model": True, "hide_duplicate_urls": True, "deduplicate": True}, timeout=60)  # fmt: skip
    hidden = dict(part.split("=") for part in unsafe.headers["x-altlake-hidden"].split(","))
    expect(page.locator("#status")).to_contain_text(f"{hidden['unsafe']} unsafe (safe mode)")

    page.check("#hide-watermarked")
    watermarked = [i for i in first if i % 4 == 1]
    assert watermarked, "the query's results include watermarked pictures"
    expect(page.locator("#results .result")).to_have_count(len(first) - len(watermarked))
    expect(page.locator("#status")).to_contain_text(f"{len(watermarked)} watermarked")
    page.uncheck("#hide-watermarked")

    sims = [r["similarity"] for r in api_results(site, text="a red circle", use_safety_model=True)]
    cutoff = round(sorted(sims, reverse=True)[2], 3)  # keeps the best three
    page.fill("#min-similarity", str(cutoff))
    page.dispatch_event("#min-similarity", "change")
    expect(page.locator("#results .result")).to_have_count(sum(s >= cutoff for s in sims))
    expect(page.locator("#status")).to_contain_text("below the similarity cutoff")
    page.fill("#min-similarity", "")
    page.dispatch_event("#min-similarity", "change")

    page.locator("#results .result button.like").nth(1).click()  # search with that result's picture
    expect(page.locator("#image-url")).to_have_value(f"{image_site[0]}/{first[1]}.png")
    expect(page.locator("#results .result").first).to_have_attribute("data-id", str(first[1]))
    assert "image_url=" in page.url

    page.fill("#image-url", "http://127.0.0.1:9/closed.jpg")  # nothing listens there: no stale results stay
    page.press("#image-url", "Enter")
    expect(page.locator("#status")).to_have_class("error")
    expect(page.locator("#results .result")).to_have_count(0)


def test_an_unreachable_image_shows_a_placeholder_that_says_so(page, site):
    gone = page.context.new_page()
    gone.route("**/*.png", lambda route: route.abort())  # the image host is gone, as after `make demo`
    gone.goto(f"{site}/?q=a+red+circle")
    expect(gone.locator("#results .placeholder").first).to_contain_text("image unavailable")
    expect(gone.locator("#results .result img")).to_have_count(0)
    gone.close()


@pytest.fixture(scope="module")
def unscored_site(model_release, tmp_path_factory):
    """The demo release as if built without the safety model: no row has a punsafe."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from explore.index import build_index

    root = tmp_path_factory.mktemp("unscored") / "rel-unscored"
    shutil.copytree(model_release, root, ignore=shutil.ignore_patterns("index"))
    metadata = root / "metadata" / "metadata_0.parquet"
    table = pq.read_table(metadata)
    pq.write_table(table.set_column(table.schema.get_field_index("punsafe"), "punsafe", pa.nulls(table.num_rows, pa.float32())), metadata)
    manifest = json.loads((root / "manifest.json").read_text())
    (root / "manifest.json").write_text(json.dumps({**manifest, "release_id": "rel-unscored"}))
    build_index(str(root))
    config = ServiceConfig(allow_hosts=("127.0.0.1",))
    with uvicorn_server(create_app(load_explorers([str(root)], config, Settings.from_env()), config)) as base:
        yield base


def test_safe_mode_is_off_and_disabled_where_the_release_has_no_punsafe(page, unscored_site):
    other = page.context.new_page()
    other.goto(f"{unscored_site}/?q=a+red+circle")  # the page's default safe mode would be refused (422)
    expect(other.locator("#results .result").first).to_be_visible()
    expect(other.locator("#safe")).to_be_disabled()
    expect(other.locator("#safe")).not_to_be_checked()
    assert shown_ids(other) == api_ids(unscored_site, text="a red circle")
    other.close()


def test_a_deprecated_release_shows_its_notice_as_a_banner(page, site, model_release, tmp_path):
    """The notice `altlake deprecate-release` writes (through its own writer) reaches the page of a
    running service without a restart; a current release shows no banner."""
    from spark_jobs.publish import ReleaseStore
    from spark_jobs.removals import write_deprecation

    page.goto(site)
    expect(page.locator("#index-info")).to_contain_text("pairs")
    expect(page.locator("#deprecated")).to_be_hidden()

    root = tmp_path / "releases"
    shutil.copytree(model_release, root / model_release.name)
    config = ServiceConfig(allow_hosts=("127.0.0.1",))
    with uvicorn_server(create_app(load_explorers([str(root / model_release.name)], config, Settings.from_env()), config)) as base:
        other = page.context.new_page()
        other.goto(base)
        expect(other.locator("#index-info")).to_contain_text("pairs")
        expect(other.locator("#deprecated")).to_be_hidden()
        write_deprecation(ReleaseStore(str(root)), model_release.name, "rebuilt with the 2026-12 takedowns", ("20261201-0b7c2d4e19", "s3://releases/x"))
        other.reload()
        banner = other.locator("#deprecated")
        expect(banner).to_be_visible()
        expect(banner).to_contain_text("This release is deprecated")
        expect(banner).to_contain_text("rebuilt with the 2026-12 takedowns")
        expect(banner).to_contain_text("Use 20261201-0b7c2d4e19 instead.")
        assert banner.get_attribute("role") == "alert"  # read out by screen readers
        other.close()
