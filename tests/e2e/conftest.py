import uuid

import pytest

from tests.helpers.cluster import Cluster
from tests.helpers.registry import register


@pytest.fixture(scope="session")
def real_cluster(nats_srv, redis_srv, model_store, smollm, tmp_path_factory):
    """Router, scheduler, monitor and one worker serving the real SmolLM2-135M-Instruct, shared by the e2e tests."""
    prefix = "e" + uuid.uuid4().hex[:10]
    register(redis_srv.url, prefix, smollm)
    cluster = Cluster(nats_srv.url, redis_srv.url, prefix, model_store, tmp_path_factory.mktemp("logs"))
    cluster.extra_env["LLMSERVE_MONITOR_PROBE_INTERVAL_S"] = "5"
    # The status page's charts get a point a second, so a test sees them fill quickly.
    cluster.extra_env["LLMSERVE_MONITOR_HISTORY_STEP_S"] = "1"
    try:
        yield cluster.start()
    finally:
        cluster.stop()
