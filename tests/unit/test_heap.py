"""The worker's heap settings take effect on glibc and are harmless elsewhere."""

import platform

import pytest

from llmserve.model_worker import heap

pytestmark = pytest.mark.unit


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_mmap_threshold_is_set_and_trim_runs():
    assert heap.fix_mmap_threshold(heap.MMAP_THRESHOLD_BYTES) is True
    heap.return_free_memory()


def test_without_glibc_nothing_happens(monkeypatch):
    monkeypatch.setattr(heap, "_libc", lambda: None)
    assert heap.fix_mmap_threshold() is False
    heap.return_free_memory()
