"""Settings of the monitor, read once from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from llmserve.common.config import CommonSettings, env_float, env_str
from llmserve.monitor.probes import ProbeSettings
from llmserve.monitor.slo_rules import Thresholds


@dataclass(frozen=True)
class MonitorSettings:
    common: CommonSettings = field(default_factory=CommonSettings)
    # LLMSERVE_MONITOR_HTTP_ADDR: where the status page, /status (JSON) and /metrics are served.
    http_addr: str = "127.0.0.1:8001"
    # LLMSERVE_MONITOR_ALERT_WEBHOOK: URL that receives every alert as a JSON POST; empty: log only.
    alert_webhook: str = ""
    # LLMSERVE_MONITOR_PROBE_INTERVAL_S (seconds between probe rounds, 0 = off), LLMSERVE_MONITOR_PROBE_PROMPT,
    # LLMSERVE_MONITOR_PROBE_EXPECT (text the answer must contain; empty = any answer),
    # LLMSERVE_MONITOR_PROBE_TIMEOUT_S.
    probes: ProbeSettings = field(default_factory=ProbeSettings)
    # LLMSERVE_MONITOR_ALERT_ERROR_RATE (share of failing requests per router over a minute) and
    # LLMSERVE_MONITOR_ALERT_TTFT_S (median time to first token) above which alerts fire.
    thresholds: Thresholds = field(default_factory=Thresholds)
    # LLMSERVE_MONITOR_HISTORY_STEP_S: seconds between the points of the status page's charts (15
    # minutes are kept: 180 points at the default).
    history_step_s: float = 5.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> MonitorSettings:
        env = os.environ if env is None else env
        defaults = ProbeSettings()
        history_step_s = env_float(env, "LLMSERVE_MONITOR_HISTORY_STEP_S", cls.history_step_s)
        if history_step_s <= 0:
            raise ValueError(f"LLMSERVE_MONITOR_HISTORY_STEP_S must be above 0, got {history_step_s:g}")
        return cls(
            common=CommonSettings.from_env(env),
            http_addr=env_str(env, "LLMSERVE_MONITOR_HTTP_ADDR", cls.http_addr),
            alert_webhook=env_str(env, "LLMSERVE_MONITOR_ALERT_WEBHOOK", ""),
            probes=ProbeSettings(
                interval_s=env_float(env, "LLMSERVE_MONITOR_PROBE_INTERVAL_S", defaults.interval_s),
                prompt=env_str(env, "LLMSERVE_MONITOR_PROBE_PROMPT", defaults.prompt),
                # Set but empty means "any answer", so it is read without a fallback.
                expect=env.get("LLMSERVE_MONITOR_PROBE_EXPECT", defaults.expect),
                timeout_s=env_float(env, "LLMSERVE_MONITOR_PROBE_TIMEOUT_S", defaults.timeout_s),
            ),
            thresholds=Thresholds(
                error_rate=env_float(env, "LLMSERVE_MONITOR_ALERT_ERROR_RATE", Thresholds.error_rate),
                ttft_p50_s=env_float(env, "LLMSERVE_MONITOR_ALERT_TTFT_S", Thresholds.ttft_p50_s),
            ),
            history_step_s=history_step_s,
        )
