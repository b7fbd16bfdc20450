import pytest

from altlake.config import Settings
from altlake.paths import LakePaths, derived_subset_file, join
from altlake.schemas import (
    AESTHETIC_PRESETS,
    CANDIDATES,
    DERIVED_SUBSETS,
    SCORE_STATUSES,
    SCORES,
    STATUS_MEANINGS,
    TABLES,
    WORKER_RESULTS,
    aesthetic_minimum,
)


def test_every_table_renders_to_spark_ddl_and_arrow_with_the_same_columns():
    for table in TABLES.values():
        arrow = table.to_arrow()
        assert arrow.names == table.column_names
        assert table.spark_ddl().count("`") == 2 * len(table.columns)
        assert set(table.key) <= set(table.column_names)
        assert set(table.partition_by) <= set(table.column_names)


def test_worker_results_are_scores_without_merge_side_columns():
    assert set(SCORES.column_names) - set(WORKER_RESULTS.column_names) == {"attempts", "img_emb", "text_emb"}
    assert not CANDIDATES.to_arrow().field("uid").nullable


def test_settings_read_environment_then_overrides():
    env = {"ALTLAKE_LAKE_DIR": "/data/lake", "ALTLAKE_THRESHOLD_EN": "0.3", "ALTLAKE_BATCH_SIZE": "5"}
    s = Settings.from_env(env)
    assert (s.lake_dir, s.threshold_en, s.batch_size) == ("/data/lake", 0.3, 5)
    assert Settings.from_env(env, lake_dir="x").lake_dir == "x"
    assert s.release_dir == "/data/lake/releases"


def test_lake_paths_work_for_local_and_object_storage():
    assert LakePaths("s3a://bucket/lake/").table("candidates") == "s3a://bucket/lake/tables/candidates"
    assert LakePaths("/tmp/lake").batch_input("b1") == "/tmp/lake/batches/b1/input.parquet"
    assert join("s3://b", "/r1/", "manifest.json") == "s3://b/r1/manifest.json"


def test_readme_documents_every_setting():
    from dataclasses import fields
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    missing = [f.name for f in fields(Settings) if f"ALTLAKE_{f.name.upper()}" not in readme]
    assert not missing, f"README's configuration reference lacks: {missing}"


def test_every_score_status_has_a_meaning_for_people():
    assert list(STATUS_MEANINGS) == list(SCORE_STATUSES)
    assert all(len(meaning) > 10 for meaning in STATUS_MEANINGS.values())


# Issue #17: one home for every contract (altlake.names, altlake.schemas).

# Computed once from the function the lake was keyed with (spark_jobs/wat.py before the move). A
# change here re-keys every table (candidates, scores, pairs): never update these to make it pass.
GOLDEN_UIDS = [
    ("http://example.org/a.jpg", "a red bicycle", "bb83380edf482d5d64d3881b91e0cd1a"),
    ("https://例え.jp/猫.png", "Ein Hündchen am Meer – 海辺の子犬 🐕", "ce53791afd47697a04f354508dfa33d3"),
    ("http://example.org/b.jpg", "broken \ud800 surrogate", "05aff3ea0ad368cbda7bc0c50af1ac45"),  # lone surrogate
]


@pytest.mark.parametrize(("url", "text", "uid"), GOLDEN_UIDS)
def test_pair_uid_is_pinned(url, text, uid):
    from altlake.names import pair_uid
    from spark_jobs.wat import pair_uid as wat_pair_uid  # existing callers' import

    assert pair_uid(url, text) == uid
    assert wat_pair_uid is pair_uid


@pytest.mark.parametrize("crawl", ["CC-MAIN-2024-10", "CC-MAIN-2015-18", "CC-MAIN-2025-05"])
def test_crawl_ids_of_the_pattern_pass(crawl):
    from altlake.names import CRAWL_ID, check_crawl_id, is_crawl_id

    assert check_crawl_id(crawl) == crawl and is_crawl_id(crawl) and CRAWL_ID.match(crawl)


@pytest.mark.parametrize(
    "crawl",
    ["", "CC-MAIN-2024-1", "CC-MAIN-24-10", "cc-main-2024-10", "CC-MAIN-2024-10 ", "CC-MAIN-2024-10\n",
     "CC-MAIN-2024-101", "x CC-MAIN-2024-10", "CC-MAIN-2024-W10", None, 2024],
)
def test_malformed_crawl_ids_are_refused_with_one_clear_line(crawl):
    from altlake.names import check_crawl_id, is_crawl_id

    assert not is_crawl_id(crawl)
    with pytest.raises(ValueError, match=r"is not a Common Crawl id like CC-MAIN-2024-10") as raised:
        check_crawl_id(crawl)
    assert "\n" not in str(raised.value)  # one line on a terminal, even for an id with a newline


def test_crawl_ids_of_the_pattern_sort_in_time_order():
    """Why the pattern matters: MERGE keeps the greater last_seen_crawl, a string comparison."""
    from altlake.names import is_crawl_id

    ids = ["CC-MAIN-2013-20", "CC-MAIN-2014-52", "CC-MAIN-2024-09", "CC-MAIN-2024-10", "CC-MAIN-2025-05"]
    assert all(map(is_crawl_id, ids)) and sorted(reversed(ids)) == ids


def test_the_dag_forms_use_the_one_crawl_pattern():
    import re
    from pathlib import Path

    from altlake.names import CRAWL_ID_PATTERN

    dags = Path(__file__).resolve().parents[2] / "dags"
    for name in ("cc_ingest.py", "score_candidates.py"):
        source = (dags / name).read_text()
        assert "CRAWL_ID_PATTERN" in source and "CC-MAIN-\\d" not in source, name
    form = re.compile(f"^({CRAWL_ID_PATTERN})?$")  # the Params' pattern: empty, or one crawl id
    assert form.match("") and form.match("CC-MAIN-2024-10") and not form.match("CC-MAIN-2024-1")


def test_shared_values_have_one_home():
    from altlake.names import COMMONCRAWL_HTTPS, COMMONCRAWL_S3, DEMO_MODEL, MIN_TEXT_CHARS
    from altlake.schemas import NO_LANGUAGE, SUBSETS

    assert NO_LANGUAGE == "nolang" and NO_LANGUAGE in SUBSETS
    assert (COMMONCRAWL_S3, COMMONCRAWL_HTTPS) == ("s3a://commoncrawl/", "https://data.commoncrawl.org/")
    assert (MIN_TEXT_CHARS, DEMO_MODEL) == (5, "demo")

    import gpu_workers.reader as reader
    import spark_jobs.extract as extract
    import spark_jobs.quality as quality
    import spark_jobs.wat as wat

    assert wat.NOLANG == reader.NO_LANGUAGE == NO_LANGUAGE
    assert wat.MIN_TEXT_CHARS == MIN_TEXT_CHARS
    assert extract.DEFAULT_WAT_PREFIX == COMMONCRAWL_S3
    assert quality.LANGUAGE_REGEX == rf"^([a-z]{{2,3}}|{NO_LANGUAGE})$"


def test_derived_subset_settings_take_presets_or_numbers_and_refuse_the_rest():
    default = {d.name: d for d in Settings.from_env({}).derived_subsets}
    assert tuple(default) == DERIVED_SUBSETS
    assert default["aesthetic"].filter == "aesthetic >= 5.0" and default["aesthetic"].parameters == {"aesthetic_min": 5.0, "preset": "5plus"}
    assert default["high_resolution"].filter == "original_width >= 1024 AND original_height >= 1024"
    assert default["research"].parameters == {"max_punsafe": None}
    assert default["research-safe"].filter == "punsafe IS NOT NULL AND punsafe <= 0.5"  # unknown punsafe is not safe

    env = {"ALTLAKE_AESTHETIC_MIN": "6.25plus", "ALTLAKE_HIGH_RESOLUTION_MIN_SIDE": "2048", "ALTLAKE_RESEARCH_SAFE_MAX_PUNSAFE": "0.1"}
    chosen = {d.name: d for d in Settings.from_env(env).derived_subsets}
    assert chosen["aesthetic"].filter == "aesthetic >= 6.25" and chosen["aesthetic"].parameters["preset"] == "6.25plus"
    assert chosen["high_resolution"].parameters == {"min_side": 2048}
    assert chosen["research-safe"].parameters == {"max_punsafe": 0.1}
    numeric = {d.name: d for d in Settings.from_env({"ALTLAKE_AESTHETIC_MIN": "5.5"}).derived_subsets}["aesthetic"]
    assert numeric.filter == "aesthetic >= 5.5" and numeric.parameters == {"aesthetic_min": 5.5, "preset": None}
    assert {aesthetic_minimum(name) for name in AESTHETIC_PRESETS} == {4.5, 4.75, 5.0, 6.0, 6.25, 6.5}  # LAION-Aesthetics V2


@pytest.mark.parametrize(
    "env, message",
    [
        ({"ALTLAKE_AESTHETIC_MIN": "pretty"}, r"ALTLAKE_AESTHETIC_MIN='pretty': must be a LAION-Aesthetics V2 preset \(4.5plus, .*6.5plus\) or a number from 1 to 10"),
        ({"ALTLAKE_AESTHETIC_MIN": "11"}, "ALTLAKE_AESTHETIC_MIN='11': must be"),
        ({"ALTLAKE_AESTHETIC_MIN": "nan"}, "ALTLAKE_AESTHETIC_MIN='nan': must be"),
        ({"ALTLAKE_HIGH_RESOLUTION_MIN_SIDE": "0"}, "ALTLAKE_HIGH_RESOLUTION_MIN_SIDE=0: must be a side length in pixels of at least 1"),
        ({"ALTLAKE_RESEARCH_SAFE_MAX_PUNSAFE": "1.5"}, r"ALTLAKE_RESEARCH_SAFE_MAX_PUNSAFE=1.5: must be a probability from 0.0 to 1.0"),
    ],
)
def test_bad_derived_subset_settings_are_refused_with_a_clear_error(env, message):
    with pytest.raises(ValueError, match=message):
        Settings.from_env(env)


def test_derived_subsets_have_one_file_layout():
    assert [derived_subset_file(name) for name in DERIVED_SUBSETS] == [
        "subsets/aesthetic.parquet", "subsets/high_resolution.parquet", "subsets/research.parquet", "subsets/research-safe.parquet"
    ]  # fmt: skip


def test_the_embedding_and_release_layouts_name_and_parse_their_files():
    from altlake.paths import embedding_shard, embedding_shard_number, release_parquet_file

    assert [embedding_shard(kind, 3) for kind in ("img_emb", "text_emb", "metadata")] == [
        "img_emb/img_emb_3.npy", "text_emb/text_emb_3.npy", "metadata/metadata_3.parquet",
    ]  # clip-retrieval's names: its tools read our outputs and releases
    assert embedding_shard_number("img_emb", "img_emb_12.npy") == 12 and embedding_shard_number("metadata", "metadata_0.parquet") == 0
    for kind, name in (("img_emb", "img_emb_3.parquet"), ("img_emb", "text_emb_3.npy"), ("metadata", "metadata_x.parquet"),
                       ("img_emb", "img_emb_3.npy.tmp-41-ab"), ("img_emb", "img_emb_.npy")):  # fmt: skip
        assert embedding_shard_number(kind, name) is None, name
    assert release_parquet_file("en", 7) == "parquet/en/part-00007.parquet"
    with pytest.raises(ValueError, match="no embedding file kind"):
        embedding_shard("clip", 0)
