"""python -m llmserve.model_worker — loads the model the registry names and serves its jobs."""

from __future__ import annotations

import asyncio
import sys

from llmserve.common.logging import configure_logging
from llmserve.model_worker.settings import WorkerSettings


def main() -> int:
    settings = WorkerSettings.from_env()
    configure_logging("model-worker", settings.common.log_format, settings.common.log_level)
    # torch and transformers load only after logging is set up: their import takes seconds.
    from llmserve.model_worker.service import run

    try:
        asyncio.run(run(settings))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
