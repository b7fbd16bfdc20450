"""The extraction job on real Spark + Delta: MERGE semantics, re-runs, retries, takedowns, kill safety.

Spark is slow to start, so the module shares one session and one lake; each test uses its own
crawl ids and its own generated WATs (distinct image hosts), so their pairs never collide.
"""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from altlake.config import Settings
from altlake.paths import LakePaths
from altlake.schemas import FILE_DONE, FILE_FAILED, REJECT_REASONS
from altlake.stats import StageStats, parse
from gpu_workers.downloader import DownloadConfig
from gpu_workers.images import ImageConfig
from gpu_workers.models import ModelSpec
from gpu_workers.reader import read_batch
from gpu_workers.worker import score_batch
from spark_jobs.batches import plan_batches
from spark_jobs.extract import resolve_wat_paths, run_extract
from spark_jobs.wat import process_wat
from spark_jobs.watgen import generate_wat

TIMING = ("started_at", "finished_at", "duration_s")


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Settings:
    return Settings.from_env(
        lake_dir=str(tmp_path_factory.mktemp("lake")), spark_master="local[2]", spark_shuffle_partitions=2
    )


@pytest.fixture(scope="module")
def mspark(lake):
    from spark_jobs.session import get_spark

    return get_spark(lake, app_name="altlake-tests")


def _table(spark, settings: Settings, name: str):
    return spark.read.format("delta").load(LakePaths(settings.lake_dir).table(name))


def _candidates(spark, settings: Settings, paths: list[str]) -> dict[str, dict]:
    rows = _table(spark, settings, "candidates").where(spark_in("wat_path", paths)).collect()
    return {r.uid: {k: v for k, v in r.asDict().items() if k != "ingested_at"} for r in rows}


def _files(spark, settings: Settings, crawl: str) -> dict[str, dict]:
    rows = _table(spark, settings, "crawl_files").where(f"crawl = '{crawl}'").collect()
    return {r.path: {k: v for k, v in r.asDict().items() if k not in TIMING} for r in rows}


def spark_in(column: str, values: list[str]):
    from pyspark.sql import functions as F

    return F.col(column).isin(values)


def _expected_uids(paths: list[str]) -> set[str]:
    return {p.uid for path in paths for p in process_wat(path).pairs}


def test_resolve_wat_paths(tmp_path, monkeypatch):
    for name in ("b.warc.wat.gz", "a.warc.wat.gz", "c.txt"):
        (tmp_path / name).write_bytes(b"")
    listing = tmp_path / "wat.paths.gz"
    listing.write_bytes(gzip.compress(b"crawl-data/X/wat/1.warc.wat.gz\ncrawl-data/X/wat/2.warc.wat.gz\n"))
    monkeypatch.chdir(tmp_path)
    paths = resolve_wat_paths(["*.warc.wat.gz", "a.warc.wat.gz", str(listing), "s3a://bucket/k.wat.gz"])
    assert paths == [
        str(tmp_path / "a.warc.wat.gz"),
        str(tmp_path / "b.warc.wat.gz"),
        "s3a://commoncrawl/crawl-data/X/wat/1.warc.wat.gz",
        "s3a://commoncrawl/crawl-data/X/wat/2.warc.wat.gz",
        "s3a://bucket/k.wat.gz",
    ]
    assert resolve_wat_paths([str(listing)], limit=1, prefix="s3a://mirror/cc") == ["s3a://mirror/cc/crawl-data/X/wat/1.warc.wat.gz"]
    with pytest.raises(ValueError, match="no file matches"):
        resolve_wat_paths(["nothing-*.wat"])


def test_extract_merges_skips_retries_and_dedups_across_crawls(mspark, lake, sample_wat, tmp_path):
    synthetic = str(generate_wat(tmp_path / "s1.warc.wat.gz", 40, gzip=True, seed=11, image_base="http://img-a.test").path)
    missing = str(tmp_path / "later.warc.wat.gz")
    paths = [str(sample_wat), synthetic, missing]

    first = run_extract(lake, "CC-MAIN-2030-01", paths, spark=mspark)
    by_path = {f["path"]: f for f in first["files"]}
    assert [by_path[p]["status"] for p in paths] == [FILE_DONE, FILE_DONE, FILE_FAILED]
    assert by_path[str(sample_wat)]["raw_links"] == 88 and by_path[str(sample_wat)]["raw_pairs"] == 33
    assert "No such file" in by_path[missing]["error"]
    expected = _expected_uids(paths[:2])
    candidates = _candidates(mspark, lake, paths)
    assert set(candidates) == expected and first["totals"]["new_candidates"] == len(expected)
    assert {c["first_seen_crawl"] for c in candidates.values()} == {"CC-MAIN-2030-01"}
    files = _files(mspark, lake, "CC-MAIN-2030-01")
    assert {p: (f["status"], f["attempts"]) for p, f in files.items()} == {
        paths[0]: (FILE_DONE, 1), paths[1]: (FILE_DONE, 1), missing: (FILE_FAILED, 1)
    }
    assert files[paths[0]]["rejected"]["bad_extension"] == by_path[paths[0]]["rejected"]["bad_extension"] > 0
    # The ingested files' pairs through the rules (every reject by reason), then into candidates.
    rules, into = parse(first["totals"]["stages"])
    done = [by_path[p] for p in paths[:2]]
    assert rules.to_dict() == StageStats("rules", sum(f["raw_pairs"] for f in done), {r: sum(f["rejected"][r] for f in done) for r in REJECT_REASONS}).to_dict()
    assert rules.kept == sum(f["kept_pairs"] for f in done) == into.taken and into.kept == len(expected)

    # Re-run: done files are skipped, the failed one is retried, nothing else changes.
    again = run_extract(lake, "CC-MAIN-2030-01", paths, spark=mspark)
    assert again["totals"]["skipped"] == 2 and again["totals"][FILE_FAILED] == 1 and again["totals"]["new_candidates"] == 0
    assert _candidates(mspark, lake, paths) == candidates
    assert _files(mspark, lake, "CC-MAIN-2030-01")[missing]["attempts"] == 2

    # The missing WAT arrives: the third attempt succeeds and adds only its new pairs.
    generate_wat(missing, 25, gzip=True, seed=12, image_base="http://img-b.test")
    third = run_extract(lake, "CC-MAIN-2030-01", paths, spark=mspark)
    assert third["totals"][FILE_DONE] == 1 and third["totals"]["skipped"] == 2
    assert _files(mspark, lake, "CC-MAIN-2030-01")[missing]["status"] == FILE_DONE
    assert _files(mspark, lake, "CC-MAIN-2030-01")[missing]["attempts"] == 3
    assert set(_candidates(mspark, lake, paths)) == _expected_uids(paths)

    # A later crawl with the same pairs inserts nothing; they are marked as seen again.
    before = _table(mspark, lake, "candidates").count()
    later = run_extract(lake, "CC-MAIN-2030-05", [str(sample_wat)], spark=mspark)
    assert later["totals"][FILE_DONE] == 1 and later["totals"]["new_candidates"] == 0
    assert _table(mspark, lake, "candidates").count() == before
    sample_rows = [c for c in _candidates(mspark, lake, paths).values() if c["wat_path"] == paths[0]]
    assert sample_rows and all(
        (c["first_seen_crawl"], c["last_seen_crawl"]) == ("CC-MAIN-2030-01", "CC-MAIN-2030-05") for c in sample_rows
    )


def test_takedowns_are_dropped_and_counted(mspark, lake, tmp_path):
    from spark_jobs.takedowns import TakedownRequest, add_takedowns

    wat = str(generate_wat(tmp_path / "t.warc.wat.gz", 30, gzip=True, seed=21, image_base="http://img-takedown.test").path)
    kept = process_wat(wat).pairs
    victim = kept[0].url.replace("http://", "HTTP://").replace(".jpg", ".jpg#any-fragment")  # spelled otherwise
    add_takedowns(mspark, lake, [TakedownRequest("domain", "IMG-TAKEDOWN.test.", "opt-out"), TakedownRequest("url", victim, "dmca")])
    summary = run_extract(lake, "CC-MAIN-2030-09", [wat], spark=mspark)
    assert summary["files"][0]["rejected"]["taken_down"] == len(kept)
    assert summary["files"][0]["kept_pairs"] == 0
    assert _candidates(mspark, lake, [wat]) == {}


def test_a_ut1_blocklist_is_loaded_as_domain_takedowns_before_the_extraction_once(mspark, lake, tmp_path):
    wat = str(generate_wat(tmp_path / "b.warc.wat.gz", 20, gzip=True, seed=31, image_base="http://img.blocked-by-list.test").path)
    kept = process_wat(wat).pairs
    root = tmp_path / "blacklists"
    (root / "adult").mkdir(parents=True)
    (root / "adult" / "domains").write_text("# UT1 adult\nBLOCKED-BY-LIST.test\nother.example\n10.0.0.1:80\n")
    (root / "gambling").mkdir()
    (root / "gambling" / "domains").write_text("casino.example\n")
    settings = lake.with_(domain_blocklist=str(root), domain_blocklist_categories="adult")

    summary = run_extract(settings, "CC-MAIN-2030-11", [wat], spark=mspark)
    assert summary["blocklist"]["domains"] == 2 and summary["blocklist"]["skipped_lines"] == 1
    assert not summary["blocklist"]["already_loaded"] and summary["blocklist"]["added"] == 2
    assert summary["files"][0]["rejected"]["taken_down"] == len(kept) > 0 and summary["files"][0]["kept_pairs"] == 0
    listed = {r["value"]: r["reason"] for r in _table(mspark, lake, "takedowns").where("reason LIKE 'blocklist %'").collect()}
    assert set(listed) == {"blocked-by-list.test", "other.example"}  # casino.example's category was not chosen
    assert all(reason.startswith("blocklist blacklists [adult] sha256:") for reason in listed.values())

    again = run_extract(settings, "CC-MAIN-2030-11", [wat], spark=mspark)
    assert again["blocklist"]["already_loaded"] and again["totals"]["skipped"] == 1


def test_ut1_blocklists_read_from_a_file_a_folder_or_an_archive(tmp_path):
    import tarfile

    from spark_jobs.takedowns import read_domain_list

    root = tmp_path / "blacklists"
    for category, lines in {"adult": "a.example\n*.B.example.\nhttp://not-a-domain/x\n", "phishing": "p.example\na.example\n"}.items():
        (root / category).mkdir(parents=True)
        (root / category / "domains").write_text(lines)
    assert read_domain_list(str(root / "adult" / "domains"))[0] == ["a.example", "b.example"]
    domains, skipped = read_domain_list(str(root / "adult"))
    assert domains == ["a.example", "b.example"] and len(skipped) == 1 and "line 3" in skipped[0]
    assert read_domain_list(str(root), ["adult", "phishing"])[0] == ["a.example", "b.example", "p.example"]
    with pytest.raises(ValueError, match="name the ones to load"):
        read_domain_list(str(root))
    with pytest.raises(ValueError, match="no category gambling"):
        read_domain_list(str(root), ["gambling"])
    archive = tmp_path / "blacklists.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="blacklists")
    assert read_domain_list(str(archive), ["phishing"])[0] == ["a.example", "p.example"]
    (tmp_path / "empty").write_text("# nothing\n")
    with pytest.raises(ValueError, match="no domain"):
        read_domain_list(str(tmp_path / "empty"))


def _cli(lake_dir: Path, *args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "altlake"), "extract", "--lake", str(lake_dir), "--master", "local[2]", *args]


def test_cli_killed_between_writes_then_rerun_equals_a_clean_run(mspark, lake, tmp_path):
    wats = [
        str(generate_wat(tmp_path / f"k{i}.warc.wat.gz", 30, gzip=True, seed=40 + i, image_base=f"http://img-kill{i}.test").path)
        for i in range(3)
    ]
    crawl = "CC-MAIN-2030-13"
    killed_lake = tmp_path / "killed-lake"
    env = {**os.environ, "ALTLAKE_SPARK_SHUFFLE_PARTITIONS": "2"}
    first_merge = Path(LakePaths(str(killed_lake)).table("candidates")) / "_delta_log" / f"{1:020d}.json"
    proc = subprocess.Popen(_cli(killed_lake, "--crawl", crawl, "--wat", *wats), env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    while not first_merge.exists():
        assert proc.poll() is None, "the job ended before its candidates MERGE was seen"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    crawl_files_log = Path(LakePaths(str(killed_lake)).table("crawl_files")) / "_delta_log"
    assert not (crawl_files_log / f"{1:020d}.json").exists(), "killed after crawl_files was written"

    rerun = subprocess.run(_cli(killed_lake, "--crawl", crawl, "--wat", *wats), env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    summary = orjson.loads(rerun.stdout)  # stdout is the JSON summary and nothing else
    assert summary["totals"][FILE_DONE] == 3 and summary["totals"]["new_candidates"] == 0

    run_extract(lake, crawl, wats, spark=mspark)  # the clean reference run
    killed = Settings.from_env(lake_dir=str(killed_lake))
    assert _candidates(mspark, killed, wats) == _candidates(mspark, lake, wats) != {}
    assert _table(mspark, killed, "candidates").count() == len(_candidates(mspark, lake, wats))
    assert _files(mspark, killed, crawl) == _files(mspark, lake, crawl)


def test_cli_reports_a_wrong_invocation(tmp_path):
    done = subprocess.run(_cli(tmp_path / "lake", "--crawl", "CC-MAIN-2030-01", "--wat", str(tmp_path / "none-*.wat")), capture_output=True, text=True)
    assert done.returncode == 2 and "no file matches" in done.stderr and done.stdout == ""
    bad = subprocess.run(_cli(tmp_path / "lake", "--crawl", "X", "--wat", str(tmp_path / "none-*.wat")), capture_output=True, text=True)
    assert bad.returncode == 2 and "not a Common Crawl id" in bad.stderr and bad.stdout == ""


def test_opted_out_pairs_are_kept_marked_counted_and_never_un_opted(mspark, lake, tmp_path):
    from spark_jobs.wat import META_ROBOTS
    from spark_jobs.watgen import PageSpec, write_wat

    shared = ("http://img-optout.test/shared.jpg", "A photo shown on two sites")
    plain = ("http://img-optout.test/plain.jpg", "A photo of a quiet harbour")
    noai = ("http://img-optout.test/noai.jpg", "A photo of an old windmill")
    robots = (("robots", "index, noai"),)
    a, b, c, d = (str(tmp_path / f"{name}.warc.wat") for name in "abcd")
    write_wat(a, [PageSpec("http://plain-optout.test/p.html", (shared, plain))])
    write_wat(b, [PageSpec("http://robots-optout.test/p.html", (shared, noai), metas=robots)])
    write_wat(c, [PageSpec("http://later-optout.test/p.html", (plain,), metas=(("img2dataset", "NoImageAI"),))])
    write_wat(d, [PageSpec("http://again-optout.test/p.html", (shared, plain, noai))])

    def opt_outs() -> dict[str, tuple]:
        rows = _candidates(mspark, lake, [a, b]).values()
        return {r["url"].rsplit("/", 1)[1]: (r["opt_out"], r["wat_path"], r["last_seen_crawl"]) for r in rows}

    # One run: the shared pair's first sighting (a) has no opt-out, its other one (b) has: opted out.
    first = run_extract(lake, "CC-MAIN-2030-21", [a, b], spark=mspark)
    assert opt_outs() == {
        "shared.jpg": (META_ROBOTS, a, "CC-MAIN-2030-21"),
        "plain.jpg": (None, a, "CC-MAIN-2030-21"),
        "noai.jpg": (META_ROBOTS, b, "CC-MAIN-2030-21"),
    }
    assert [f["opted_out"] for f in first["files"]] == [0, 2] and first["totals"]["opted_out"] == 2
    files = _files(mspark, lake, "CC-MAIN-2030-21")
    assert (files[a]["opted_out"], files[b]["opted_out"]) == (0, 2)
    assert (files[b]["kept_pairs"], files[b]["rejected"]["taken_down"]) == (2, 0)  # kept, not rejected

    # The one pair free to fetch is planned; its batch waits for a worker.
    (batch,) = plan_batches(mspark, lake, crawl="CC-MAIN-2030-21", batch_size=10)["batches"]
    assert batch["n_rows"] == 1 and read_batch(batch["input_path"]).rows[0].withdrawn is None

    # A known pair seen again on a page that opts out becomes opted out...
    run_extract(lake, "CC-MAIN-2030-22", [c], spark=mspark)
    assert opt_outs()["plain.jpg"] == (META_ROBOTS, a, "CC-MAIN-2030-22")
    assert _files(mspark, lake, "CC-MAIN-2030-22")[c]["opted_out"] == 1
    # ... is withdrawn from the batch planned before, and the worker records it without a download
    # (a fetch of img-optout.test would end in a dns / blocked status, not opted_out).
    (row,) = read_batch(batch["input_path"]).rows
    assert row.withdrawn == META_ROBOTS
    summary = score_batch(batch["input_path"], batch["output_path"], ModelSpec(), DownloadConfig(retries=0, timeout_s=2.0), ImageConfig())
    assert summary["statuses"] == {"opted_out": 1} and summary["opted_out_by_signal"] == {META_ROBOTS: 1}
    assert plan_batches(mspark, lake, crawl="CC-MAIN-2030-21", batch_size=10)["withdrawn_from_planned"] == 1  # idempotent
    # ... and seeing pairs again without one never takes an opt-out back.
    run_extract(lake, "CC-MAIN-2030-23", [d], spark=mspark)
    assert {k: v[0] for k, v in opt_outs().items()} == dict.fromkeys(("shared.jpg", "plain.jpg", "noai.jpg"), META_ROBOTS)
    assert {v[2] for v in opt_outs().values()} == {"CC-MAIN-2030-23"}
    assert _files(mspark, lake, "CC-MAIN-2030-23")[d]["opted_out"] == 0
