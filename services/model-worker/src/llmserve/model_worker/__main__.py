"""python -m llmserve.model_worker — loads the model the registry names and serves its jobs."""

from __future__ import annotations

import importlib
import sys

from llmserve.common.metrics_server import serve_metrics
from llmserve.common.runtime import run_main, service_runtime
from llmserve.model_worker.own_thread import in_own_thread
from llmserve.model_worker.settings import WorkerSettings
from llmserve.v1 import events_pb2


async def _run(settings: WorkerSettings) -> None:
    from llmserve.model_worker import heap

    # Before the first tensor: see heap.py.
    heap.fix_mmap_threshold()
    async with service_runtime(settings.common, events_pb2.INSTANCE_KIND_WORKER) as rt:
        serve_metrics(settings.metrics_addr, rt.readiness)
        # torch and transformers take seconds to import: on a thread of its own, so that a signal
        # meanwhile is heard at once.
        service = await rt.unless_stopped(in_own_thread(importlib.import_module, "llmserve.model_worker.service"))
        await service.serve(settings, rt)


def main() -> int:
    settings = WorkerSettings.from_env()
    return run_main("model-worker", settings.common, lambda: _run(settings))


if __name__ == "__main__":
    sys.exit(main())
