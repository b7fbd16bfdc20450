"""bench/pipeline: the generated worker outputs are what the merge reads and carry the promised mixes
(statuses, duplicates, similarities), the process probe counts a JVM-like orphan, and the figures
(exponents, disk estimate, report) come out right. The tiny end-to-end runs are `bench` tests (`make test-bench`)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from altlake.config import Settings
from altlake.schemas import CANDIDATES, SCORE_STATUSES
from bench.pipeline import figures, generate
from bench.pipeline.queries import QUERIES
from bench.pipeline.run import build_report, last_error_line, parse_stages, with_prerequisites
from spark_jobs.merge_scores import read_batch_output

REPO = Path(__file__).resolve().parents[2]


def test_the_status_mix_is_the_workers_own_and_sixty_percent_ok():
    assert set(generate.STATUS_MIX) <= set(SCORE_STATUSES)
    assert sum(generate.STATUS_MIX.values()) == pytest.approx(1.0)
    assert generate.STATUS_MIX["ok"] == pytest.approx(0.6)
    assert set(generate.ERRORS) == set(generate.STATUS_MIX) - {"ok"}  # every failure has an error message


def _batch_input(path: Path, n: int) -> None:
    rows = [{c: None for c in CANDIDATES.column_names} | {"uid": f"{i:016x}", "url": f"http://img{i % 40}.example.com/{i}.jpg",
             "text": f"a photo number {i}", "language": "en" if i % 3 else "de"} for i in range(n)]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows), path)


def _vectors(column) -> np.ndarray:
    return np.stack([np.frombuffer(v, dtype="<f2") for v in column.to_pylist()]).astype(np.float32)


@pytest.mark.parametrize("dim", [512, 768])
def test_a_batch_output_reads_back_through_the_merge_with_the_promised_mixes(tmp_path, dim):
    _batch_input(tmp_path / "input.parquet", 3000)
    written = generate.write_batch_output(str(tmp_path / "input.parquet"), str(tmp_path / "output"), "batch-1", dim, seed=7)
    rows = read_batch_output(Settings.from_env(lake_dir=str(tmp_path / "lake")), str(tmp_path / "output"))  # the merge's own reader

    assert rows.num_rows == 3000 and sorted(rows.column("uid").to_pylist()) == [f"{i:016x}" for i in range(3000)]
    statuses = Counter(rows.column("status").to_pylist())
    assert statuses == Counter(written.statuses)
    assert 0.55 < statuses["ok"] / 3000 < 0.65 and len(statuses) >= 8
    ok = rows.filter(pc.equal(rows.column("status"), "ok"))
    assert {ok.column("clip_model").unique().to_pylist()[0]} == set(ok.column("clip_model").to_pylist())
    assert rows.filter(pc.not_equal(rows.column("status"), "ok")).column("img_emb").null_count == 3000 - ok.num_rows

    img, text = _vectors(ok.column("img_emb")), _vectors(ok.column("text_emb"))
    assert img.shape == (ok.num_rows, dim)
    assert np.allclose(np.linalg.norm(img, axis=1), 1, atol=1e-3) and np.allclose(np.linalg.norm(text, axis=1), 1, atol=1e-3)
    similarity = np.array(ok.column("similarity").to_pylist())
    assert np.allclose((img * text).sum(axis=1), similarity, atol=5e-3)  # the stored similarity is the pair's cosine
    assert 0.35 < (similarity >= 0.28).mean() < 0.55

    shas = Counter(ok.column("sha256").to_pylist())
    repeated = sum(n - 1 for n in shas.values())
    assert repeated == written.exact_duplicates and 0.01 < repeated / ok.num_rows < 0.03
    cosines = img @ img.T
    np.fill_diagonal(cosines, -1)
    best = cosines.max(axis=1)
    near = ((best > 0.96) & (best < 0.999)).sum()  # near duplicates and their originals, not exact copies
    assert written.near_duplicates <= near <= 2 * written.near_duplicates + 2
    assert 0.01 < written.near_duplicates / ok.num_rows < 0.03
    assert json.loads((tmp_path / "output" / "_SUCCESS").read_text())["statuses"] == written.statuses


def test_the_same_seed_writes_the_same_rows(tmp_path):
    _batch_input(tmp_path / "input.parquet", 200)
    for name in ("a", "b"):
        generate.write_batch_output(str(tmp_path / "input.parquet"), str(tmp_path / name), "batch-1", 512, seed=3)
    a, b = (pq.read_table(tmp_path / name / "results.parquet").drop(["scored_at"]) for name in ("a", "b"))
    assert a.equals(b)


def test_clustered_embeddings_share_their_topics_across_batches_as_clip_does():
    """Clustered image embeddings sit near CLIP's mean pairwise cosine (~0.35), across batches too;
    isotropic ones near 0."""

    def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
        return float((a @ b.T).mean())

    first, second = (generate.image_embeddings(np.random.default_rng(i), 400, 512, seed=7, kind="clustered") for i in (1, 2))
    assert np.allclose(np.linalg.norm(first, axis=1), 1)
    assert 0.25 < mean_cosine(first, second) < 0.45  # two batches, one set of topics
    isotropic = generate.image_embeddings(np.random.default_rng(1), 400, 512, seed=7)
    assert abs(mean_cosine(isotropic, isotropic[::-1])) < 0.05
    with pytest.raises(ValueError, match="embeddings must be one of"):
        generate.image_embeddings(np.random.default_rng(1), 4, 512, seed=7, kind="gaussian")


def test_shards_are_whole_then_one_partial():
    assert generate.shard_plan(100, 10.0, shard_pages=4) == [4, 4, 2]
    assert generate.shard_plan(80, 10.0, shard_pages=4) == [4, 4]
    assert generate.shard_plan(1, 10.0, shard_pages=4) == [1]


def test_takedown_domains_are_a_thousandth_of_the_hosts_and_at_least_one():
    hosts = [f"h{i}.example.com" for i in range(5000)] * 2 + [None]
    picked = generate.takedown_domains(hosts, seed=1)
    assert len(picked) == 5 and set(picked) <= set(hosts) and picked == generate.takedown_domains(hosts, seed=1)
    assert len(generate.takedown_domains(["a.example.com"], seed=1)) == 1
    assert generate.takedown_domains([], seed=1) == []


def test_growth_exponents():
    assert figures.growth_exponent(10, 2.0, 100, 20.0) == pytest.approx(1.0)
    assert figures.growth_exponent(10, 2.0, 100, 200.0) == pytest.approx(2.0)
    assert figures.growth_exponent(10, 0.0, 100, 1.0) is None
    assert figures.exponents([(1000, 9.0), (10, 1.0), (100, 3.0)]) == {"10->100": pytest.approx(0.477, abs=1e-3), "100->1000": pytest.approx(0.477, abs=1e-3)}


def test_the_disk_estimate_grows_with_size_and_dimension_and_refuses_what_does_not_fit():
    assert figures.disk_estimate(10_000, 512) < figures.disk_estimate(100_000, 512) < figures.disk_estimate(100_000, 768)
    assert figures.disk_estimate(100_000, 512, wat_cached=True) < figures.disk_estimate(100_000, 512)
    assert figures.disk_verdict(100_000, 512, free_bytes=100 * 2**30) is None
    why = figures.disk_verdict(10_000_000, 512, free_bytes=48 * 10**9)
    assert why is not None and "GB of disk" in why and "48.0 GB free" in why


def test_stages_bring_what_they_need():
    assert with_prerequisites(["release"]) == ["extract", "plan", "merge", "release"]
    assert with_prerequisites(["sql", "extract"]) == ["extract", "sql"]
    assert with_prerequisites(["maintain", "plan"]) == ["extract", "plan", "maintain"]  # maintenance last, after every writer
    with pytest.raises(Exception, match="unknown stage"):
        parse_stages("extract,score")


def test_the_error_line_of_a_failed_stage_names_an_out_of_memory_error(tmp_path):
    log = tmp_path / "stage.log"
    log.write_text("starting\n26/12/01 ERROR Executor: task 3\njava.lang.OutOfMemoryError: Java heap space\n\tat x.y\naltlake build-release: failed: Py4JJavaError\n")
    assert last_error_line(log) == "java.lang.OutOfMemoryError: Java heap space"
    log.write_text("starting\naltlake merge-scores: no lake at /x\n")
    assert last_error_line(log) == "altlake merge-scores: no lake at /x"


def _stage(wall: float, floor: float | None = None) -> dict:
    figure = {"wall_s": wall, "cpu_s": wall * 1.5, "peak_rss_mb": 900.0, "rows": 10, "rows_per_s": 1.0}
    if floor:
        figure |= {"floor": {"wall_s": floor}, "x_floor": wall / floor}
    return figure


def test_the_report_has_exponents_per_stage_and_keeps_skipped_sizes(tmp_path):
    args = type("Args", (), {"dim": 512, "embeddings": "clustered", "batch_size": 10_000, "seed": 1, "stages": ["extract", "plan"], "driver_memory": None, "merge_rows": 10_000, "master": "local", "cluster": None})()
    sizes = {
        "10000": {"candidates": 10_000, "storage": {"scores": {"rows": 10, "bytes": 13_630, "bytes_per_row": 1_363},
                                                    "release": {"rows": 4, "bytes": 29_200, "bytes_per_row": 7_300, "bytes_per_row_by_part": {"embeddings": 4_100, "index": 3_200}}},
                  "stages": {"extract": _stage(10.0), "plan": _stage(20.0, 10.0), "maintain": _stage(30.0) | {
            "tables": {"scores": {"before": {"files": 72, "commits_since_checkpoint": 9}, "after": {"files": 8, "commits_since_checkpoint": 0}}},
            "queries": [{"sql": "SELECT 1 FROM scores", "rows": 1, "before": [2.5, 0.9, 0.8], "after": [1.5, 0.4, 0.5]}]}}},
        "100000": {"candidates": 100_000, "stages": {"extract": _stage(100.0), "plan": {"failed": "java.lang.OutOfMemoryError", "log": "x"}}},
        "10000000": {"target": 10_000_000, "skipped": "needs ~170 GB of disk"},
    }
    report = build_report(args, sizes, Settings.from_env())
    json.dumps(report)
    assert report["settings"]["embeddings"] == "clustered" and report["settings"]["merge_rows"] == 10_000
    assert report["exponents"] == {"extract": {"10000->100000": pytest.approx(1.0)}}  # a failed size gives no exponent
    assert report["sizes"]["10000000"] == {"target": 10_000_000, "skipped": "needs ~170 GB of disk"}
    text = figures.table(report)
    assert "FAILED: java.lang.OutOfMemoryError" in text and "10000000: needs ~170 GB" in text and "2.00" in text
    assert "storage at 10000: scores 1,363 B/row, release 7,300 B/row (release: embeddings 4,100, index 3,200)" in text
    assert "    72 (  9) ->      8 (  0)" in text and "   0.80 ->   0.40  (2.50 -> 1.50)  SELECT 1 FROM scores" in text
    figures.plot(report, tmp_path / "pipeline.png")
    assert (tmp_path / "pipeline.png").read_bytes()[:4] == b"\x89PNG"


def test_on_a_cluster_the_table_splits_each_stage_between_driver_and_executors():
    plan = _stage(20.0, 10.0) | {"cpu_s": 50.0, "executor_cpu_s": 42.0, "peak_jvm_rss_mb": 900.0, "peak_executor_jvm_rss_mb": 1700.0}
    report = {"settings": {"spark_master": "standalone"}, "sizes": {"1000": {"candidates": 1_000, "stages": {"plan": plan}}}}
    text = figures.table(report)
    assert "driver and executors (standalone):" in text
    line = next(row for row in text.splitlines() if row.strip().startswith("plan") and "1700" in row)
    assert line.split()[2:] == ["8.0", "42.0", "900", "1700"]  # driver CPU = the stage's minus the executors'
    assert "driver and executors" not in figures.table({"settings": {}, "sizes": {"1000": {"candidates": 1_000, "stages": {"plan": _stage(20.0)}}}})


def test_the_probe_counts_the_cpu_of_an_orphan_the_command_never_waited_for(tmp_path):
    """As a Spark job's JVM outlives its Python, this orphan outlives the shell that started it."""
    burn = "import time\nwhile time.process_time() < 0.5: pass"
    command = ["sh", "-c", f'{sys.executable} -c "{burn}" & exit 0']
    result = tmp_path / "result.json"
    subprocess.run([sys.executable, "-m", "bench.pipeline.probe", str(result), str(tmp_path / "log"), "--", *command], cwd=REPO, check=True)
    figures_ = json.loads(result.read_text())
    assert figures_["rc"] == 0 and figures_["tree_reaped"] and figures_["orphans_killed"] == 0
    assert figures_["cpu_s"] >= 0.45


def test_on_a_cluster_the_probe_counts_the_executors_the_worker_starts_and_not_those_before(tmp_path):
    """A stand-in for a Spark worker: it already runs one child when the probe starts (another
    stage's executor: not counted), then starts one that burns 0.6 s of CPU and outlives the
    command, as executors outlive their driver by a moment (this stage's: counted)."""
    started = tmp_path / "executor-started"
    burn = f"import pathlib, time\npathlib.Path({str(started)!r}).touch()\nwhile time.process_time() < 0.6: pass\ntime.sleep(0.5)"
    worker_code = (
        "import subprocess, sys, time\n"
        "before = subprocess.Popen([sys.executable, '-c', 'import time\\nwhile time.process_time() < 3: pass'])\n"
        "time.sleep(2.0)\n"
        f"subprocess.run([sys.executable, '-c', {burn!r}])\n"
        "before.wait()\n"
    )
    worker = subprocess.Popen([sys.executable, "-c", worker_code])
    try:
        time.sleep(1.0)  # the first child runs
        result = tmp_path / "result.json"
        driver = f"import pathlib, time\nwhile not pathlib.Path({str(started)!r}).exists(): time.sleep(0.05)"
        subprocess.run([sys.executable, "-m", "bench.pipeline.probe", str(result), str(tmp_path / "log"), "--executors-of", str(worker.pid),
                        "--", sys.executable, "-c", driver], cwd=REPO, check=True, timeout=120)  # fmt: skip
    finally:
        worker.wait(timeout=60)
    figures_ = json.loads(result.read_text())
    assert figures_["rc"] == 0 and figures_["executor_processes"] == 1  # the one started after the probe, waited for
    assert 0.45 <= figures_["executor_cpu_s"] < 2.0  # not the 3 s of the child that ran before
    assert figures_["cpu_s"] >= figures_["executor_cpu_s"] and figures_["peak_executors_rss_mb"] > 1


def _bench_300(tmp_path, stages: str, out, timeout: int, *flags: str) -> subprocess.CompletedProcess:
    """`python -m bench.pipeline` on a 300-candidate lake under tmp_path, which must succeed."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.pipeline", "--sizes", "300", "--stages", stages, "--work-dir", str(tmp_path / "work"), "--out", str(out), *flags],
        cwd=REPO, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.bench
@pytest.mark.timeout(1200)
def test_on_a_standalone_cluster_each_stage_has_its_executors_cpu_and_memory_apart(tmp_path):
    out = tmp_path / "pipeline.json"
    done = _bench_300(tmp_path, "plan", out, 1100, "--master", "standalone", "--executor-memory", "1g")
    report = json.loads(out.read_text())
    assert report["settings"]["spark_master"] == "standalone" and report["settings"]["executor_memory"] == "1g"
    run = report["sizes"]["300"]
    assert run["candidates"] > 100
    for stage in ("extract", "plan"):
        figure = run["stages"][stage]
        assert "failed" not in figure, figure
        # the work ran in the executors' JVMs, not in the driver's
        assert figure["executor_cpu_s"] > 1 and figure["peak_executor_jvm_rss_mb"] > 100 and figure["peak_jvm_rss_mb"] > 100
        assert figure["cpu_s"] > figure["executor_cpu_s"]
    assert run["stages"]["plan"]["floor"]["executor_cpu_s"] > 0
    assert "driver and executors (standalone)" in done.stdout

@pytest.mark.bench
def test_a_tiny_lake_is_extracted_planned_and_maintained_against_its_floor(tmp_path):
    out = tmp_path / "pipeline.json"
    done = _bench_300(tmp_path, "plan,maintain", out, timeout=900)
    report = json.loads(out.read_text())
    run = report["sizes"]["300"]
    assert run["candidates"] > 100 and set(run["stages"]) == {"extract", "plan", "maintain"}
    for stage in ("extract", "plan", "maintain"):
        figure = run["stages"][stage]
        assert "failed" not in figure, figure
        assert figure["wall_s"] > 0 and figure["cpu_s"] > 0 and figure["peak_rss_mb"] > 100 and figure["bytes_written"] > 0
    assert run["stages"]["plan"]["floor"]["wall_s"] > 0 and run["stages"]["plan"]["x_floor"] > 0
    maintained = run["stages"]["maintain"]
    # extract and plan left uncheckpointed commits; maintain checkpointed every table it found
    assert maintained["tables"]["candidates"]["before"]["files"] >= 1 and maintained["tables"]["candidates"]["before"]["commits_since_checkpoint"] >= 1
    assert all(t["after"]["commits_since_checkpoint"] == 0 for name, t in maintained["tables"].items() if name != "maintenance")
    assert [q["sql"] for q in maintained["queries"]] == list(QUERIES)
    assert all(len(q["before"]) == len(q["after"]) == 3 and min(q["before"] + q["after"]) > 0 for q in maintained["queries"])
    languages = next(q for q in maintained["queries"] if "FROM candidates GROUP BY" in q["sql"])
    assert languages["rows"] >= 2  # the generated pages' languages
    assert run["storage"]["candidates"]["rows"] == run["candidates"] and run["storage"]["candidates"]["bytes_per_row"] > 50
    assert "maintain at 300" in done.stdout
    assert not (tmp_path / "work" / "300-512" / "lake").exists()  # removed without --keep
    assert out.with_suffix(".png").exists() and "plan" in done.stdout


@pytest.mark.bench
@pytest.mark.timeout(1800)
def test_takedown_add_and_apply_are_held_against_a_floor_each(tmp_path):
    """Two commands, each with its own session: the stage's floor is the sum of two floors."""
    out = tmp_path / "pipeline.json"
    _bench_300(tmp_path, "takedowns", out, timeout=1500)
    run = json.loads(out.read_text())["sizes"]["300"]
    takedowns = run["stages"]["takedowns"]
    assert "failed" not in takedowns, takedowns
    assert set(takedowns["steps"]) == set(takedowns["floor"]["steps"]) == {"takedown-add", "takedown-apply"}
    assert all(step["rc"] == 0 and step["wall_s"] > 0 for step in takedowns["floor"]["steps"].values())
    assert takedowns["floor"]["wall_s"] == pytest.approx(sum(s["wall_s"] for s in takedowns["floor"]["steps"].values()), abs=0.05)
    assert takedowns["x_floor"] == pytest.approx(takedowns["wall_s"] / takedowns["floor"]["wall_s"], abs=0.01)
    assert run["takedowns"]["deleted"]["candidates"] > 0
