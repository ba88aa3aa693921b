"""python -m llmserve.model_worker — loads the model the registry names and serves its jobs."""

from __future__ import annotations

import sys

from llmserve.common.runtime import run_main
from llmserve.model_worker.settings import WorkerSettings


async def _run(settings: WorkerSettings) -> None:
    from llmserve.model_worker import heap

    # Before the first tensor: see heap.py.
    heap.fix_mmap_threshold()
    # torch and transformers load only after logging is set up: their import takes seconds.
    from llmserve.model_worker.service import run

    await run(settings)


def main() -> int:
    settings = WorkerSettings.from_env()
    return run_main("model-worker", settings.common, lambda: _run(settings))


if __name__ == "__main__":
    sys.exit(main())
