"""`llmserve up` on free ports: starts its own NATS and Redis, publishes the model, serves, stops cleanly."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import psutil
import pytest

from llmserve.cli import infra
from llmserve.v1 import common_pb2, inference_pb2, inference_pb2_grpc

pytestmark = pytest.mark.e2e

QUESTION = inference_pb2.GenerateRequest(
    messages=inference_pb2.ChatMessages(messages=[common_pb2.ChatMessage(role="user", content="What is the capital of France?")]),
    sampling=common_pb2.SamplingParams(max_tokens=24),
)


def _up_env(nats_url: str, redis_url: str, model_store: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMSERVE_")}
    env.update(
        LLMSERVE_NATS_URL=nats_url,
        LLMSERVE_REDIS_URL=redis_url,
        LLMSERVE_MODEL_STORE=str(model_store),
        LLMSERVE_MONITOR_HTTP_ADDR=f"127.0.0.1:{infra.free_port()}",
        # Not the default 50052: that port lies in the kernel's ephemeral range, where any outgoing
        # connection of the suite may hold it.
        LLMSERVE_REGISTRY_GRPC_ADDR=f"127.0.0.1:{infra.free_port()}",
        LLMSERVE_WORKER_TORCH_THREADS="1",
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


def _start_up(env: dict[str, str], grpc_port: int, state_dir: Path, log: Path) -> subprocess.Popen:
    """`llmserve up`, returned once it printed that it is ready."""
    cli = Path(sys.executable).parent / "llmserve"
    proc = subprocess.Popen(
        [str(cli), "up", "--grpc", f"127.0.0.1:{grpc_port}", "--http", f"127.0.0.1:{infra.free_port()}", "--state-dir", str(state_dir), "--ready-timeout", "180"],
        env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 240
    while "llmserve is ready" not in log.read_text(errors="replace"):
        assert proc.poll() is None, log.read_text(errors="replace")
        assert time.monotonic() < deadline, log.read_text(errors="replace")
        time.sleep(0.1)
    return proc


def test_up_serves_and_stops(tmp_path, model_store, smollm):
    nats_port, redis_port, grpc_port = infra.free_port(), infra.free_port(), infra.free_port()
    env = _up_env(f"nats://127.0.0.1:{nats_port}", f"redis://127.0.0.1:{redis_port}/0", model_store)
    log = tmp_path / "up.log"
    proc = _start_up(env, grpc_port, tmp_path / "state", log)
    try:
        assert infra.reachable("127.0.0.1", nats_port) and infra.reachable("127.0.0.1", redis_port)
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            text = "".join(r.text for r in inference_pb2_grpc.InferenceStub(channel).GenerateStream(QUESTION, timeout=60))
        assert "Paris" in text

        # A crashed service is restarted, and the cluster serves again.
        scheduler = next(
            c for c in psutil.Process(proc.pid).children() if "llmserve.scheduler" in " ".join(c.cmdline())
        )
        scheduler.kill()
        deadline = time.monotonic() + 60
        while "restarted scheduler" not in log.read_text(errors="replace"):
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.25)
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = inference_pb2_grpc.InferenceStub(channel)
            text = ""
            while not text and time.monotonic() < deadline:
                try:
                    text = "".join(r.text for r in stub.GenerateStream(QUESTION, timeout=60))
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE  # until the new scheduler subscribed
                    time.sleep(0.25)
        assert "Paris" in text
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(60)
    assert code == 0, log.read_text(errors="replace")
    # Everything it started is gone, servers included.
    assert not infra.reachable("127.0.0.1", grpc_port)
    assert not infra.reachable("127.0.0.1", nats_port)
    assert not infra.reachable("127.0.0.1", redis_port)


def test_ready_means_servable_ten_times_back_to_back(tmp_path, model_store, nats_srv, redis_srv, smollm):
    """Ten starts and stops on one NATS and Redis: the request sent right after each "ready" is answered."""
    prefix = "u" + os.urandom(5).hex()
    env = _up_env(nats_srv.url, redis_srv.url, model_store, LLMSERVE_SUBJECT_PREFIX=prefix, LLMSERVE_KEY_PREFIX=f"{prefix}:")
    for run in range(10):
        grpc_port = infra.free_port()
        log = tmp_path / f"up-{run}.log"
        proc = _start_up(env, grpc_port, tmp_path / "state", log)
        try:
            with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                stub = inference_pb2_grpc.InferenceStub(channel)
                try:
                    text = "".join(r.text for r in stub.GenerateStream(QUESTION, timeout=60))
                except grpc.RpcError as exc:
                    pytest.fail(f"start {run + 1}: {exc.code().name} {exc.details()}")
            assert "Paris" in text, f"start {run + 1}: {text!r}"
        finally:
            proc.send_signal(signal.SIGINT)
            code = proc.wait(60)
        assert code == 0, log.read_text(errors="replace")
