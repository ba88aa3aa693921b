"""A client that gives up on a whole (non-streamed) answer frees the worker's slot within a second,
over REST and gRPC, as seen in the worker's own busy-slot gauge."""

import time

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmserve.v1 import common_pb2, inference_pb2, inference_pb2_grpc

pytestmark = pytest.mark.e2e

MODEL = "SmolLM2-135M-Instruct"


def busy_slots(cluster) -> float:
    text = httpx.get(f"http://127.0.0.1:{cluster.worker_metrics_ports[0]}/metrics", timeout=5).text
    family = next(f for f in text_string_to_metric_families(text) if f.name == "llmserve_worker_slots_busy")
    return family.samples[0].value


def seconds_until_idle(cluster, limit_s: float = 5.0) -> float:
    started = time.monotonic()
    while busy_slots(cluster) > 0:
        assert time.monotonic() - started < limit_s, "the worker kept the abandoned request"
        time.sleep(0.05)
    return time.monotonic() - started


def wait_busy(cluster, limit_s: float = 30.0) -> None:
    deadline = time.monotonic() + limit_s
    while busy_slots(cluster) == 0:
        assert time.monotonic() < deadline, "the request never started"
        time.sleep(0.05)


def test_rest_client_that_gives_up_frees_its_slot_within_a_second(real_cluster):
    seconds_until_idle(real_cluster, 60)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Write a long essay about rivers."}], "max_tokens": 2000,
            "ignore_eos": True}
    with httpx.Client(timeout=1.0) as http, pytest.raises(httpx.ReadTimeout):
        http.post(f"{real_cluster.http_url}/v1/chat/completions", json=body)
    assert seconds_until_idle(real_cluster) <= 1.0


def test_grpc_unary_call_that_is_abandoned_frees_its_slot_within_a_second(real_cluster):
    seconds_until_idle(real_cluster, 60)
    request = inference_pb2.GenerateRequest(
        messages=inference_pb2.ChatMessages(messages=[common_pb2.ChatMessage(role="user", content="Write a long essay about rivers.")]),
        sampling=common_pb2.SamplingParams(max_tokens=2000, ignore_eos=True),
    )
    with grpc.insecure_channel(real_cluster.grpc_addr) as channel:
        future = inference_pb2_grpc.InferenceStub(channel).Generate.future(request, timeout=30)
        wait_busy(real_cluster)
        time.sleep(1.0)  # the client waits a second, then gives up
        future.cancel()
    assert seconds_until_idle(real_cluster) <= 1.0
