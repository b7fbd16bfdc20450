"""`python -m bench.pipeline.probe RESULT.json LOG -- COMMAND...`: run one stage as its own process
tree and write what it cost.

A Spark job's JVM outlives the Python that started it and is never waited for, so plain rusage of
children (bench.processes.measure) misses the JVM and its Python workers: for `altlake extract`
on a 2,000-page WAT it reported 1.7 CPU-s where the JVM alone used 52. This wrapper makes itself
the child subreaper (Linux prctl), so every orphaned descendant is re-parented to it and reaped
here; RUSAGE_CHILDREN then holds the CPU of the whole tree and the largest RSS of any one process
(in local mode the JVM, which is driver and executor at once). Being a fresh process per stage,
that maximum is this stage's alone. A sampler adds the peak of the whole tree's summed RSS.

On a standalone cluster (`--executors-of WORKER_PID`) the executors are not in the stage's tree: the
worker starts them. The sampler then also follows the worker's descendants, the executor JVMs and
their Python workers, for their peak RSS and their CPU (the last user + system time seen of each
process, sampled every 0.25 s until the executors have exited after the command).
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time

PR_SET_CHILD_SUBREAPER = 36
SAMPLE_S = 0.25
ORPHAN_GRACE_S = 120.0  # a JVM shutting down after its Python exited gets this long before it is killed
EXECUTOR_GRACE_S = 60.0  # how long the executors of a finished application get to exit


def become_subreaper() -> bool:
    """Orphaned descendants are re-parented to this process (Linux); False where unsupported."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


class TreeSampler(threading.Thread):
    """Peak summed RSS of every descendant, and the peak RSS of any JVM among them; with a worker pid,
    the same for the worker's descendants (executors) and the CPU they used."""

    def __init__(self, worker_pid: int | None = None) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.peak_tree = self.peak_jvm = 0
        self.worker_pid = worker_pid
        self.peak_executors = self.peak_executor_jvm = 0
        self.executor_cpu: dict[tuple[int, float], float] = {}  # (pid, start time) -> user + system seconds
        self._already: set[tuple[int, float]] = set()  # executors running before the command: not this stage's

    def run(self) -> None:
        import psutil

        me = psutil.Process()
        worker = psutil.Process(self.worker_pid) if self.worker_pid else None
        if worker is not None:
            self._already = {(p.pid, p.create_time()) for p in worker.children(recursive=True)}
        while not self.stop.wait(SAMPLE_S):
            total, self.peak_jvm = self._sample(me.children(recursive=True), self.peak_jvm)
            self.peak_tree = max(self.peak_tree, total)
            if worker is not None:
                total, self.peak_executor_jvm = self._sample(worker.children(recursive=True), self.peak_executor_jvm, self.executor_cpu)
                self.peak_executors = max(self.peak_executors, total)

    def _sample(self, procs: list, peak_jvm: int, cpu: dict | None = None) -> tuple[int, int]:
        import psutil

        total = 0
        for proc in procs:
            try:
                with proc.oneshot():
                    key = (proc.pid, proc.create_time())
                    if key in self._already:
                        continue
                    rss = proc.memory_info().rss
                    if cpu is not None:
                        times = proc.cpu_times()
                        cpu[key] = times.user + times.system
                    total += rss
                    if proc.name() == "java":
                        peak_jvm = max(peak_jvm, rss)
            except psutil.Error:
                continue
        return total, peak_jvm

    def executors_running(self) -> bool:
        import psutil

        try:
            return any((p.pid, p.create_time()) not in self._already for p in psutil.Process(self.worker_pid).children())
        except psutil.Error:
            return False


def reap_orphans(deadline_s: float) -> int:
    """Wait for every remaining child (orphans re-parented here); kill those still running at the deadline."""
    import psutil

    killed, deadline = 0, time.monotonic() + deadline_s
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return killed
        if pid:
            continue
        if time.monotonic() > deadline:
            for child in psutil.Process().children():
                child.send_signal(signal.SIGKILL)
                killed += 1
            deadline = float("inf")
        time.sleep(0.05)


def executor_figures(sampler: TreeSampler) -> dict:
    """The executors' share on a cluster (their CPU is also in the stage's cpu_s, with the driver's)."""
    if not sampler.worker_pid:
        return {}
    return {
        "executor_cpu_s": round(sum(sampler.executor_cpu.values()), 2),
        "executor_processes": len(sampler.executor_cpu),
        "peak_executors_rss_mb": sampler.peak_executors / 2**20,
        "peak_executor_jvm_rss_mb": sampler.peak_executor_jvm / 2**20,
    }


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    worker_pid = None
    if len(argv) > 3 and argv[2] == "--executors-of":
        worker_pid = int(argv[3])
        del argv[2:4]
    if len(argv) < 4 or argv[2] != "--":
        print("usage: python -m bench.pipeline.probe RESULT.json LOG [--executors-of WORKER_PID] -- COMMAND...", file=sys.stderr)
        return 2
    result_path, log_path, command = argv[0], argv[1], argv[3:]
    reaper = become_subreaper()
    sampler = TreeSampler(worker_pid)
    sampler.start()
    started = time.perf_counter()
    with open(log_path, "ab") as log:
        log.write(f"$ {' '.join(command)}\n".encode())
        log.flush()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        rc = proc.wait()
    wall = time.perf_counter() - started
    killed = reap_orphans(ORPHAN_GRACE_S)
    if worker_pid:  # the worker stops an application's executors once its driver has gone
        until = time.monotonic() + EXECUTOR_GRACE_S
        while sampler.executors_running() and time.monotonic() < until:
            time.sleep(SAMPLE_S)
    sampler.stop.set()
    sampler.join()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    executors = executor_figures(sampler)
    result = {
        "rc": rc,
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime + executors.get("executor_cpu_s", 0.0),
        "peak_rss_mb": usage.ru_maxrss / 1024,  # kilobytes on Linux
        "peak_tree_rss_mb": sampler.peak_tree / 2**20,
        "peak_jvm_rss_mb": sampler.peak_jvm / 2**20,
        "tree_reaped": reaper,
        **executors,
        "orphans_killed": killed,
    }
    with open(result_path, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
