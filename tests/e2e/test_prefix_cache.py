"""The prefix cache through the whole stack: a conversation's next turn restores the earlier turn's
blocks on the worker (its hit counters say so) and answers as a fresh prompt would."""

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.e2e

MODEL = "SmolLM2-135M-Instruct"
SYSTEM = "You answer questions about the city library. " + "It opens at nine, closes at six, and lends up to ten books at a time. " * 12


def counters(cluster) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{cluster.worker_metrics_ports[0]}/metrics", timeout=5).text
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name.startswith("llmserve_worker_prefix_cache")}


def test_the_next_turn_restores_the_conversation_so_far(real_cluster):
    client = openai.OpenAI(base_url=f"{real_cluster.http_url}/v1", api_key="unused", max_retries=0, timeout=120)
    first = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "When does the library open?"}]
    answer = client.chat.completions.create(model=MODEL, messages=first, temperature=0, max_tokens=16)
    assert answer.usage.prompt_tokens > 3 * 64
    before = counters(real_cluster)
    second = [*first, {"role": "assistant", "content": answer.choices[0].message.content}, {"role": "user", "content": "How many books?"}]
    client.chat.completions.create(model=MODEL, messages=second, temperature=0, max_tokens=16)
    after = counters(real_cluster)
    hits = after["llmserve_worker_prefix_cache_hit_tokens_total"] - before["llmserve_worker_prefix_cache_hit_tokens_total"]
    assert hits >= (answer.usage.prompt_tokens // 64 - 1) * 64
    assert after["llmserve_worker_prefix_cache_bytes"] > 0
