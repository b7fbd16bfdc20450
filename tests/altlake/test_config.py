"""Settings validation (issue #16): every bad value at once, one line each, at every entry point;
unknown ALTLAKE_* variables warned about; the README's reference generated from the code."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from altlake import config
from altlake.config import FALSE_WORDS, OTHER_VARIABLES, TRUE_WORDS, Settings, SettingsError, env_name, unknown_variables
from altlake.settings_reference import BEGIN, END, WRITE_COMMAND, field_docs, reference_markdown, with_reference

REPO = Path(__file__).resolve().parents[2]


def problems(environ: dict[str, str], **overrides) -> list[str]:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(environ, **overrides)
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


@pytest.mark.parametrize(
    "variable, raw, allowed",
    [
        ("ALTLAKE_WORKER_BACKEND", "kubernets", "must be one of local, aws_batch, kubernetes"),
        ("ALTLAKE_SPARK_BACKEND", "emr", "must be one of local, submit, emr_serverless"),
        ("ALTLAKE_WORKER_DECODE", "nvjpeg", "must be one of auto, cpu, gpu"),
        ("ALTLAKE_BATCH_SIZE", "ten", "must be a whole number"),
        ("ALTLAKE_BATCH_SIZE", "2.5", "must be a whole number"),
        ("ALTLAKE_BATCH_SIZE", "0", "must be a candidate count of at least 1"),
        ("ALTLAKE_PER_HOST_RATE", "fast", "must be a number"),
        ("ALTLAKE_PER_HOST_RATE", "-1", "must be a rate of at least 0"),
        ("ALTLAKE_MAX_RETRY_AFTER_S", "inf", "must be a number"),
        ("ALTLAKE_THRESHOLD_EN", "high", "must be a number (empty: unset)"),
        ("ALTLAKE_NEAR_DUPLICATE_COSINE", "1.5", "must be a cosine similarity from -1.0 to 1.0"),
        ("ALTLAKE_KEPT_FRACTION_MAX", "2", "must be a fraction from 0.0 to 1.0"),
        ("ALTLAKE_SCHEDULES", "maybe", "must be a boolean: 1/0, true/false, yes/no, on/off"),
        ("ALTLAKE_S3_ENDPOINT", "localhost:9000", "must be empty (AWS) or an http(s)://host[:port] URL"),
        ("ALTLAKE_S3_ENDPOINT", "http://127.0.0.1:99999", "must be empty (AWS) or an http(s)://host[:port] URL"),
        ("ALTLAKE_CRAWL_LIST_URL", "index.commoncrawl.org/collinfo.json", "must be an http(s):// URL"),
        ("ALTLAKE_SPARK_MASTER", "lcoal[2]", "must be local, local[N], local[*], spark://host:port, yarn or k8s://https://host:port"),
        ("ALTLAKE_SPARK_MASTER", "spark://master", "must be local, local[N], local[*], spark://host:port"),
        ("ALTLAKE_SPARK_DRIVER_MEMORY", "2 GB", "must be a JVM memory size such as 512m, 2g or 1t"),
        ("ALTLAKE_SPARK_PARTITION_SIZE", "64 MB", "must be a size such as 512k, 64m or 1g"),
        ("ALTLAKE_SPARK_PARTITION_SIZE", "0m", "must be a size such as 512k, 64m or 1g"),
        ("ALTLAKE_SPARK_MAX_SHUFFLE_PARTITIONS", "0", "must be a partition count of at least 1"),
        ("ALTLAKE_RETRY_LIMITS", "dns=2,http_4xx=3", "expected CLASS=N with CLASS one of dns, connect"),
        ("ALTLAKE_LAKE_DIR", "gs://bucket/lake", "must be a local directory or an s3a://bucket/prefix URL"),
        ("ALTLAKE_RELEASE_STORE", "s3://", "must be empty, a local directory or an s3://bucket/prefix URL"),
        ("ALTLAKE_METASTORE_URL", "postgresql://db/metastore", "must be empty (embedded Derby) or a JDBC URL"),
        ("ALTLAKE_EMR_EXECUTION_ROLE_ARN", "altlake-emr", "must be an IAM role ARN"),
        ("ALTLAKE_EMR_CODE_URI", "/opt/code", "must be an s3://bucket/prefix URL"),
        ("ALTLAKE_EMR_APPLICATION_ID", "App 1", "must be an EMR Serverless application id"),
        ("ALTLAKE_K8S_NAMESPACE", "Altlake_Workers", "must be a Kubernetes namespace"),
        ("ALTLAKE_AWS_BATCH_CONN_ID", "aws default", "must be an Airflow connection id"),
        ("ALTLAKE_WORKER_ARGS", '--caption "unclosed', "must be shell words, as on a command line (No closing quotation)"),
        ("ALTLAKE_WORKER_IMAGE", "registry/worker :1", "must be a container image reference without spaces"),
        ("ALTLAKE_USER_AGENT", "bot/1\r\nX-Injected: 1", "must be a non-empty User-Agent of printable ASCII on one line"),
        ("ALTLAKE_AI_CRAWLER_TOKENS", "CCBot;GPTBot", "must be comma-separated robots.txt product tokens"),
        ("ALTLAKE_MODEL_PROFILE", "vit l14", "must be a profile name"),
        ("ALTLAKE_AESTHETIC_MIN", "pretty", "must be a LAION-Aesthetics V2 preset (4.5plus, 4.75plus, 5plus, 6plus, 6.25plus, 6.5plus)"),
        ("ALTLAKE_HIGH_RESOLUTION_MIN_SIDE", "0", "must be a side length in pixels of at least 1"),
        ("ALTLAKE_RESEARCH_SAFE_MAX_PUNSAFE", "1.5", "must be a probability from 0.0 to 1.0"),
        ("ALTLAKE_TAKEDOWN_GRACE_HOURS", "-1", "must be a number of hours of at least 0"),
        ("ALTLAKE_DOMAIN_BLOCKLIST_CATEGORIES", "adult;phishing", "must be comma-separated UT1 category names"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable_the_value_and_what_is_allowed(variable, raw, allowed):
    (line,) = problems({variable: raw})
    annotation = {env_name(f.name): str(f.type) for f in fields(Settings)}[variable]
    read = config._coerce(raw, annotation)  # the value as read: a number when it parsed, else the text, quoted
    assert line.startswith(f"{variable}={read!r}: ") and allowed in line and "\n" not in line, line


def test_several_bad_values_are_reported_together_in_field_order():
    env = {
        "ALTLAKE_WORKER_BACKEND": "kubernets",
        "ALTLAKE_BATCH_SIZE": "ten",  # a type error, reported beside the others, not raised alone
        "ALTLAKE_SPARK_MASTER": "lcoal",
        "ALTLAKE_KEPT_FRACTION_MIN": "0.9",
        "ALTLAKE_KEPT_FRACTION_MAX": "0.5",
    }
    lines = problems(env)
    assert [line.split("=", 1)[0].split(" ", 1)[0] for line in lines] == [
        "ALTLAKE_SPARK_MASTER", "ALTLAKE_BATCH_SIZE", "ALTLAKE_WORKER_BACKEND", "ALTLAKE_KEPT_FRACTION_MIN"
    ]  # fmt: skip
    assert lines[-1] == "ALTLAKE_KEPT_FRACTION_MIN (0.9) must be at most ALTLAKE_KEPT_FRACTION_MAX (0.5)"


def test_a_check_between_two_fields_is_skipped_when_one_of_them_is_already_bad():
    lines = problems({"ALTLAKE_TAKEDOWN_GRACE_HOURS": "week", "ALTLAKE_HISTORY_RETENTION_HOURS": "24"})
    assert lines == ["ALTLAKE_TAKEDOWN_GRACE_HOURS='week': must be a whole number"]
    (line,) = problems({"ALTLAKE_TAKEDOWN_GRACE_HOURS": "48", "ALTLAKE_HISTORY_RETENTION_HOURS": "24"})
    assert line.startswith("ALTLAKE_HISTORY_RETENTION_HOURS (24) must be at least ALTLAKE_TAKEDOWN_GRACE_HOURS (48)")


def test_a_production_environment_passes_and_is_read_as_typed_values():
    env = {
        "ALTLAKE_LAKE_DIR": "s3a://altlake-lake/prod",
        "ALTLAKE_METASTORE_URL": "jdbc:postgresql://metastore.internal:5432/hive?user=hive&password=s3cret",
        "ALTLAKE_SPARK_MASTER": "k8s://https://10.0.0.1:6443",
        "ALTLAKE_SPARK_DRIVER_MEMORY": "16g",
        "ALTLAKE_SPARK_PROVIDED": "yes",
        "ALTLAKE_RELEASE_STORE": "s3://altlake-releases/laion",
        "ALTLAKE_S3_ENDPOINT": "https://minio.storage:9000",
        "ALTLAKE_THRESHOLD_EN": "0.3",
        "ALTLAKE_THRESHOLD_OTHER": "",  # empty: unset, the profiles' thresholds
        "ALTLAKE_AESTHETIC_MIN": "6.5",
        "ALTLAKE_WORKER_BACKEND": "kubernetes",
        "ALTLAKE_WORKER_IMAGE": "registry.example/altlake-worker:1.2",
        "ALTLAKE_WORKER_ARGS": "--device cuda --decode gpu",
        "ALTLAKE_WORKER_DECODE": "gpu",
        "ALTLAKE_K8S_NAMESPACE": "scoring-gpu",
        "ALTLAKE_SPARK_BACKEND": "emr_serverless",
        "ALTLAKE_EMR_APPLICATION_ID": "00fabc123",
        "ALTLAKE_EMR_EXECUTION_ROLE_ARN": "arn:aws:iam::123456789012:role/altlake-emr",
        "ALTLAKE_EMR_CODE_URI": "s3://altlake-code/v1/",
        "ALTLAKE_SCHEDULES": "off",
        "ALTLAKE_RETRY_LIMITS": "dns=1, http_429=8",
        "ALTLAKE_DOMAIN_BLOCKLIST_CATEGORIES": "adult, phishing",
        "ALTLAKE_DEBUG": "1",  # read by the CLI, not a setting, not reported
    }
    s = Settings.from_env(env)
    assert (s.spark_provided, s.schedules, s.threshold_en, s.threshold_other) == (True, False, 0.3, None)
    assert (s.worker_backend, s.spark_backend, s.metastore_url) == ("kubernetes", "emr_serverless", env["ALTLAKE_METASTORE_URL"])
    assert unknown_variables(env) == []
    assert config.non_defaults(s)["ALTLAKE_SPARK_MASTER"] == "k8s://https://10.0.0.1:6443"
    assert "ALTLAKE_BATCH_SIZE" not in config.non_defaults(s)


@pytest.mark.parametrize("word", [*TRUE_WORDS, *FALSE_WORDS, "TRUE", "Off", " yes "])
def test_boolean_words(word):
    assert Settings.from_env({"ALTLAKE_ALLOW_MIXED_MODELS": word}).allow_mixed_models is (word.strip().lower() in TRUE_WORDS)


@pytest.mark.parametrize("word", ["maybe", "enabled", "2", "nope"])
def test_any_other_boolean_word_is_refused_not_read_as_false(word):
    assert problems({"ALTLAKE_ALLOW_MIXED_MODELS": word}) == [
        f"ALTLAKE_ALLOW_MIXED_MODELS={word!r}: must be a boolean: 1/0, true/false, yes/no, on/off"
    ]


def test_direct_construction_and_with_are_validated_too():
    with pytest.raises(SettingsError, match=r"^ALTLAKE_WORKER_BACKEND='slurm': must be one of local, aws_batch, kubernetes$"):
        Settings(worker_backend="slurm")
    with pytest.raises(SettingsError, match=r"^ALTLAKE_BATCH_SIZE='10': must be a whole number$"):
        Settings(batch_size="10")
    with pytest.raises(SettingsError, match=r"^ALTLAKE_SCHEDULES=1: must be a boolean"):
        Settings(schedules=1)
    with pytest.raises(SettingsError, match="ALTLAKE_SPARK_MASTER"):
        Settings().with_(spark_master="cluster")
    assert isinstance(SettingsError(["x"]), ValueError)  # every entry point that reports bad input catches it


def test_unknown_variables_are_warned_about_with_close_matches(caplog):
    env = {"ALTLAKE_LAKE_DIRR": "/data", "ALTLAKE_WORKER_BACKNED": "local", "ALTLAKE_FROBNICATE": "1", "ALTLAKE_SCREENSHOTS": "/tmp/s"}
    assert unknown_variables(env) == [
        "ALTLAKE_FROBNICATE is not an altlake setting and is ignored: see `altlake config reference`",
        "ALTLAKE_LAKE_DIRR is not an altlake setting and is ignored: did you mean ALTLAKE_LAKE_DIR?",
        "ALTLAKE_WORKER_BACKNED is not an altlake setting and is ignored: did you mean ALTLAKE_WORKER_BACKEND?",
    ]
    env = {"ALTLAKE_SPARK_MASTRE_7c1": "local[2]"}  # a name no other test uses: warned once per process
    with caplog.at_level(logging.WARNING, logger="altlake.config"):
        assert Settings.from_env(env).spark_master == "local[*]"  # ignored, and said so
        Settings.from_env(env)
    warned = [r.getMessage() for r in caplog.records if "ALTLAKE_SPARK_MASTRE_7c1" in r.getMessage()]
    assert warned == ["ALTLAKE_SPARK_MASTRE_7c1 is not an altlake setting and is ignored: did you mean ALTLAKE_SPARK_MASTER?"]


def test_the_other_altlake_variables_are_those_the_code_reads():
    """Every quoted ALTLAKE_* name in our code is a setting or listed in OTHER_VARIABLES, and each of
    those is really read somewhere: the list neither hides a typo nor rots."""
    settings = {env_name(f.name) for f in fields(Settings)}
    quoted: dict[str, set[str]] = {}
    for folder in ("altlake", "altlake_cli", "dags", "plugins", "spark_jobs", "gpu_workers", "explore", "bench", "tests"):
        for path in (REPO / folder).rglob("*.py"):
            if path.name != "test_config.py":
                for name in re.findall(r"""["'](ALTLAKE_[A-Z0-9_]*[A-Z0-9])["']""", path.read_text(encoding="utf-8")):
                    quoted.setdefault(name, set()).add(str(path.relative_to(REPO)))
    assert not set(quoted) - settings - set(OTHER_VARIABLES), {n: quoted[n] for n in set(quoted) - settings - set(OTHER_VARIABLES)}
    assert set(OTHER_VARIABLES) <= set(quoted)


def test_every_checked_name_is_a_field_and_every_field_is_documented():
    names = {f.name for f in fields(Settings)}
    assert set(config._CHECKS) <= names, set(config._CHECKS) - names  # a renamed field leaves no stale check
    docs = field_docs()
    assert [name for name in names if not docs.get(name)] == [], "give each setting a comment line above it in altlake/config.py"
    assert docs["worker_backend"].startswith("Where Airflow runs `altlake score` per batch")
    assert docs["user_agent"] == "The downloader's honest User-Agent, also matched against robots.txt."  # no section heading


def test_the_reference_table_has_one_row_per_setting_with_its_default():
    rows = reference_markdown().splitlines()
    assert rows[:2] == ["| variable | default | meaning |", "|---|---|---|"]
    assert len(rows) == 2 + len(fields(Settings))
    by_name = {row.split(" | ")[0].removeprefix("| "): row.split(" | ") for row in rows[2:]}
    assert by_name["`ALTLAKE_BATCH_SIZE`"][1] == "`10000`"
    assert by_name["`ALTLAKE_SCHEDULES`"][1] == "`true`"
    assert by_name["`ALTLAKE_RELEASE_STORE`"][1] == "(empty)"
    assert by_name["`ALTLAKE_CACHE_DIR`"][1].startswith("`~/.cache/altlake`")  # not this machine's home
    assert r"`local` (a subprocess), `aws_batch` or `kubernetes`" in by_name["`ALTLAKE_WORKER_BACKEND`"][2]


def test_the_readme_reference_is_the_generated_one():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index(BEGIN) + len(BEGIN) + 1 : readme.index(END)]
    assert table == reference_markdown(), f"README.md's configuration reference is out of date: run `{WRITE_COMMAND}`"


def test_writing_the_reference_needs_the_markers():
    text = f"# Title\n\n{BEGIN}\nstale\n{END}\n\nafter\n"
    written = with_reference(text)
    assert written == f"# Title\n\n{BEGIN}\n{reference_markdown()}{END}\n\nafter\n"
    assert with_reference(written) == written
    with pytest.raises(ValueError, match="settings:begin"):
        with_reference("# no markers\n")


def altlake(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ALTLAKE_")}
    return subprocess.run([sys.executable, "-m", "altlake_cli.main", *args], cwd=REPO, env={**clean, **env},
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_config_check_through_the_cli():
    bad = altlake("config", "check", env={"ALTLAKE_WORKER_BACKEND": "kubernets", "ALTLAKE_BATCH_SIZE": "ten", "ALTLAKE_LAKE_DIRR": "x"})
    assert bad.returncode == 2 and "Traceback" not in bad.stdout + bad.stderr
    assert bad.stderr.splitlines() == [
        "ALTLAKE_LAKE_DIRR is not an altlake setting and is ignored: did you mean ALTLAKE_LAKE_DIR?",
        "altlake config: ALTLAKE_BATCH_SIZE='ten': must be a whole number",
        "altlake config: ALTLAKE_WORKER_BACKEND='kubernets': must be one of local, aws_batch, kubernetes",
    ]
    good = altlake("config", "check", env={"ALTLAKE_BATCH_SIZE": "500", "ALTLAKE_METASTORE_URL": "jdbc:postgresql://db/hive?user=h&password=s3cret"})
    assert good.returncode == 0, good.stderr
    assert good.stdout.splitlines() == ["settings OK", "ALTLAKE_METASTORE_URL=jdbc:postgresql://db/hive?user=h&password=***", "ALTLAKE_BATCH_SIZE=500"]
    shown = altlake("config", "show", env={"ALTLAKE_SCHEDULES": "no"})
    assert shown.returncode == 0 and "ALTLAKE_SCHEDULES=false" in shown.stdout.splitlines()
    assert len(shown.stdout.splitlines()) == len(fields(Settings))
    reference = altlake("config", "reference", env={})
    assert reference.returncode == 0 and reference.stdout == reference_markdown()


def test_every_command_and_script_entry_point_reports_bad_settings_without_a_traceback():
    env = {"ALTLAKE_SPARK_MASTER": "lcoal", "ALTLAKE_BATCH_SIZE": "ten"}
    cli = altlake("plan-batches", env=env)  # the altlake CLI, as the worker image and users run it
    script = subprocess.run([sys.executable, "spark_jobs/batches.py"], cwd=REPO, env={**os.environ, **env},
                            capture_output=True, text=True, timeout=120)  # fmt: skip  (as spark-submit runs a job)
    for done, prog in ((cli, "altlake plan-batches"), (script, "batches")):
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert [line for line in done.stderr.splitlines() if "ALTLAKE_" in line] == [
            f"{prog}: ALTLAKE_SPARK_MASTER='lcoal': must be local, local[N], local[*], spark://host:port, yarn or k8s://https://host:port",
            f"{prog}: ALTLAKE_BATCH_SIZE='ten': must be a whole number",
        ]


def test_a_dag_file_with_bad_settings_is_an_import_error_that_shows_the_lines():
    probe = (
        "from airflow.dag_processing.dagbag import DagBag; import sys; bag = DagBag(dag_folder=sys.argv[1]);"
        "print('ERRORS', *bag.import_errors.values())"
    )
    dag = REPO / "dags" / "cc_ingest.py"
    env = {**os.environ, "ALTLAKE_SCHEDULES": "sometimes", "ALTLAKE_WORKER_BACKEND": "kubernets"}
    done = subprocess.run([sys.executable, "-c", probe, str(dag)], env=env, capture_output=True, text=True, timeout=300)
    assert "ERRORS" in done.stdout, done.stderr[-2000:]
    assert "ALTLAKE_SCHEDULES='sometimes': must be a boolean: 1/0, true/false, yes/no, on/off" in done.stdout
    assert "ALTLAKE_WORKER_BACKEND='kubernets': must be one of local, aws_batch, kubernetes" in done.stdout

