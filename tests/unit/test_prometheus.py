"""deploy/prometheus with Debian's promtool: both scrape configs and the rules are valid, and every
alert and recording rule passes its unit tests (deploy/prometheus/tests/alerts_test.yml)."""

import subprocess
from pathlib import Path

import pytest

from tests.helpers.system_tools import debian_tool

pytestmark = pytest.mark.unit

PROMETHEUS = Path(__file__).parents[2] / "deploy" / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess:
    tool = debian_tool("promtool", "prometheus")
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=120, cwd=PROMETHEUS)


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus-kubernetes.yml"])
def test_scrape_configs_are_valid(config):
    result = promtool("check", "config", config)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_are_valid():
    result = promtool("check", "rules", *sorted(str(p.relative_to(PROMETHEUS)) for p in (PROMETHEUS / "rules").glob("*.yml")))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test_and_they_pass():
    import yaml

    alerts = {r["alert"] for g in yaml.safe_load((PROMETHEUS / "rules" / "alerts.yml").read_text())["groups"] for r in g["rules"]}
    tests = yaml.safe_load((PROMETHEUS / "tests" / "alerts_test.yml").read_text())["tests"]
    tested = {case["alertname"] for t in tests for case in t.get("alert_rule_test", []) if case.get("exp_alerts")}
    assert alerts == tested, f"alerts without a firing test: {alerts - tested}"
    result = promtool("test", "rules", "tests/alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
