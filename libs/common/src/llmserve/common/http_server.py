"""uvicorn inside a service's own event loop (router, monitor), sharing its connections and state."""

from __future__ import annotations

import asyncio
import contextlib

import uvicorn
from fastapi import FastAPI


class _EmbeddedServer(uvicorn.Server):
    # The service's own SIGTERM handling stops this server; uvicorn must not take the signals over.
    @contextlib.contextmanager
    def capture_signals(self):
        yield

    def install_signal_handlers(self) -> None:
        pass


class HttpServer:
    def __init__(self, app: FastAPI, addr: str, graceful_s: float) -> None:
        host, _, port = addr.rpartition(":")
        config = uvicorn.Config(
            app,
            host=host or "127.0.0.1",
            port=int(port),
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=int(graceful_s),
        )
        self._server = _EmbeddedServer(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(), name="http")
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises why it could not start (port taken, ...)
                raise RuntimeError("HTTP server stopped during start-up")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        """Stops accepting connections and lets open streams finish (up to the graceful timeout)."""
        self._server.should_exit = True
        if self._task is not None:
            await self._task
