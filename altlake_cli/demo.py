"""`altlake demo` (= `make demo`): the whole LAION pipeline through Airflow, on this machine only.

1. Starts the local image server (127.0.0.1) and writes a small synthetic crawl: WAT pages whose
   image links point at it, with matching, mismatched, multilingual, watermarked, duplicated,
   broken (404, truncated, not an image) and opted-out (X-Robots-Tag noai, robots.txt, a page's
   <meta name=robots content=noai>) pairs.
2. Mixes in the real Common Crawl sample WAT when the checkout has it (../shared/data/commoncrawl/):
   its images live on the internet, which the demo never contacts: the worker runs with
   `--allow-listed-only`, so those rows are recorded as `blocked_address` without any DNS lookup.
3. Runs cc_ingest (once per crawl) -> score_candidates -> build_release with `dag.test()` on a
   SQLite Airflow DB under the Airflow home, local Spark, Delta under the lake, the demo CLIP.
4. Prints where the release is, what each stage kept and dropped, and a few `altlake sql` queries to try.

The terminal shows only the demo's steps, one line per finished task and the summary: everything
Airflow, Spark, py4j and the worker print goes to a log file (LAKE/demo.log, named at the start),
redirected at the file-descriptor level (altlake_cli/console.py) so the JVM's and the subprocesses'
output lands there too. A failure prints the failing task, the end of its log and the log's path.

Running it again is safe: the image server keeps its port, so the same crawl gives the same uids;
nothing new is scored and the release (same inputs, same day) is reused instead of rewritten.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from altlake import stats
from altlake.paths import LakePaths
from altlake.profiles import DEMO_PROFILE
from altlake_cli.console import Console, LogRedirect, log_tail

REPO = Path(__file__).resolve().parent.parent
SAMPLE_WAT = REPO.parent / "shared" / "data" / "commoncrawl" / "CC-MAIN-2015-18-sample.warc.wat"
SAMPLE_CRAWL = "CC-MAIN-2015-18"
DEMO_CRAWL = "CC-MAIN-2099-01"  # a crawl id no real crawl will ever use
DEFAULT_PORT = 8765
IMAGE_PX = 384  # with JPEG quality 98, large enough that every image passes the worker's 5 KB minimum (LAION's rule)
FADED_QUALITY = 0.55  # the most faded demo image: the demo CLIP still matches it to its caption
LANGUAGES = ("de", "fr", "es")


@dataclass
class DemoCrawl:
    """The generated crawl: its WAT file and how many distinct pairs of each kind it holds."""

    wat: Path
    kinds: dict[str, int] = field(default_factory=dict)


def write_demo_crawl(
    work_dir: Path,
    image_base: str,
    *,
    seed: int = 0,
    matching: int = 12,
    multilingual: int = 3,
    mismatched: int = 4,
    watermarked: int = 2,
    broken: bool = True,
    opted_out: bool = True,
    extra_links: Sequence[tuple[str, str]] = (),
) -> DemoCrawl:
    """Render the images into work_dir/images (served under /files/) and write work_dir/demo.warc.wat.

    Image links of the broken and opted-out kinds use the image server's hostile endpoints;
    `extra_links` (src, alt) are added as given.
    """
    from gpu_workers.demo_models.synthetic import caption, mismatched_spec, random_spec, render
    from spark_jobs.watgen import PageSpec, write_wat

    rng = random.Random(seed)
    # Faded copies rate lower with the demo aesthetic head (a contrast proxy): a spread for the report's
    # histogram and the search page's aesthetic option. Its own generator leaves the scenes and captions as they were.
    looks = random.Random(seed + 1)
    images = work_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    links: list[tuple[str, str]] = []
    kinds: dict[str, int] = {}

    def add_image(kind: str, spec, text: str) -> str:
        name = f"{kind}-{kinds.get(kind, 0):03d}.jpg"
        render(spec, IMAGE_PX).save(images / name, "JPEG", quality=98, subsampling=0)  # every scene over 5 KB, faded ones too
        url = f"{image_base}/files/{name}"
        links.append((url, text))
        kinds[kind] = kinds.get(kind, 0) + 1
        return url

    for _ in range(matching):
        spec = random_spec(rng, quality=round(looks.uniform(FADED_QUALITY, 1.0), 2))
        add_image("matching", spec, caption(spec, "en"))
    for i in range(multilingual):
        spec = random_spec(rng, quality=round(looks.uniform(FADED_QUALITY, 1.0), 2))
        add_image("multilingual", spec, caption(spec, LANGUAGES[i % len(LANGUAGES)]))
    for _ in range(mismatched):
        spec = random_spec(rng)
        add_image("mismatched", spec, caption(mismatched_spec(spec, rng), "en"))
    for _ in range(watermarked):
        spec = random_spec(rng, watermark=True)
        add_image("watermarked", spec, caption(spec, "en"))
    if matching:  # the first image again under its caption (a duplicate pair: one candidate)
        links.append(links[0])
    if broken:
        for path in ("/status/404/missing.jpg", "/truncated/half.jpg", "/html/page.jpg"):
            links.append((f"{image_base}{path}", "A photo that will not arrive whole"))
        kinds["broken"] = 3
    meta_opted_out: list[tuple[str, str]] = []
    if opted_out:
        links.append((f"{image_base}/noai/opted-out.jpg", "A photo whose owner opted out of AI training"))
        links.append((f"{image_base}/private/robots-disallowed.jpg", "A photo robots.txt keeps private"))
        # A fine image on a page whose <meta name="robots" content="noai"> opts it out: never downloaded.
        spec = random_spec(rng)
        add_image("opted_out", spec, caption(spec, "en"))
        meta_opted_out.append(links.pop())
        kinds["opted_out"] = 3
    links.append((f"{image_base}/files/logo.jpg", "logo"))  # too short: dropped by the LAION rules
    links += extra_links

    per_page = 6
    pages = [
        PageSpec(
            url=f"http://demo-site-{n}.example.org/gallery/{n}.html",
            links=tuple(links[start : start + per_page]),
            title=f"altlake demo gallery {n}",
            license_url="https://creativecommons.org/licenses/by/4.0/" if n % 2 == 0 else None,
        )
        for n, start in enumerate(range(0, len(links), per_page))
    ]
    if meta_opted_out:
        pages.append(PageSpec(url="http://demo-site-noai.example.org/gallery/private.html", links=tuple(meta_opted_out),
                              title="altlake demo: a page that opts out of AI use", metas=(("robots", "noai"),)))  # fmt: skip
    wat = write_wat(work_dir / "demo.warc.wat", pages)
    return DemoCrawl(Path(wat.path), kinds)


def demo_environment(lake_dir: Path, airflow_home: Path) -> dict[str, str]:
    """ALTLAKE_* and AIRFLOW_* variables of the demo run (set before Airflow is first imported)."""
    return {
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow_home / 'airflow.db'}",
        "ALTLAKE_LAKE_DIR": str(lake_dir),
        "ALTLAKE_SPARK_BACKEND": "local",
        "ALTLAKE_SPARK_MASTER": os.environ.get("ALTLAKE_SPARK_MASTER", "local[2]"),
        "ALTLAKE_SPARK_SHUFFLE_PARTITIONS": os.environ.get("ALTLAKE_SPARK_SHUFFLE_PARTITIONS", "4"),
        "ALTLAKE_WORKER_BACKEND": "local",
        # Only the local image server may be contacted; everything else is refused before DNS.
        "ALTLAKE_WORKER_ARGS": "--allow-host 127.0.0.1 --allow-listed-only --decode-workers 1",
        "ALTLAKE_WORKER_RETRIES": "1",
        "ALTLAKE_BATCH_SIZE": os.environ.get("ALTLAKE_BATCH_SIZE", "2000"),
        # The demo models with the similarity thresholds calibrated for them (the built-in profile).
        "ALTLAKE_MODEL_PROFILE": DEMO_PROFILE.name,
    }


def prepare_airflow_db() -> None:
    """Migrate the SQLite metadata DB and create the pools the DAGs use (idempotent)."""
    from airflow.models.pool import Pool
    from airflow.utils import db

    from plugins.defaults import SCORING_POOL, SCORING_POOL_DESCRIPTION, SCORING_POOL_SLOTS
    from plugins.defaults import SPARK_POOL, SPARK_POOL_DESCRIPTION, SPARK_POOL_SLOTS

    db.initdb()
    Pool.create_or_update_pool(SPARK_POOL, SPARK_POOL_SLOTS, SPARK_POOL_DESCRIPTION, include_deferred=False)
    Pool.create_or_update_pool(SCORING_POOL, SCORING_POOL_SLOTS, SCORING_POOL_DESCRIPTION, include_deferred=True)


def load_dags() -> dict:
    """The repo's DAGs as Airflow parses them (dags/ is a DAG folder, not an installed package)."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    if bag.import_errors:
        raise RuntimeError(f"DAG files failed to import: {bag.import_errors}")
    return bag.dags


class DagRunFailed(RuntimeError):
    """A DAG run of the demo did not succeed: `failed` maps its unsuccessful tasks to their states."""

    def __init__(self, dag_id: str, state: str, failed: dict[str, str]) -> None:
        super().__init__(f"DAG {dag_id} ended {state}; tasks not successful: {failed}")
        self.dag_id, self.state, self.failed = dag_id, state, failed


def run_dag(dag, run_conf: dict | None = None) -> dict[str, str]:
    """One `dag.test()` run; returns {task_id[map index]: state} and raises DagRunFailed if the run failed."""
    run = dag.test(run_conf=run_conf or {})
    states = {
        ti.task_id + (f"[{ti.map_index}]" if ti.map_index >= 0 else ""): str(ti.state)
        for ti in run.get_task_instances()
    }
    if str(run.state) != "success":
        failed = {k: v for k, v in states.items() if v not in ("success", "skipped")}
        raise DagRunFailed(dag.dag_id, str(run.state), failed)
    return states


class Progress:
    """Numbered steps with elapsed time, on the console and as markers in the log."""

    def __init__(self, steps: int, console: Console | None = None) -> None:
        self.steps, self.done, self.started = steps, 0, time.perf_counter()
        self.console = console or Console(sys.stderr)
        self.current = "starting"

    def step(self, message: str) -> None:
        self.done += 1
        self.current = f"{self.done}/{self.steps} ({message})"
        line = f"[altlake demo {self.done}/{self.steps} | {self.elapsed():6.1f}s] {message}"
        self.console.line("\n" + line)
        _to_log(f"\n===== {line}\n")

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


def _to_log(text: str) -> None:
    """A line into the log (file descriptor 1 while LogRedirect holds it; the console otherwise)."""
    try:
        os.write(1, text.encode("utf-8", "replace"))
    except OSError:
        pass


@dataclass
class TaskFailure:
    """A task that failed: its name, the first line of its error, its span of the log (bytes), and
    whether Airflow retries it."""

    name: str
    error: str
    log_start: int
    log_end: int
    retrying: bool = False


class TaskLines:
    """One console line per task the demo's DAG runs finish (`  cc_ingest.extract ✓ 12.3s`).

    Fed by Airflow's task-instance listener hooks (`listen_to_tasks`), which the task runner calls
    in this process under `dag.test()`. Each task's span of the log is kept: a failure shows the end
    of its own lines, not whatever Airflow logged after it.
    """

    def __init__(self, console: Console, log_path: Path | None = None) -> None:
        self.console, self.log_path = console, log_path
        self.running: dict[str, tuple[float, int]] = {}
        self.failures: list[TaskFailure] = []

    def started(self, name: str) -> None:
        self.running[name] = (time.perf_counter(), self._log_size())
        self.console.status(f"  {name} …")

    def succeeded(self, name: str) -> None:
        self.console.line(f"  {name} ✓ {self._elapsed(name):.1f}s")

    def skipped(self, name: str) -> None:
        self.console.line(f"  {name} skipped {self._elapsed(name):.1f}s")

    def failed(self, name: str, error: object, retrying: bool = False) -> None:
        start = self.running.get(name, (0.0, self._log_size()))[1]
        elapsed = self._elapsed(name)
        message = error_line(error)
        self.failures.append(TaskFailure(name, message, start, self._log_size(), retrying))
        self.console.line(f"  {name} ✗ {elapsed:.1f}s" + (" (will retry)" if retrying else "") + f": {message}")

    def first_failure(self, dag_id: str) -> TaskFailure | None:
        """The first task of `dag_id` that failed for good (the cause; later ones often follow from it)."""
        of_dag = [f for f in self.failures if f.name.startswith(dag_id + ".")]
        return next((f for f in of_dag if not f.retrying), of_dag[-1] if of_dag else None)

    def _elapsed(self, name: str) -> float:
        began = self.running.pop(name, (None, 0))[0]
        return 0.0 if began is None else time.perf_counter() - began

    def _log_size(self) -> int:
        try:
            return self.log_path.stat().st_size if self.log_path else 0
        except OSError:
            return 0


def task_name(ti) -> str:
    """`dag.task` or `dag.task[map index]` of a task instance."""
    map_index = getattr(ti, "map_index", -1)
    map_index = -1 if map_index is None else map_index
    return f"{ti.dag_id}.{ti.task_id}" + (f"[{map_index}]" if map_index >= 0 else "")


def error_line(error: object) -> str:
    """One line for an error a task ended with (an exception, a message, or nothing known)."""
    if error is None:
        return "failed"
    text = str(error).strip()
    first = text.splitlines()[0][:300] if text else ""
    if isinstance(error, BaseException):
        return f"{type(error).__name__}: {first}" if first else type(error).__name__
    return first or "failed"


def listen_to_tasks(lines: TaskLines):
    """Register `lines` with Airflow's task-instance listener hooks; returns what unregisters it.
    (Imports Airflow: call it once the demo's AIRFLOW_* variables are set.)"""
    from airflow.listeners import hookimpl
    from airflow.sdk.listener import get_listener_manager

    class Listener:
        @hookimpl
        def on_task_instance_running(self, previous_state, task_instance):
            lines.started(task_name(task_instance))

        @hookimpl
        def on_task_instance_success(self, previous_state, task_instance):
            lines.succeeded(task_name(task_instance))

        @hookimpl
        def on_task_instance_skipped(self, previous_state, task_instance):
            lines.skipped(task_name(task_instance))

        @hookimpl
        def on_task_instance_failed(self, previous_state, task_instance, error):
            state = getattr(task_instance, "state", None)
            retrying = getattr(state, "value", state) == "up_for_retry"
            lines.failed(task_name(task_instance), error, retrying=retrying)

    listener = Listener()
    manager = get_listener_manager()
    manager.add_listener(listener)

    def remove() -> None:
        if manager.pm.is_registered(listener):
            manager.pm.unregister(listener)

    return remove


def display_path(path: Path) -> str:
    """`path` relative to the working directory when it is under it (as a newcomer would type it)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def report_failure(console: Console, log_path: Path, step: str, error: BaseException, tasks: TaskLines | None) -> None:
    """What failed, the end of its log (stack traces folded), and where the whole log is."""
    failure = tasks.first_failure(error.dag_id) if tasks is not None and isinstance(error, DagRunFailed) else None
    console.line()
    if isinstance(error, DagRunFailed):
        what = f"task {failure.name}: {failure.error}" if failure else "tasks " + ", ".join(
            f"{error.dag_id}.{task} ({state})" for task, state in error.failed.items()
        )
        console.line(f"altlake demo failed at step {step}: {error.dag_id} ended {error.state}; {what}")
    else:
        console.line(f"altlake demo failed at step {step}: {error_line(error)}")
    tail = log_tail(log_path, 20, start=failure.log_start, end=failure.log_end) if failure else log_tail(log_path, 20)
    if tail:
        console.line(f"last lines of {'the task' if failure else 'the'} log:")
        for line in tail:
            console.line(f"  | {line}")
    console.line(f"full log: {display_path(log_path)}")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lake", default=os.environ.get("ALTLAKE_LAKE_DIR", "lake"), help="lake root (default ./lake)")
    parser.add_argument("--airflow-home", default=os.environ.get("ALTLAKE_AIRFLOW_HOME", "airflow_home"),
                        help="Airflow home with the SQLite metadata DB (default ./airflow_home)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"image server port on 127.0.0.1 (default {DEFAULT_PORT}; keep it to make re-runs reuse the uids)")
    parser.add_argument("--no-sample", action="store_true", help="do not mix in the real Common Crawl sample WAT")
    parser.add_argument("--log", help="file for Airflow's, Spark's and the worker's log lines (default LAKE/demo.log; rewritten each run)")


def run(args: argparse.Namespace) -> int:
    """The demo, its own lines on the terminal and every library's output in the log file."""
    lake_dir = Path(args.lake).absolute()
    log_path = Path(args.log).absolute() if getattr(args, "log", None) else lake_dir / "demo.log"
    with LogRedirect(log_path, quiet_exit=True) as console:
        console.line(f"altlake demo: the pipeline's own logs (Airflow, Spark, the worker) go to {display_path(log_path)}")
        progress = Progress(6, console)
        tasks = TaskLines(console, log_path)
        try:
            return run_pipeline(args, progress, tasks, log_path)
        except KeyboardInterrupt:
            console.line(f"\naltlake demo: interrupted at step {progress.current} (log: {display_path(log_path)})")
            if os.environ.get("ALTLAKE_DEBUG"):
                raise
            return 130
        except Exception as error:  # noqa: BLE001 - the user gets what failed and where the log is, never a traceback
            traceback.print_exc(file=sys.stderr)  # into the log (fd 2)
            sys.stderr.flush()
            report_failure(console, log_path, progress.current, error, tasks)
            if os.environ.get("ALTLAKE_DEBUG"):
                raise
            return 1


def run_pipeline(args: argparse.Namespace, progress: Progress, tasks: TaskLines, log_path: Path) -> int:
    console = progress.console
    lake_dir = Path(args.lake).absolute()
    airflow_home = Path(args.airflow_home).absolute()
    paths = LakePaths(str(lake_dir))
    work_dir = Path(paths.demo_input)

    progress.step(
        f"model profile {DEMO_PROFILE.name!r}: the project's demo CLIP and heads, similarity thresholds"
        f" en {DEMO_PROFILE.threshold_en:.3f} / other {DEMO_PROFILE.threshold_other:.3f} (calibrated for it)"
    )
    os.environ.update(demo_environment(lake_dir, airflow_home))
    airflow_home.mkdir(parents=True, exist_ok=True)

    from altlake_cli.image_server import ImageServer

    try:
        server = ImageServer(port=args.port, files_dir=work_dir / "images")
    except OSError as error:  # the port is taken: any free one works, but re-runs get new uids
        console.line(f"  port {args.port} is busy ({error.strerror}): using a free port; image URLs differ from earlier runs")
        server = ImageServer(port=0, files_dir=work_dir / "images")
    stop_listening = None
    try:
        with server:
            progress.step(f"image server on {server.base_url}; writing the synthetic crawl under {display_path(work_dir)}")
            crawl = write_demo_crawl(work_dir, server.base_url)
            record = {"port": int(server.base_url.rsplit(":", 1)[1]), "files": str(work_dir / "images")}
            Path(paths.demo_image_server).write_text(json.dumps(record))
            console.line(f"  {display_path(crawl.wat)}: " + ", ".join(f"{n} {kind}" for kind, n in crawl.kinds.items()))
            sample = None if args.no_sample else SAMPLE_WAT
            if sample is not None and not sample.is_file():
                console.line(f"  the real sample WAT is missing ({sample}): continuing with the synthetic crawl only")
                sample = None

            progress.step(f"Airflow metadata DB in {display_path(airflow_home)}; cc_ingest ({DEMO_CRAWL}" + (f", {SAMPLE_CRAWL}" if sample else "") + ")")
            prepare_airflow_db()
            dags = load_dags()
            stop_listening = listen_to_tasks(tasks)
            run_dag(dags["cc_ingest"], {"crawl": DEMO_CRAWL, "wat_paths": [str(crawl.wat)]})
            if sample is not None:
                run_dag(dags["cc_ingest"], {"crawl": SAMPLE_CRAWL, "wat_paths": [str(sample)]})

            progress.step("score_candidates: plan batches, score them with the demo CLIP, merge into `scores`")
            run_dag(dags["score_candidates"])

        progress.step("build_release: GX gates, pairs, publish, KNN index")
        run_dag(dags["build_release"])
    finally:
        if stop_listening is not None:
            stop_listening()

    progress.step("summary")
    print_summary(lake_dir, progress.elapsed(), emit=console.line)
    console.line(f"\nlogs (Airflow, Spark, the worker): {display_path(log_path)}")
    return 0


def latest_release(lake_dir: Path) -> dict:
    """The newest row of `releases` (a re-run that changed nothing reuses the previous release)."""
    from deltalake import DeltaTable

    rows = DeltaTable(LakePaths(str(lake_dir)).table("releases")).to_pyarrow_table().to_pylist()
    if not rows:
        raise RuntimeError("no release was recorded")
    return max(rows, key=lambda row: row["created_at"])


def print_summary(lake_dir: Path, wall_s: float, emit: Callable[[str], None] = print) -> None:
    release = latest_release(lake_dir)
    manifest = json.loads(release["manifest"])
    emit(f"\naltlake demo finished in {wall_s:.0f}s\n")
    emit(f"release {release['release_id']}: {release['n_pairs']} pairs at {release['location']}")
    emit(f"  report:   {release['location']}/report.html")
    emit(f"  manifest: {release['location']}/manifest.json\n")
    emit("stages (manifest.json): what each kept and dropped")
    for stage in stats.parse(manifest["stages"]):
        emit(f"  {stage.line()}")
    emit("\nscore statuses: " + ", ".join(f"{status}={n}" for status, n in manifest["statuses"].items()))
    emit("subsets: " + ", ".join(f"{subset}={n}" for subset, n in manifest["counts"].items()))
    lake = f" --lake {lake_dir}" if lake_dir != Path("lake").absolute() else ""
    emit("\ntry:")
    for query in (
        "SELECT status, count(*) AS n FROM scores GROUP BY status ORDER BY n DESC",
        "SELECT subset, round(avg(similarity), 3) AS sim, count(*) AS n FROM pairs GROUP BY subset",
        "SELECT url, text, similarity, pwatermark FROM pairs ORDER BY pwatermark DESC LIMIT 5",
        "SELECT release_id, n_pairs, location FROM releases ORDER BY created_at DESC",
    ):
        emit(f'  altlake sql{lake} "{query}"')
    # The demo's image server is gone with the demo: serve starts it again for the search page.
    emit(f"  altlake serve --release {release['location']}   # search the release in a browser (serves the demo's images too)")
