"""OpenAI's sampling controls end to end: logprobs (chat and completions, streamed and not, and gRPC),
presence and frequency penalties, logit_bias and min_tokens."""

import grpc
import openai
import pytest

from llmserve.v1 import common_pb2, inference_pb2, inference_pb2_grpc

pytestmark = pytest.mark.e2e

MODEL = "SmolLM2-135M-Instruct"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def client(real_cluster):
    return openai.OpenAI(base_url=f"{real_cluster.http_url}/v1", api_key="unused", max_retries=0, timeout=60)


def test_chat_logprobs_one_per_token_with_the_chosen_token_on_top(client):
    r = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=12, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        # Greedy: the chosen token is the most likely one.
        assert entry.top_logprobs[0].token == entry.token and entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)
        assert bytes(entry.bytes).decode("utf-8", errors="replace") == entry.token
    assert "".join(e.token for e in content).startswith(r.choices[0].message.content[:10])
    plain = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=12)
    assert plain.choices[0].logprobs is None and plain.choices[0].message.content == r.choices[0].message.content


def test_streamed_chat_logprobs_cover_every_token_once(client):
    whole = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=12, logprobs=True)
    chunks = list(client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=12, logprobs=True, stream=True))
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [(e.token, round(e.logprob, 4)) for e in streamed] == [(e.token, round(e.logprob, 4)) for e in whole.choices[0].logprobs.content]


def test_completion_logprobs_in_the_legacy_shape(client):
    r = client.completions.create(model=MODEL, prompt="The capital of France is", temperature=0, max_tokens=6, logprobs=2)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    assert all(len(top) <= 2 and top for top in lp.top_logprobs)
    assert lp.text_offset[0] == 0 and lp.text_offset[1] == len(lp.tokens[0])
    streamed = list(client.completions.create(model=MODEL, prompt="The capital of France is", temperature=0, max_tokens=6, logprobs=2, stream=True))
    assert [t for c in streamed if c.choices[0].logprobs for t in c.choices[0].logprobs.tokens] == lp.tokens


def test_logit_bias_forces_and_forbids_tokens(client, smollm, model_store):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_store / smollm.path)
    (banana,) = tokenizer(" banana", add_special_tokens=False)["input_ids"]
    forced = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=3, logit_bias={str(banana): 100})
    assert forced.choices[0].message.content.strip() == "banana banana banana"
    plain = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=4, logprobs=True)
    first = plain.choices[0].logprobs.content[0].token
    (first_id,) = tokenizer(first, add_special_tokens=False)["input_ids"]
    banned = client.chat.completions.create(
        model=MODEL, messages=QUESTION, temperature=0, max_tokens=4, logprobs=True, logit_bias={str(first_id): -100}
    )
    assert banned.choices[0].logprobs.content[0].token != first


def test_penalties_change_a_repetitive_answer_and_min_tokens_holds_off_the_end(client):
    prompt = "a b a b a b a b a b"
    plain = client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=12).choices[0].text
    penalized = client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=12, frequency_penalty=2.0, presence_penalty=1.0)
    # Greedy repeats the pattern; penalized, it breaks away after a repeat or two.
    assert plain.count(" a b") >= 5
    assert penalized.choices[0].text.count("a b") <= 2
    short = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Thanks!"}], temperature=0, max_tokens=40)
    assert short.choices[0].finish_reason == "stop" and short.usage.completion_tokens < 10
    held = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Thanks!"}], temperature=0, max_tokens=40, extra_body={"min_tokens": 10}
    )
    assert held.usage.completion_tokens >= 10


def test_grpc_logprobs_unary_and_streamed(real_cluster):
    sampling = common_pb2.SamplingParams(max_tokens=8, logprobs=True, top_logprobs=2)
    request = inference_pb2.GenerateRequest(
        messages=inference_pb2.ChatMessages(messages=[common_pb2.ChatMessage(role="user", content="Name a colour.")]), sampling=sampling
    )
    with grpc.insecure_channel(real_cluster.grpc_addr) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        whole = stub.Generate(request, timeout=60)
        streamed = list(stub.GenerateStream(request, timeout=60))
        assert len(whole.logprobs) == whole.usage.completion_tokens
        assert all(len(e.top_logprobs) == 2 and e.logprob <= 0 for e in whole.logprobs)
        assert [e.token_id for r in streamed for e in r.logprobs] == [e.token_id for e in whole.logprobs]
        bad = common_pb2.SamplingParams(max_tokens=8, top_logprobs=2)
        with pytest.raises(grpc.RpcError) as err:
            stub.Generate(inference_pb2.GenerateRequest(prompt="Hi", sampling=bad), timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "top_logprobs" in err.value.details()


def test_n_choices_with_a_seed_are_reproducible(client):
    kwargs = dict(model=MODEL, messages=QUESTION, temperature=1.0, seed=11, max_tokens=16, n=3)
    first = client.chat.completions.create(**kwargs)
    again = client.chat.completions.create(**kwargs)
    assert [c.index for c in first.choices] == [0, 1, 2]
    texts = [c.message.content for c in first.choices]
    assert texts == [c.message.content for c in again.choices]
    assert len(set(texts)) > 1  # each choice draws from its own seed (seed + index)
    one = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=1.0, seed=11, max_tokens=16)
    assert one.choices[0].message.content == texts[0]
    assert first.usage.prompt_tokens == one.usage.prompt_tokens
    assert first.usage.completion_tokens > one.usage.completion_tokens  # every choice's tokens, the prompt once


def test_n_choices_stream_interleaved_with_their_indexes(client):
    greedy = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=12).choices[0].message.content
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=QUESTION, temperature=0, max_tokens=12, n=2, stream=True, stream_options={"include_usage": True}
    ))
    texts = {0: "", 1: ""}
    finishes = {}
    for c in chunks:
        for choice in c.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert texts == {0: greedy, 1: greedy} and set(finishes) == {0, 1}
    single = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=12).usage
    assert chunks[-1].usage.completion_tokens == 2 * single.completion_tokens
    assert chunks[-1].usage.prompt_tokens == single.prompt_tokens
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4, n=17)
    assert err.value.body["param"] == "n"
