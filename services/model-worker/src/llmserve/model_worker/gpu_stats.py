"""GPU use for heartbeats, read through NVML (nvidia-ml-py) when the worker runs on an NVIDIA GPU."""

from __future__ import annotations

from typing import Any

import structlog

log = structlog.get_logger()


class GpuStats:
    """Fills a heartbeat's GPU fields; does nothing on a CPU, or where NVML is not installed."""

    def __init__(self, device: Any) -> None:
        self._handle = None
        if getattr(device, "type", "cpu") != "cuda":
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
        except Exception as exc:  # no NVML library or no permission: heartbeats go on without GPU fields
            log.info("gpu_stats_unavailable", error=str(exc))

    def fill(self, beat: Any) -> None:
        if self._handle is None:
            return
        try:
            beat.gpu_utilization_percent = float(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)
            memory = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
            beat.gpu_memory_used_bytes = int(memory.used)
            beat.gpu_memory_total_bytes = int(memory.total)
        except Exception:
            pass  # a failed read leaves the fields at zero for this beat
