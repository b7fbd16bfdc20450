"""`python -m bench.pipeline.probe RESULT.json LOG -- COMMAND...`: run one stage as its own process
tree and write what it cost.

A Spark job's JVM outlives the Python that started it and is never waited for, so plain rusage of
children (bench.processes.measure) misses the JVM and its Python workers: for `altlake extract`
on a 2,000-page WAT it reported 1.7 CPU-s where the JVM alone used 52. This wrapper makes itself
the child subreaper (Linux prctl), so every orphaned descendant is re-parented to it and reaped
here; RUSAGE_CHILDREN then holds the CPU of the whole tree and the largest RSS of any one process
(in local mode the JVM, which is driver and executor at once). Being a fresh process per stage,
that maximum is this stage's alone. A sampler adds the peak of the whole tree's summed RSS.
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


def become_subreaper() -> bool:
    """Orphaned descendants are re-parented to this process (Linux); False where unsupported."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


class TreeSampler(threading.Thread):
    """Peak summed RSS of every descendant, and the peak RSS of any JVM among them."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.peak_tree = self.peak_jvm = 0

    def run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self.stop.wait(SAMPLE_S):
            total = 0
            for proc in me.children(recursive=True):
                try:
                    rss = proc.memory_info().rss
                    total += rss
                    if proc.name() == "java":
                        self.peak_jvm = max(self.peak_jvm, rss)
                except psutil.Error:
                    continue
            self.peak_tree = max(self.peak_tree, total)


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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 4 or argv[2] != "--":
        print("usage: python -m bench.pipeline.probe RESULT.json LOG -- COMMAND...", file=sys.stderr)
        return 2
    result_path, log_path, command = argv[0], argv[1], argv[3:]
    reaper = become_subreaper()
    sampler = TreeSampler()
    sampler.start()
    started = time.perf_counter()
    with open(log_path, "ab") as log:
        log.write(f"$ {' '.join(command)}\n".encode())
        log.flush()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        rc = proc.wait()
    wall = time.perf_counter() - started
    killed = reap_orphans(ORPHAN_GRACE_S)
    sampler.stop.set()
    sampler.join()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = {
        "rc": rc,
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024,  # kilobytes on Linux
        "peak_tree_rss_mb": sampler.peak_tree / 2**20,
        "peak_jvm_rss_mb": sampler.peak_jvm / 2**20,
        "tree_reaped": reaper,
        "orphans_killed": killed,
    }
    with open(result_path, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
