"""Alerts: a structured log event always, and a JSON POST to a webhook when one is configured."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

import structlog

log = structlog.get_logger()


class Alerter:
    def __init__(self, webhook_url: str = "") -> None:
        self._webhook_url = webhook_url
        # Alerts raised so far, newest last (kept for the status view and tests).
        self.recent: list[dict] = []

    async def raise_alert(self, kind: str, summary: str, **details: object) -> None:
        alert = {"alert": kind, "summary": summary, "at": time.time(), **details}
        self.recent = [*self.recent[-99:], alert]
        log.warning("alert", **alert)
        if self._webhook_url:
            try:
                await asyncio.to_thread(self._post, alert)
            except Exception as exc:  # an unreachable webhook must not stop monitoring
                log.warning("alert_webhook_failed", error=str(exc), url=self._webhook_url)

    def _post(self, alert: dict) -> None:
        request = urllib.request.Request(
            self._webhook_url, data=json.dumps(alert).encode(), headers={"Content-Type": "application/json"}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            response.read()
