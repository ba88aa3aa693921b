"""Process lifecycle: SIGTERM/SIGINT become an asyncio.Event the service's main awaits."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import uuid


def shutdown_event() -> asyncio.Event:
    """An event set by the first SIGTERM or SIGINT; a second signal is left to the default handler."""
    loop = asyncio.get_running_loop()
    event = asyncio.Event()

    def _on_signal(signum: int) -> None:
        event.set()
        loop.remove_signal_handler(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, _on_signal, signum)
    return event


def new_instance_id(kind: str) -> str:
    """Unique per process start; a restarted process is a new instance."""
    host = socket.gethostname().split(".")[0].replace("_", "-")[:24]
    return f"{kind}-{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
