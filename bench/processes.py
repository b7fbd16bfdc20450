"""One way every benchmark times a tool: its own process, wall seconds and the CPU seconds of it and
every child it waited for (rusage), so worker pools and spawned processes count on both sides."""

from __future__ import annotations

import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GPU_IMAGES_PER_S = 8000  # what one H100 runs ViT-B/32 at: the rate a worker's CPUs must keep up with


def vcpus_per_gpu(cpu_ms_per_image: float) -> float:
    """vCPUs that must feed one GPU at GPU_IMAGES_PER_S when each image costs this much CPU."""
    return round(cpu_ms_per_image * GPU_IMAGES_PER_S / 1000, 1)


def measure(label: str, command: list[str], env: dict[str, str]) -> dict[str, float]:
    """Run `command` to completion from the repo root: {"wall_s", "cpu_s"}; a failure raises with its stderr's end."""
    print(f"==> {label}", file=sys.stderr)
    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{label} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(f"    {wall:.1f}s wall, {cpu:.1f}s CPU", file=sys.stderr)
    return {"wall_s": wall, "cpu_s": cpu}


def free_port() -> int:
    """A TCP port nothing listens on at 127.0.0.1, for a server a benchmark starts."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop(process: subprocess.Popen, grace_s: float = 30) -> None:
    """SIGTERM, then SIGKILL if it is still running after `grace_s` (a stalled server may ignore SIGTERM)."""
    process.terminate()
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
