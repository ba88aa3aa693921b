"""Priority aging in the worker's puller, and the settings that name it."""

import pytest

from llmserve.model_worker.job_puller import aged_order
from llmserve.model_worker.settings import WorkerSettings

pytestmark = pytest.mark.unit


def test_aged_order_lifts_old_low_priority_jobs():
    low, normal, high, critical = 1, 2, 3, 4
    assert aged_order({}, 10.0) == [critical, high, normal, low]
    # Waited 2 steps: low counts as high, and a tie goes to the level that is higher by itself.
    assert aged_order({low: 25.0, high: 0.0}, 10.0)[:2] == [critical, high]
    order = aged_order({low: 35.0, high: 0.0}, 10.0)
    assert order.index(low) < order.index(high)
    assert aged_order({low: 1000.0}, 0.0) == [critical, high, normal, low]  # aging off


def test_aging_setting_has_the_worker_infix_and_the_old_name_still_works():
    assert WorkerSettings.from_env({}).priority_aging_s == WorkerSettings.priority_aging_s
    assert WorkerSettings.from_env({}).deprecations == ()
    new = WorkerSettings.from_env({"LLMSERVE_WORKER_PRIORITY_AGING_S": "3"})
    assert new.priority_aging_s == 3.0 and new.deprecations == ()
    old = WorkerSettings.from_env({"LLMSERVE_PRIORITY_AGING_S": "7"})
    assert old.priority_aging_s == 7.0
    assert old.deprecations and "LLMSERVE_WORKER_PRIORITY_AGING_S" in old.deprecations[0]
    both = WorkerSettings.from_env({"LLMSERVE_PRIORITY_AGING_S": "7", "LLMSERVE_WORKER_PRIORITY_AGING_S": "3"})
    assert both.priority_aging_s == 3.0


def test_worker_settings_defaults_are_the_fields_defaults():
    settings = WorkerSettings.from_env({})
    for name in ("model_alias", "device", "dtype", "cpu_linear", "numerics", "engine", "max_running", "max_kv_tokens",
                 "prefill_chunk", "prompt_cache_mb", "drain_grace_s"):
        assert getattr(settings, name) == getattr(WorkerSettings, name), name
