"""The chaos soak's short version (`make soak` runs ten minutes): three minutes of mixed load on two
routers, two schedulers, three workers and a NATS cluster of three, with five faults drawn from a
fixed seed (a worker killed, a promote under load, a NATS server killed, a worker stopped for 10 s,
a router killed). The checked
history must show no lost request, no repeated or missing piece, every greedy answer equal to the
undisturbed one, and every error of a documented kind inside a fault's window."""

import pytest

from bench.soak import Soak

pytestmark = pytest.mark.e2e

SEED = 54


def test_three_minutes_of_faults_lose_nothing(model_store, smollm, tmp_path):
    report = Soak(3, SEED, tmp_path, model_store, print).run()
    kinds = [f["kind"] for f in report["faults"]]
    assert kinds == ["worker_kill", "promote", "nats_restart", "worker_stop", "router_kill"]
    assert report["problems"] == [], report["problems"]
    assert report["verdict"] == "pass"
    assert report["completed"] > 300 and report["greedy_checked"] > 200
    assert report["re_attaches"] >= 1 and report["migrations"] >= 1
    assert all(f["recovery_s"] is not None for f in report["faults"])
