"""The REST bridge with real clients: the official openai package, raw HTTP, and a headless browser."""

import asyncio
import contextlib
import json

import httpx
import nats
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmserve.v1 import common_pb2, events_pb2
from tests.helpers.registry import register

pytestmark = pytest.mark.e2e

MODEL = "SmolLM2-135M-Instruct"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def client(real_cluster):
    return openai.OpenAI(base_url=f"{real_cluster.http_url}/v1", api_key="unused", max_retries=0, timeout=60)


def test_chat_completion(client):
    r = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=32)
    assert "Paris" in r.choices[0].message.content
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens > 0
    assert r.object == "chat.completion" and r.model == MODEL


def test_chat_completion_streamed_with_usage(client):
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=QUESTION, temperature=0, max_tokens=32, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_completion_streamed_and_not(client):
    whole = client.completions.create(model=MODEL, prompt="The capital of France is", temperature=0, max_tokens=6)
    assert "Paris" in whole.choices[0].text
    assert whole.choices[0].finish_reason == "length" and whole.usage.completion_tokens == 6
    streamed = list(client.completions.create(model=MODEL, prompt="The capital of France is", temperature=0, max_tokens=6, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == whole.choices[0].text


def test_stop_sequence_and_seed(client):
    r = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=32, stop=["Paris"])
    assert "Paris" not in r.choices[0].message.content and r.choices[0].finish_reason == "stop"
    kwargs = dict(model=MODEL, messages=QUESTION, temperature=1.0, top_p=0.95, max_tokens=16, seed=7, extra_body={"top_k": 40})
    a, b = (client.chat.completions.create(**kwargs).choices[0].message.content for _ in range(2))
    assert a == b


def test_models_lists_the_model(client):
    assert [m.id for m in client.models.list().data] == [MODEL]


@pytest.mark.parametrize(
    "kwargs, error, param",
    [
        ({"model": "no-such-model"}, openai.NotFoundError, None),
        ({"temperature": 5}, openai.BadRequestError, "temperature"),
        ({"n": 0}, openai.BadRequestError, "n"),
        ({"max_tokens": 100000}, openai.BadRequestError, "max_tokens"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, openai.BadRequestError, "messages"),
        ({"extra_body": {"priority": "urgent"}}, openai.BadRequestError, "priority"),
        ({"response_format": {"type": "json_schema"}}, openai.BadRequestError, "response_format"),
        ({"logprobs": True, "top_logprobs": 30}, openai.BadRequestError, "top_logprobs"),
        ({"presence_penalty": 3}, openai.BadRequestError, "presence_penalty"),
        ({"logit_bias": {"5": 200}}, openai.BadRequestError, "logit_bias"),
        ({"logit_bias": {"99999999": 1}}, openai.BadRequestError, None),
        ({"extra_body": {"frobnicate": 1}}, openai.BadRequestError, "frobnicate"),
        ({"max_tokens": "8"}, openai.BadRequestError, "max_tokens"),
    ],
)
def test_errors_raise_the_right_exception(client, kwargs, error, param):
    args = {"model": MODEL, "messages": QUESTION, "max_tokens": 8, **kwargs}
    with pytest.raises(error) as err:
        client.chat.completions.create(**args)
    body = err.value.body
    assert body["message"] and body["param"] == param


def test_malformed_body_is_a_400_naming_the_field(real_cluster):
    r = httpx.post(f"{real_cluster.http_url}/v1/chat/completions", json={"model": MODEL}, timeout=10)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "messages"
    r = httpx.post(f"{real_cluster.http_url}/v1/chat/completions", content=b"{not json", timeout=10)
    assert r.status_code == 400


def test_no_live_worker_is_503_and_passed_deadline_is_504(real_cluster, client, tiny):
    register(real_cluster.redis_url, real_cluster.prefix, tiny)  # published, but no worker serves it
    with pytest.raises(openai.InternalServerError) as err:
        client.chat.completions.create(model=tiny.name, messages=QUESTION, max_tokens=4)
    assert err.value.status_code == 503
    r = httpx.post(
        f"{real_cluster.http_url}/v1/chat/completions",
        json={"model": MODEL, "messages": QUESTION},
        headers={"X-Request-Timeout": "0.000001"},
        timeout=10,
    )
    assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded"


def test_health_readiness_metrics_and_openapi(real_cluster, client):
    client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=4)
    base = real_cluster.http_url
    assert httpx.get(f"{base}/healthz").status_code == 200
    assert httpx.get(f"{base}/readyz").json() == {"ready": True, "reason": ""}
    families = {f.name: f for f in text_string_to_metric_families(httpx.get(f"{base}/metrics").text)}
    assert {"llmserve_router_requests", "llmserve_router_time_to_first_token_seconds", "llmserve_router_generated_tokens"} <= families.keys()
    # Per-model series, as dashboards built for other servers expect them.
    prompt_tokens = {s.labels["model"]: s.value for s in families["llmserve_router_prompt_tokens"].samples if s.name.endswith("_total")}
    assert prompt_tokens.get(MODEL, 0) > 0
    assert any(s.labels.get("model") == MODEL for s in families["llmserve_router_time_to_first_token_seconds"].samples)
    spec = httpx.get(f"{base}/openapi.json").json()
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models"} <= spec["paths"].keys()
    docs = httpx.get(f"{base}/docs")
    assert docs.status_code == 200 and "/static/swagger/swagger-ui-bundle.js" in docs.text
    # Served by the router itself: the docs work without reaching a CDN.
    assert httpx.get(f"{base}/static/swagger/swagger-ui-bundle.js").status_code == 200


@contextlib.asynccontextmanager
async def final_chunk_of(cluster, rid: str):
    """A future of the final chunk the worker publishes for request `rid`, heard on NATS directly."""
    nc = await nats.connect(cluster.nats_url)
    final = asyncio.get_running_loop().create_future()

    async def on_chunk(msg):
        chunk = events_pb2.TokenChunk.FromString(msg.data)
        if chunk.final and not final.done():
            final.set_result(chunk)

    await nc.subscribe(f"{cluster.prefix}.tokens.{rid}", cb=on_chunk)
    await nc.flush()
    try:
        yield final
    finally:
        await nc.close()


async def test_disconnect_mid_stream_cancels_the_job(real_cluster):
    rid = "rest-disconnect-1"
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Write a long essay about rivers."}], "max_tokens": 2000, "stream": True}
    async with final_chunk_of(real_cluster, rid) as final:
        async with httpx.AsyncClient(timeout=60) as http:
            async with http.stream("POST", f"{real_cluster.http_url}/v1/chat/completions", json=body, headers={"x-request-id": rid}) as r:
                assert r.status_code == 200
                seen = 0
                async for line in r.aiter_lines():
                    if line.startswith("data: {"):
                        json.loads(line[6:])
                        seen += 1
                    if seen == 4:
                        break
        # Closing the response closed the connection; the worker must end the job within a second.
        chunk = await asyncio.wait_for(final, 1.0)
    assert chunk.finish_reason == common_pb2.FINISH_REASON_CANCELLED


async def test_a_client_that_gives_up_on_a_whole_answer_frees_the_worker(real_cluster):
    """Not streamed: the client's timeout closes the connection, and the job stops at once."""
    rid = "rest-gave-up-1"
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Write a long essay about rivers."}], "max_tokens": 2000,
            "ignore_eos": True}
    async with final_chunk_of(real_cluster, rid) as final:
        async with httpx.AsyncClient(timeout=1.5) as http:
            with pytest.raises(httpx.ReadTimeout):
                await http.post(f"{real_cluster.http_url}/v1/chat/completions", json=body, headers={"x-request-id": rid})
        chunk = await asyncio.wait_for(final, 1.5)
    assert chunk.finish_reason == common_pb2.FINISH_REASON_CANCELLED
    assert chunk.usage.completion_tokens < 2000


async def test_a_cancel_that_comes_before_its_job_runs_still_stops_it(real_cluster):
    """A router's cancel may come while the job still waits in the queue, or before the worker's engine
    has it: the worker remembers it, and the job ends at once, cancelled, instead of running for nobody."""
    rid = "rest-cancelled-before-start-1"
    nc = await nats.connect(real_cluster.nats_url)
    try:
        cancel = events_pb2.Cancel(request_id=rid, reason="client_gone", max_attempt=0)
        await nc.publish(f"{real_cluster.prefix}.cancel.{rid}", cancel.SerializeToString())
        await nc.flush()
    finally:
        await nc.close()
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Write a long essay about rivers."}], "max_tokens": 2000,
            "ignore_eos": True}
    async with final_chunk_of(real_cluster, rid) as final, httpx.AsyncClient(timeout=60) as http:
        reply = await http.post(f"{real_cluster.http_url}/v1/chat/completions", json=body, headers={"x-request-id": rid})
        chunk = await asyncio.wait_for(final, 10)
    assert reply.status_code == 200, reply.text
    assert chunk.finish_reason == common_pb2.FINISH_REASON_CANCELLED
    assert chunk.usage.completion_tokens == 0


def test_playground_streams_an_answer(real_cluster):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.helpers.browser import chrome, ensure_chromium
    from tests.helpers.system_tools import missing

    found = ensure_chromium()
    if isinstance(found, str):
        missing(found)
    driver = chrome(*found)
    try:
        driver.get(f"{real_cluster.http_url}/")
        WebDriverWait(driver, 15).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#model option"))
        driver.find_element(By.ID, "message").send_keys("What is the capital of France?")
        driver.find_element(By.ID, "send").click()
        # Text appears while the answer streams, then the stats line says it is done.
        WebDriverWait(driver, 60).until(lambda d: "Paris" in d.find_element(By.ID, "answer").text)
        WebDriverWait(driver, 60).until(lambda d: "done" in d.find_element(By.ID, "stats").text)
        stats = driver.find_element(By.ID, "stats").text
        assert "time to first token" in stats and "tokens/s" in stats
    finally:
        driver.quit()
