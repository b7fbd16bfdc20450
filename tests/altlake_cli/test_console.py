"""altlake_cli/console.py and the demo's printing path, without running the pipeline: the
file-descriptor redirect (everything a process and its children print lands in the log, the
command's own lines on the real stdout), the folding of stack traces, and the demo's task lines and
failure report."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
from pathlib import Path

from altlake_cli.console import Console, fold_stack_traces, log_tail
from altlake_cli.demo import DagRunFailed, Progress, TaskLines, report_failure, task_name

REPO = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent(
    """
    import atexit, logging, os, subprocess, sys
    from altlake_cli.console import LogRedirect

    atexit.register(print, "printed at exit")  # registered first: runs after LogRedirect's handler
    logging.basicConfig(level=logging.INFO, format="LOG %(levelname)s %(message)s")
    with LogRedirect(sys.argv[1], quiet_exit=True) as console:
        console.line("demo line 1")
        print("python stdout")
        print("python stderr", file=sys.stderr)
        logging.info("a logging record")
        os.write(1, b"fd 1 directly\\n")
        os.write(2, b"fd 2 directly, as the JVM writes\\n")
        subprocess.run(["sh", "-c", "echo child stdout; echo child stderr >&2"], check=True)
        console.status("  cc_ingest.extract ...")  # not a terminal: prints nothing
        console.line("demo line 2")
    print("after the redirect")
    """
)


def test_log_redirect_sends_fd_1_and_2_to_the_log_and_own_lines_to_the_real_stdout(tmp_path):
    log = tmp_path / "logs" / "demo.log"
    log.parent.mkdir()
    log.write_text("a previous run's log\n")
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(log)], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout == "demo line 1\ndemo line 2\nafter the redirect\n"
    assert child.stderr == ""
    logged = log.read_text()
    for line in (
        "python stdout",
        "python stderr",
        "LOG INFO a logging record",
        "fd 1 directly",
        "fd 2 directly, as the JVM writes",
        "child stdout",
        "child stderr",
        "printed at exit",
    ):
        assert line in logged, line
    assert "demo line" not in logged
    assert "a previous run's log" not in logged  # rewritten each run


def test_console_status_line_is_replaced_on_a_terminal_and_absent_in_a_pipe():
    pipe = io.StringIO()
    Console(pipe, tty=False).status("  running ...")
    assert pipe.getvalue() == ""
    terminal = io.StringIO()
    console = Console(terminal, tty=True)
    console.status("  score_candidates.score[0] …")
    console.line("  score_candidates.score[0] ✓ 1.0s")
    assert terminal.getvalue() == "  score_candidates.score[0] …\r\033[K  score_candidates.score[0] ✓ 1.0s\n"


PY_TRACE = """\
2026-11-27T19:04:34.517042Z [error    ] Task failed with exception     [task] loc=task_runner.py:1676
Traceback (most recent call last):
  File "/venv/lib/python3.11/site-packages/airflow/sdk/execution_time/task_runner.py", line 1579, in _run
    result = _execute_task(context=context, ti=ti, log=log)
             ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/repo/plugins/spark.py", line 80, in run_extract_job
    raise SparkJobError("boom")
plugins.spark.SparkJobError: extract failed
on two lines
2026-11-27T19:04:34.518220Z [info     ] ::group::Post Execute          [task] loc=task_runner.py:1677
"""
JAVA_TRACE = """\
26/11/27 19:04:33 ERROR Executor: Exception in task 0.0
java.io.FileNotFoundException: /lake/x.wat (No such file)
\tat java.base/java.io.FileInputStream.open0(Native Method)
\tat java.base/java.io.FileInputStream.open(FileInputStream.java:216)
\t... 12 more
"""


def test_stack_traces_are_folded_to_their_last_line():
    folded = fold_stack_traces((JAVA_TRACE + PY_TRACE).splitlines())
    assert folded == [
        "26/11/27 19:04:33 ERROR Executor: Exception in task 0.0",
        "java.io.FileNotFoundException: /lake/x.wat (No such file)",
        "(stack frames: in the log)",
        "2026-11-27T19:04:34.517042Z [error    ] Task failed with exception     [task] loc=task_runner.py:1676",
        "(traceback: in the log)",
        "plugins.spark.SparkJobError: extract failed",
        "on two lines",
        "2026-11-27T19:04:34.518220Z [info     ] ::group::Post Execute          [task] loc=task_runner.py:1677",
    ]


def test_log_tail_reads_a_span_and_its_last_lines(tmp_path):
    log = tmp_path / "demo.log"
    before = "".join(f"earlier line {i}\n" for i in range(50))
    log.write_text(before + PY_TRACE + "later line\n")
    start, end = len(before), len(before) + len(PY_TRACE)
    assert log_tail(log, 3, start=start, end=end) == [
        "plugins.spark.SparkJobError: extract failed",
        "on two lines",
        "2026-11-27T19:04:34.518220Z [info     ] ::group::Post Execute          [task] loc=task_runner.py:1677",
    ]
    assert "later line" not in "\n".join(log_tail(log, 20, start=start, end=end))
    assert log_tail(log, 2) == ["2026-11-27T19:04:34.518220Z [info     ] ::group::Post Execute          [task] loc=task_runner.py:1677", "later line"]
    assert log_tail(tmp_path / "missing.log") == []


class Ti:
    def __init__(self, dag_id: str, task_id: str, map_index: int = -1) -> None:
        self.dag_id, self.task_id, self.map_index = dag_id, task_id, map_index


def test_demo_prints_a_line_per_task_and_a_failure_without_traceback(tmp_path):
    log = tmp_path / "demo.log"
    log.write_text("2026-11-27T19:04:30Z [info     ] Filling up the DagBag [airflow.dag_processing.dagbag.DagBag]\n")
    out = io.StringIO()
    console = Console(out, tty=False)
    progress = Progress(6, console)
    tasks = TaskLines(console, log)

    progress.step("Airflow metadata DB in airflow_home; cc_ingest (CC-MAIN-2099-01)")
    tasks.started(task_name(Ti("cc_ingest", "resolve_inputs")))
    tasks.succeeded(task_name(Ti("cc_ingest", "resolve_inputs")))
    tasks.started(task_name(Ti("score_candidates", "score", 0)))
    tasks.succeeded(task_name(Ti("score_candidates", "score", 0)))
    tasks.started("cc_ingest.extract")
    with log.open("a") as file:
        file.write(PY_TRACE)
    tasks.failed("cc_ingest.extract", RuntimeError("extract failed\nsecond line"))
    tasks.started("cc_ingest.validate_candidates")  # failing after it: not the cause
    tasks.failed("cc_ingest.validate_candidates", RuntimeError("no candidates"))
    with log.open("a") as file:
        file.write("2026-11-27T19:04:35Z [info     ] DagRun Finished: dag_id=cc_ingest [airflow.models.dagrun.DagRun]\n")
    error = DagRunFailed("cc_ingest", "failed", {"extract": "failed", "validate_candidates": "upstream_failed"})
    report_failure(console, log, progress.current, error, tasks)

    printed = out.getvalue()
    assert "[altlake demo 1/6 |" in printed
    assert "  cc_ingest.resolve_inputs ✓ " in printed
    assert "  score_candidates.score[0] ✓ " in printed
    assert "  cc_ingest.extract ✗ " in printed and ": RuntimeError: extract failed" in printed
    assert "altlake demo failed at step 1/6" in printed
    assert "task cc_ingest.extract: RuntimeError: extract failed" in printed
    assert "  | plugins.spark.SparkJobError: extract failed" in printed  # the end of the task's own log span
    assert "DagRun Finished" not in printed  # logged after the task: not its lines
    assert "Traceback" not in printed and 'File "' not in printed
    assert f"full log: {log}" in printed


def test_airflow_listener_hooks_feed_the_task_lines():
    """listen_to_tasks registers with the Task SDK's listener manager, which the task runner calls
    in-process under dag.test(); a retried failure says so."""
    from airflow.sdk import TaskInstanceState
    from airflow.sdk.listener import get_listener_manager

    from altlake_cli.demo import listen_to_tasks

    out = io.StringIO()
    tasks = TaskLines(Console(out, tty=False))
    remove = listen_to_tasks(tasks)
    hook = get_listener_manager().hook
    try:
        ti = Ti("score_candidates", "score", 1)
        hook.on_task_instance_running(previous_state=None, task_instance=ti)
        ti.state = TaskInstanceState.UP_FOR_RETRY
        hook.on_task_instance_failed(previous_state=None, task_instance=ti, error=OSError("worker exited with status 3"))
        hook.on_task_instance_running(previous_state=None, task_instance=ti)
        hook.on_task_instance_success(previous_state=None, task_instance=ti)
    finally:
        remove()
    hook.on_task_instance_success(previous_state=None, task_instance=ti)  # unregistered: no line
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("  score_candidates.score[1] ✗ ") and lines[0].endswith(" (will retry): OSError: worker exited with status 3")
    assert lines[1].startswith("  score_candidates.score[1] ✓ ")
