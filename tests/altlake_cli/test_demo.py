"""`altlake demo` end to end, as a newcomer runs it (issue #17: the demo speaks to a person).

One whole run (about 2 minutes: three DAG runs with local Spark and the demo CLIP) in a temporary
working directory, where its default ./lake and ./airflow_home go. Its terminal shows the steps, a
line per finished task and the summary; Airflow's structlog, Spark's and py4j's lines are in the
log file it names, even those written while the interpreter exits.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ALTLAKE = REPO / ".venv" / "bin" / "altlake"


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    work = tmp_path_factory.mktemp("demo")
    # This test session's Airflow home and lake settings must not leak in: the demo picks its own.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW") and k not in ("ALTLAKE_LAKE_DIR", "ALTLAKE_AIRFLOW_HOME")}
    # --port 0: any free port, so a `make demo` running beside the suite keeps its 8765.
    run = subprocess.run(
        [str(ALTLAKE), "demo", "--port", "0", "--no-sample"], cwd=work, env=env, capture_output=True, text=True, timeout=800
    )
    return run, work


def test_demo_succeeds_and_prints_its_steps_tasks_and_summary(demo):
    run, work = demo
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout
    assert out.splitlines()[0].endswith("go to lake/demo.log")
    for expected in (
        "[altlake demo 1/6 |",
        "[altlake demo 6/6 |",
        "  cc_ingest.extract ✓ ",
        "  cc_ingest.validate_candidates ✓ ",
        "  score_candidates.score[0] ✓ ",
        "  build_release.publish ✓ ",
        "altlake demo finished in",
        "stages (manifest.json): what each kept and dropped",
        "  near_dedup: ",
        "logs (Airflow, Spark, the worker): lake/demo.log",
    ):
        assert expected in out, expected


def test_demo_terminal_has_no_library_log_lines_and_no_traceback(demo):
    run, _ = demo
    assert run.stderr == ""
    for noise in ("[info     ]", "[warning  ]", "[error    ]", "alembic", "[py4j", "Traceback", "DagBag", " WARN ", "log4j"):
        assert noise not in run.stdout, noise
    assert len(run.stdout.splitlines()) < 80  # the steps, the tasks, the summary


def test_demo_log_file_holds_airflow_and_spark_output(demo):
    _, work = demo
    log = (work / "lake" / "demo.log").read_text(errors="replace")
    assert "[airflow." in log and "Creating ORM DAG for cc_ingest" in log
    assert "[plugins.spark.output]" in log  # the JVM's console lines, relayed by SparkOutput
    assert "===== [altlake demo 3/6 |" in log  # the demo's steps mark the log
    assert "Closing down clientserver connection" in log  # py4j at interpreter exit: still the log


def test_serve_on_the_demo_release_starts_the_demo_s_images_again(demo):
    """The demo's image server ends with the demo; `altlake serve` on its release (the command the
    summary prints) serves the images its results link to, and `--no-demo-images` does not."""
    import json
    import socket
    import time

    import requests

    run, work = demo
    release = next(line.split()[-1] for line in run.stdout.splitlines() if line.startswith("  manifest: ")).rsplit("/", 1)[0]
    assert f"altlake serve --release {release}   # search the release in a browser" in run.stdout
    record = json.loads((work / "lake" / "demo-input" / "image-server.json").read_text())

    def serve(*extra: str) -> tuple[subprocess.Popen, str]:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        process = subprocess.Popen([str(ALTLAKE), "serve", "--release", release, "--port", str(port), *extra],
                                   cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, process.stderr.read()[-2000:]
            try:
                if requests.get(base + "/healthz", timeout=2).ok:
                    return process, base
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "altlake serve did not start"
            time.sleep(0.5)

    def first_image(base: str) -> str:
        response = requests.post(base + "/knn-service", json={"text": "a red circle", "num_images": 3}, timeout=60)
        assert response.status_code == 200, response.text
        url = response.json()[0]["url"]
        assert url.startswith(f"http://127.0.0.1:{record['port']}/")
        return url

    process, base = serve()
    try:
        image = requests.get(first_image(base), timeout=10)
        assert image.status_code == 200 and image.headers["content-type"].startswith("image/")
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=60)
    assert f"the demo's images on http://127.0.0.1:{record['port']}" in stderr

    process, base = serve("--no-demo-images")
    try:
        with pytest.raises(requests.ConnectionError):
            requests.get(first_image(base), timeout=10)
    finally:
        process.terminate()
        process.communicate(timeout=60)
