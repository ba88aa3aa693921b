"""Names on NATS and in Redis, and the torch-free import promise of the light services."""

import subprocess
import sys

import pytest

from llmserve.common.keys import RedisKeys
from llmserve.common.subjects import Subjects

pytestmark = pytest.mark.unit


def test_subjects_share_the_prefix():
    s = Subjects("llm")
    assert s.submit == "llm.sched.submit"
    assert s.jobs("m", 3, 2) == "llm.jobs.m.3.p2"
    assert s.tokens("r1") == "llm.tokens.r1"
    assert s.cancel("r1") == "llm.cancel.r1"
    assert s.heartbeat("worker", "w1") == "llm.hb.worker.w1"
    assert s.jobs_stream("m") == "LLM_JOBS_m"
    assert Subjects("t-1").jobs_stream("m-2") == "T_1_JOBS_m-2"
    assert s.jobs_version("m", 3) == "llm.jobs.m.3.*"


def test_bad_prefix_is_refused():
    with pytest.raises(ValueError):
        Subjects("a.b")


def test_keys_share_the_prefix():
    k = RedisKeys("llm:")
    assert k.version("m", 2) == "llm:model:m:v:2"
    assert k.aliases("m") == "llm:model:m:aliases"


@pytest.mark.parametrize("module", ["router", "scheduler", "registry", "monitor", "cli"])
def test_light_services_do_not_import_torch(module):
    code = (
        "import sys, importlib\n"
        f"importlib.import_module('llmserve.{module}.__main__')\n"
        "print('torch' in sys.modules, 'transformers' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_the_cli_does_not_import_the_registry_service():
    """The registry is the one writer: the CLI reaches it over gRPC only."""
    import pathlib

    cli = pathlib.Path(__file__).parents[2] / "libs" / "cli" / "src" / "llmserve" / "cli"
    offenders = [p.name for p in cli.glob("*.py") if "llmserve.registry" in p.read_text()]
    assert offenders == []
