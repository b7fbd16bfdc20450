from altlake.config import Settings
from altlake.paths import LakePaths, join
from altlake.schemas import CANDIDATES, SCORE_STATUSES, SCORES, STATUS_MEANINGS, TABLES, WORKER_RESULTS


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
