"""The chaos soak's short version (`make soak` runs ten minutes): three minutes of mixed load on two
routers, two schedulers and three workers, with five faults drawn from a fixed seed (a router killed,
a worker drained, NATS restarted, a worker stopped for 10 s, a promote under load). The checked
history must show no lost request, no repeated or missing piece, every greedy answer equal to the
undisturbed one, and every error of a documented kind inside a fault's window."""

import pytest

from bench.soak import Soak

pytestmark = pytest.mark.e2e

SEED = 10


def test_three_minutes_of_faults_lose_nothing(model_store, smollm, tmp_path):
    report = Soak(3, SEED, tmp_path, model_store, print).run()
    kinds = [f["kind"] for f in report["faults"]]
    assert kinds == ["router_kill", "worker_term", "nats_restart", "worker_stop", "promote"]
    assert report["problems"] == [], report["problems"]
    assert report["verdict"] == "pass"
    assert report["completed"] > 300 and report["greedy_checked"] > 200
    assert report["re_attaches"] >= 1 and report["migrations"] >= 1
    assert all(f["recovery_s"] is not None for f in report["faults"])
