"""Timing and memory helpers for the benchmarks: per-request token timestamps, percentiles, peak RSS."""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass, field

import psutil


@dataclass
class RequestTiming:
    """When one request started and when each of its tokens (or chunks) arrived, in perf_counter seconds."""

    start: float
    arrivals: list[float] = field(default_factory=list)
    tokens: int = 0

    @property
    def ttft(self) -> float:
        return self.arrivals[0] - self.start

    @property
    def itls(self) -> list[float]:
        return [b - a for a, b in zip(self.arrivals, self.arrivals[1:], strict=False)]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if q < 100 else max(values)


def summarize(name: str, timings: list[RequestTiming], wall_s: float, peak_rss: int, **extra) -> dict:
    itls = [x for t in timings for x in t.itls]
    ttfts = [t.ttft for t in timings]
    tokens = sum(t.tokens for t in timings)
    return {
        "scenario": name,
        "requests": len(timings),
        "tokens": tokens,
        "wall_s": round(wall_s, 3),
        "tokens_per_s": round(tokens / wall_s, 2),
        "ttft_p50_ms": round(percentile(ttfts, 50) * 1000, 1),
        "ttft_p99_ms": round(percentile(ttfts, 99) * 1000, 1),
        # Per request, in the order the requests were given (the same prompts in every scenario).
        "ttft_ms": [round(t * 1000, 1) for t in ttfts],
        "itl_p50_ms": round(percentile(itls, 50) * 1000, 1),
        "itl_p99_ms": round(percentile(itls, 99) * 1000, 1),
        "peak_rss_mb": round(peak_rss / 2**20),
        **extra,
    }


class PeakRss:
    """Samples a process's resident memory every 100 ms while in the `with` block (rarely, so that the
    sampler thread does not compete for the GIL with the code it measures)."""

    def __init__(self, pid: int | None = None) -> None:
        self._process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self._process.memory_info().rss)
            except psutil.Error:
                return
            self._stop.wait(0.1)

    def __enter__(self) -> PeakRss:
        self.peak = self._process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def now() -> float:
    return time.perf_counter()
