"""Logprobs through the official openai SDK against transformers: a worker in float numerics, greedy,
the first 8 tokens, each logprob within 1e-3 of log_softmax over transformers' logits."""

import uuid

import openai
import pytest
import torch

from tests.helpers.cluster import Cluster
from tests.helpers.registry import register

pytestmark = pytest.mark.e2e

MODEL = "SmolLM2-135M-Instruct"
MESSAGES = [{"role": "user", "content": "Name three rivers in Europe."}]


@pytest.fixture(scope="module")
def float_cluster(nats_srv, redis_srv, model_store, smollm, tmp_path_factory):
    prefix = "lp" + uuid.uuid4().hex[:10]
    register(redis_srv.url, prefix, smollm)
    c = Cluster(nats_srv.url, redis_srv.url, prefix, model_store, tmp_path_factory.mktemp("logprob-logs"))
    c.extra_env["LLMSERVE_MONITOR_PROBE_INTERVAL_S"] = "0"
    try:
        yield c.start(LLMSERVE_WORKER_NUMERICS="float")
    finally:
        c.stop()


def test_logprobs_match_transformers_within_1e_3(float_cluster, loaded_smollm):
    client = openai.OpenAI(base_url=f"{float_cluster.http_url}/v1", api_key="unused", max_retries=0, timeout=60)
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=0, max_tokens=8, logprobs=True, top_logprobs=5)
    content = r.choices[0].logprobs.content
    assert len(content) == 8
    tok = loaded_smollm.tokenizer
    text = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    prompt = tok(text, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        generated = loaded_smollm.model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False)[0, len(prompt):].tolist()
        logits = loaded_smollm.model(torch.tensor([prompt + generated])).logits[0, len(prompt) - 1 : len(prompt) - 1 + 8]
        expected = torch.log_softmax(logits.float(), dim=-1)
    assert [e.token for e in content] == [tok.decode([t]) for t in generated]
    for k, entry in enumerate(content):
        assert entry.logprob == pytest.approx(float(expected[k, generated[k]]), abs=1e-3)
        top = torch.topk(expected[k], 5)
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx(top.values.tolist(), abs=1e-3)
