"""deploy/docker-compose.yml describes the same cluster as `make up` (Docker cannot run here)."""

import re
import subprocess
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_every_service_of_the_topology_is_there(compose):
    services = compose["services"]
    assert {"nats", "redis", "router", "scheduler", "registry", "monitor"} <= services.keys()
    workers = [name for name, s in services.items() if s.get("image") == "llmserve-model-worker" and "command" not in s]
    assert len(workers) >= 2


def test_nats_runs_jetstream_and_redis_keeps_an_aof(compose):
    assert "-js" in compose["services"]["nats"]["command"]
    redis_cmd = compose["services"]["redis"]["command"]
    assert redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"


def test_servers_and_router_have_healthchecks(compose):
    for name in ("nats", "redis", "router", "registry"):
        assert compose["services"][name]["healthcheck"]["test"], name


def test_builds_use_dockerfiles_that_exist(compose):
    for name, service in compose["services"].items():
        build = service.get("build")
        if build:
            assert (COMPOSE.parent / build["context"] / build["dockerfile"]).is_file(), name


def test_dependencies_and_volumes_are_declared(compose):
    services = compose["services"]
    for name, service in services.items():
        for dep in service.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown {dep}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):  # a bind mount: the path must exist
                assert (COMPOSE.parent / source).exists(), f"{name} binds missing {source}"
            else:
                assert source in compose["volumes"], f"{name} mounts undeclared volume {source}"


def test_environment_names_are_settings_the_code_reads(compose):
    code = "\n".join(p.read_text() for p in ROOT.glob("*/*/src/llmserve/**/*.py"))
    for name, service in compose["services"].items():
        for var in service.get("environment", {}) or {}:
            if var.startswith("LLMSERVE_"):
                assert re.search(rf'"{var}"', code), f"{name}: {var} is not read by any service"


def test_docker_compose_accepts_the_file():
    from tests.helpers.system_tools import debian_tool

    tool = debian_tool("docker-compose", "docker-compose")
    result = subprocess.run([tool, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
