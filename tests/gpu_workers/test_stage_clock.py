"""The per-stage CPU clock: thread CPU per stage summed over threads, the rest of the process as `other`."""

import threading
import time

import pytest

from gpu_workers.stage_clock import NO_CLOCK, STAGES, StageClock


def _spin(seconds: float) -> None:
    """Burn CPU (not sleep: a sleeping thread costs no CPU and must count as none)."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_stages_add_up_over_threads_and_sleep_costs_nothing():
    clock = StageClock()
    clock.start()

    def work() -> None:
        with clock.stage("decode"):
            _spin(0.05)
            time.sleep(0.05)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with clock.stage("write"):
        _spin(0.02)
    _spin(0.03)  # outside every stage: `other`
    clock.stop()

    ms = clock.ms_per_image(10)
    assert set(ms) == {*STAGES, "other", "total"}
    assert 15 <= ms["decode"] < 17 * 1.5  # 3 threads x 50 ms of CPU / 10 images; their sleep is not counted
    assert 2 <= ms["write"] < 4
    assert ms["download"] == ms["model"] == 0
    assert ms["other"] >= 2.5 and ms["total"] == pytest.approx(sum(ms[s] for s in STAGES) + ms["other"], abs=0.01)


def test_unknown_stage_and_empty_batches():
    clock = StageClock()
    with pytest.raises(ValueError, match="unknown stage 'decoding'"):
        clock.add("decoding", 1.0)
    assert clock.ms_per_image(0) == {}
    with NO_CLOCK.stage("decode"):
        _spin(0.001)
    assert NO_CLOCK.ms_per_image(1)["decode"] == 0
