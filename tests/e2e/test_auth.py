"""API keys end to end (LLMSERVE_AUTH=required): codes, revocation, expiry, roles, tenancy from the key,
per-key limits, the openai SDK, one writer for the registry, and no secret in any log."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import time
import uuid

import grpc
import httpx
import nats
import pytest
import redis

from llmserve.common.registry_client import RegistryClient
from llmserve.v1 import common_pb2, events_pb2, inference_pb2, inference_pb2_grpc, registry_pb2
from tests.helpers.cluster import Cluster
from tests.helpers.registry import register

pytestmark = pytest.mark.e2e

CHAT = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4, "temperature": 0}


@pytest.fixture(scope="module")
def cluster(nats_srv, redis_srv, model_store, smollm, tmp_path_factory):
    prefix = "a" + uuid.uuid4().hex[:10]
    register(redis_srv.url, prefix, smollm)
    c = Cluster(nats_srv.url, redis_srv.url, prefix, model_store, tmp_path_factory.mktemp("auth-logs"))
    c.extra_env.update(LLMSERVE_AUTH="required")
    try:
        yield c.start()
    finally:
        c.stop()


@pytest.fixture(scope="module")
def admin_key(cluster, tmp_path_factory) -> str:
    """The first admin key, stored by the registry's bootstrap command from a secret file."""
    secret = cli(cluster, "keys", "generate").strip()
    path = tmp_path_factory.mktemp("secret") / "admin_key"
    path.write_text(secret)
    out = subprocess.run(
        [sys.executable, "-m", "llmserve.registry", "bootstrap-admin-key", "--secret-file", str(path), "--name", "ops-admin"],
        env=cluster.env, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    SECRETS.append(secret)
    return secret


SECRETS: list[str] = []


def cli(cluster: Cluster, *args: str, key: str = "", check: bool = True) -> str:
    env = {**cluster.env, "LLMSERVE_API_KEY": key}
    out = subprocess.run([sys.executable, "-m", "llmserve.cli", *args], env=env, capture_output=True, text=True, timeout=60)
    if check:
        assert out.returncode == 0, out.stderr
    return out.stdout if check else out.stdout + out.stderr


def create_key(cluster: Cluster, admin: str, *args: str) -> str:
    secret = cli(cluster, "keys", "create", *args, key=admin).strip().splitlines()[-1]
    assert secret.startswith("lsk_")
    SECRETS.append(secret)
    return secret


def chat(cluster: Cluster, key: str | None, **headers: str) -> httpx.Response:
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return httpx.post(f"{cluster.http_url}/v1/chat/completions", json=CHAT, headers=headers, timeout=60)


async def grpc_generate(cluster: Cluster, key: str | None, request: inference_pb2.GenerateRequest | None = None, **metadata: str):
    if key is not None:
        metadata["authorization"] = f"Bearer {key}"
    request = request or inference_pb2.GenerateRequest(prompt="Hi", sampling=common_pb2.SamplingParams(max_tokens=3))
    async with grpc.aio.insecure_channel(cluster.grpc_addr) as channel:
        return await inference_pb2_grpc.InferenceStub(channel).Generate(request, metadata=tuple(metadata.items()), timeout=60)


async def grpc_code(call) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_missing_bad_and_malformed_keys_are_401_and_probes_stay_open(cluster, admin_key):
    user = create_key(cluster, admin_key, "--tenant", "acme", "--name", "acme-app")
    assert chat(cluster, user).status_code == 200
    for headers in ({}, {"Authorization": ""}, {"Authorization": "Bearer"}, {"Authorization": "Basic abc"},
                    {"Authorization": "Bearer " + "x" * 10_000}, {"Authorization": "Bearer lsk_000000000000_" + "A" * 43},
                    {"Authorization": "Bearer " + user[:-1] + ("B" if user[-1] != "B" else "C")},
                    {"Authorization": "Bearer clé-non-ascii".encode()}):
        r = httpx.post(f"{cluster.http_url}/v1/chat/completions", json=CHAT, headers=headers, timeout=30)
        assert r.status_code == 401, (headers.keys(), r.text)
        assert r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{cluster.http_url}/v1/models", timeout=10).status_code == 401
    for path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(f"{cluster.http_url}{path}", timeout=10).status_code == 200, path
    assert asyncio.run(grpc_code(grpc_generate(cluster, None))) == grpc.StatusCode.UNAUTHENTICATED
    assert asyncio.run(grpc_code(grpc_generate(cluster, "nonsense"))) == grpc.StatusCode.UNAUTHENTICATED
    assert asyncio.run(grpc_generate(cluster, user)).text


def test_a_revoked_key_is_refused_within_two_seconds_and_an_expired_one_at_its_time(cluster, admin_key):
    user = create_key(cluster, admin_key, "--tenant", "acme", "--name", "to-revoke")
    assert chat(cluster, user).status_code == 200  # now cached by the router
    key_id = user.split("_")[1]
    cli(cluster, "keys", "revoke", key_id, key=admin_key)
    took = cluster.until(lambda: chat(cluster, user).status_code == 401, 10, "the revoked key refused")
    assert took <= 2.0, f"a revoked key was still served {took:.2f} s after `keys revoke` returned"
    assert "revoked" in chat(cluster, user).json()["error"]["message"]
    assert asyncio.run(grpc_code(grpc_generate(cluster, user))) == grpc.StatusCode.UNAUTHENTICATED
    short = create_key(cluster, admin_key, "--tenant", "acme", "--expires", "2s")
    cluster.until(lambda: chat(cluster, short).status_code == 401, 15, "the expired key refused")
    assert "expired" in chat(cluster, short).json()["error"]["message"]
    listed = cli(cluster, "keys", "list", "--all", key=admin_key)
    assert key_id in listed and "revoked" in listed and "lsk_" not in listed


def test_an_inference_key_may_not_change_the_registry(cluster, admin_key):
    user = create_key(cluster, admin_key, "--tenant", "acme")
    r = httpx.post(f"{cluster.http_url}/admin/v1/models/{cluster.default_model}/rollback", headers={"Authorization": f"Bearer {user}"}, timeout=30)
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"

    async def registry_codes():
        anonymous, inference = RegistryClient(cluster.registry_addr), RegistryClient.with_key(cluster.registry_addr, user)
        promote = registry_pb2.PromoteRequest(name=cluster.default_model, version=1)
        codes = []
        for client in (anonymous, inference):
            try:
                await client.call("Promote", promote)
                codes.append("ok")
            except Exception as exc:  # noqa: BLE001 - the code is what is checked
                codes.append(exc.code)
            await client.close()
        return codes

    assert asyncio.run(registry_codes()) == [events_pb2.ERROR_CODE_UNAUTHENTICATED, events_pb2.ERROR_CODE_PERMISSION_DENIED]
    assert "needs an admin key" in cli(cluster, "models", "rollback", cluster.default_model, key=user, check=False)


async def _jobs_seen(cluster: Cluster, send) -> list:
    """The jobs the scheduler queued while `send()` ran, read off NATS."""
    nc = await nats.connect(cluster.nats_url)
    seen = []

    async def on_job(msg) -> None:
        seen.append(events_pb2.Job.FromString(msg.data))

    sub = await nc.subscribe(f"{cluster.prefix}.jobs.>", cb=on_job)
    try:
        await send()
        await nc.flush()
    finally:
        await sub.unsubscribe()
        await nc.close()
    return seen


def test_the_keys_tenant_and_priority_cap_apply_whatever_the_request_says(cluster, admin_key):
    capped = create_key(cluster, admin_key, "--tenant", "acme-low", "--max-priority", "low")
    request = inference_pb2.GenerateRequest(
        request_id="cap-" + uuid.uuid4().hex[:8], prompt="Hi", priority=common_pb2.PRIORITY_CRITICAL,
        sampling=common_pb2.SamplingParams(max_tokens=2),
    )
    jobs = asyncio.run(_jobs_seen(cluster, lambda: grpc_generate(cluster, capped, request, **{"x-tenant": "someone-else"})))
    job = next(j for j in jobs if j.request_id == request.request_id)
    assert job.tenant == "acme-low" and job.priority == common_pb2.PRIORITY_LOW


def test_a_key_over_its_limits_gets_429_with_retry_after_while_another_is_served(cluster, admin_key):
    per_minute = create_key(cluster, admin_key, "--tenant", "rpm-tenant", "--requests-per-minute", "2")
    other = create_key(cluster, admin_key, "--tenant", "other-tenant")
    assert [chat(cluster, per_minute).status_code for _ in range(2)] == [200, 200]
    refused = chat(cluster, per_minute)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "resource_exhausted"
    # Two requests spent the minute's allowance: the next unit frees 60 / 2 = 30 s after the first.
    assert 28 <= int(refused.headers["Retry-After"]) <= 30, refused.headers["Retry-After"]
    assert chat(cluster, other).status_code == 200
    assert asyncio.run(grpc_code(grpc_generate(cluster, per_minute))) == grpc.StatusCode.RESOURCE_EXHAUSTED

    tokens = create_key(cluster, admin_key, "--tenant", "tpm-tenant", "--tokens-per-minute", "20")
    first = chat(cluster, tokens)
    assert first.status_code == 200
    used = first.json()["usage"]["total_tokens"]
    assert used > 20  # the chat template alone is longer
    charged_at = time.time()
    refused = chat(cluster, tokens)
    assert refused.status_code == 429, refused.text
    # The bucket is `used` tokens of 3 s each ahead; the next token is free when it is back to a minute.
    expected = used * 3.0 + 3.0 - 60.0 - (time.time() - charged_at)
    assert abs(int(refused.headers["Retry-After"]) - math.ceil(expected)) <= 1, (refused.headers["Retry-After"], expected)
    assert chat(cluster, other).status_code == 200
    metrics = httpx.get(f"{cluster.http_url}/metrics", timeout=10).text
    assert 'llmserve_router_rate_limited_total{limit="requests_per_minute",tenant="rpm-tenant"}' in metrics
    assert 'llmserve_router_rate_limited_total{limit="tokens_per_minute",tenant="tpm-tenant"}' in metrics


def test_the_openai_sdk_works_with_a_real_key(cluster, admin_key):
    import openai

    user = create_key(cluster, admin_key, "--tenant", "sdk")
    client = openai.OpenAI(api_key=user, base_url=f"{cluster.http_url}/v1", max_retries=0)
    answer = client.chat.completions.create(model=cluster.default_model, **CHAT)
    assert answer.choices[0].message.content
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(api_key="sk-wrong", base_url=f"{cluster.http_url}/v1", max_retries=0).models.list()


def test_a_promote_through_cli_rest_and_grpc_each_leave_one_audit_entry_by_the_keys_name(cluster, admin_key):
    admin = create_key(cluster, admin_key, "--tenant", "operators", "--role", "admin", "--name", "release-bot")
    model = cluster.default_model
    cli(cluster, "models", "promote", model, "1", key=admin)
    r = httpx.post(f"{cluster.http_url}/admin/v1/models/{model}/promote", json={"version": 1}, headers={"Authorization": f"Bearer {admin}"}, timeout=30)
    assert r.status_code == 200, r.text

    async def promote_over_grpc():
        client = RegistryClient.with_key(cluster.registry_addr, admin)
        await client.call("Promote", registry_pb2.PromoteRequest(name=model, version=1, actor="someone-else"))
        listed = await client.call("ListAudit", registry_pb2.ListAuditRequest(name=model, limit=3))
        await client.close()
        return listed.entries

    entries = asyncio.run(promote_over_grpc())
    assert [(e.action, e.actor) for e in entries] == [("promote", "release-bot")] * 3


def test_the_playground_asks_for_a_key_and_streams_with_it(cluster, admin_key):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.helpers.browser import chrome, ensure_chromium
    from tests.helpers.system_tools import missing

    found = ensure_chromium()
    if isinstance(found, str):
        missing(found)
    user = create_key(cluster, admin_key, "--tenant", "playground")
    driver = chrome(*found)
    try:
        driver.get(f"{cluster.http_url}/")
        WebDriverWait(driver, 15).until(lambda d: d.find_element(By.ID, "key_row").is_displayed())
        WebDriverWait(driver, 15).until(lambda d: "API key" in d.find_element(By.ID, "stats").text)
        field = driver.find_element(By.ID, "api_key")
        field.send_keys(user)
        driver.find_element(By.ID, "message").click()  # leaving the field stores the key and lists the models
        WebDriverWait(driver, 15).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#model option"))
        driver.find_element(By.ID, "message").send_keys("What is the capital of France?")
        driver.find_element(By.ID, "send").click()
        WebDriverWait(driver, 60).until(lambda d: "done" in d.find_element(By.ID, "stats").text)
        assert driver.find_element(By.ID, "answer").text
    finally:
        driver.quit()


def test_after_redis_lost_the_registry_every_write_path_is_refused_by_the_guard(cluster, admin_key, redis_srv):
    # Run last in this module: it leaves the registry lost. Redis "loses its data" for this cluster's prefix.
    client = redis.Redis.from_url(redis_srv.url)
    client.delete(*client.keys(f"{cluster.prefix}:*"))
    client.close()
    # Keys went with the data: the bootstrap command brings the admin key back (it writes no version).
    path = cluster.log_dir / "admin_key"
    path.write_text(admin_key)
    subprocess.run([sys.executable, "-m", "llmserve.registry", "bootstrap-admin-key", "--secret-file", str(path)],
                   env=cluster.env, check=True, capture_output=True, timeout=60)
    path.unlink()
    model = cluster.default_model
    outputs = [
        cli(cluster, "models", "promote", model, "1", key=admin_key, check=False),
        cli(cluster, "models", "fallback", model, "--to", "other", key=admin_key, check=False),
        cli(cluster, "tenants", "set", "t", "--max-active", "3", key=admin_key, check=False),
        cli(cluster, "keys", "create", "--tenant", "t", key=admin_key, check=False),
    ]
    for out in outputs:
        assert "llmserve models import" in out, out
    r = httpx.post(f"{cluster.http_url}/admin/v1/models/{model}/rollback", headers={"Authorization": f"Bearer {admin_key}"}, timeout=30)
    assert r.status_code == 409 and "Redis restarted without its data" in r.json()["error"]["message"]


def test_no_secret_reaches_any_log(cluster, admin_key):
    assert SECRETS
    for log in cluster.log_dir.glob("*.log"):
        text = log.read_text(errors="replace")
        for secret in SECRETS:
            assert secret not in text, f"{log.name} holds a secret"
            # The random part is all after "lsk_<id>_" (it may itself hold "_").
            assert secret.split("_", 2)[2] not in text, f"{log.name} holds a secret's random part"
