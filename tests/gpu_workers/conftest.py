"""Shared fixtures of the worker's model tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No hub, ever: huggingface_hub refuses network calls and the model cache starts empty.

    One torch thread while here (OpenMP spin-waits crawl on a shared 2-core box), restored after
    because the thread count is process-wide and other tests compare float outputs across runs."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("ALTLAKE_CACHE_DIR", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
