"""Process lifecycle: SIGTERM/SIGINT become an asyncio.Event the service's main awaits."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import uuid

import structlog


def shutdown_event() -> asyncio.Event:
    """An event set by the first SIGTERM or SIGINT. A second one (of either) ends the process at once,
    cutting short a drain or a grace period, with exit code 128 + the signal's number."""
    loop = asyncio.get_running_loop()
    event = asyncio.Event()

    def _on_signal(signum: int) -> None:
        if not event.is_set():
            structlog.get_logger().info("shutdown_requested", signal=signal.Signals(signum).name)
            event.set()
            return
        structlog.get_logger().warning("forced_exit", signal=signal.Signals(signum).name)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, _on_signal, signum)
    return event


def new_instance_id(kind: str) -> str:
    """Unique per process start; a restarted process is a new instance."""
    host = socket.gethostname().split(".")[0].replace("_", "-")[:24]
    return f"{kind}-{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
