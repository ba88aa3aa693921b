"""Tokenize, detokenize, one model's record and the model's metadata, over REST and gRPC."""

import grpc
import httpx
import openai
import pytest

from llmserve.v1 import common_pb2, inference_pb2, inference_pb2_grpc

pytestmark = pytest.mark.e2e

MODEL = "SmolLM2-135M-Instruct"
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def post(cluster, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{cluster.http_url}{path}", json=body, timeout=30)


def test_tokenized_messages_are_what_a_generation_counts(real_cluster):
    tokens = post(real_cluster, "/tokenize", {"model": MODEL, "messages": MESSAGES}).json()
    client = openai.OpenAI(base_url=f"{real_cluster.http_url}/v1", api_key="unused", max_retries=0)
    answer = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1)
    assert tokens["count"] == len(tokens["tokens"]) == answer.usage.prompt_tokens
    assert tokens["max_model_len"] >= 2048
    text = post(real_cluster, "/detokenize", {"model": MODEL, "tokens": tokens["tokens"]}).json()["prompt"]
    assert "What is the capital of France?" in text and text.rstrip().endswith("assistant")


def test_a_prompt_round_trips(real_cluster):
    tokens = post(real_cluster, "/tokenize", {"prompt": "Hello, world!"}).json()["tokens"]
    assert post(real_cluster, "/detokenize", {"tokens": tokens}).json()["prompt"] == "Hello, world!"


@pytest.mark.parametrize(
    "path, body, status",
    [
        ("/tokenize", {"model": MODEL}, 400),
        ("/tokenize", {"model": MODEL, "prompt": "x", "messages": MESSAGES}, 400),
        ("/tokenize", {"model": MODEL, "prompt": "x", "frobnicate": 1}, 400),
        ("/tokenize", {"model": "no-such-model", "prompt": "x"}, 404),
        ("/detokenize", {"model": MODEL, "tokens": [10**9]}, 400),
        ("/detokenize", {"model": MODEL, "tokens": ["1"]}, 400),
    ],
)
def test_bad_tokenizer_calls_are_refused_clearly(real_cluster, path, body, status):
    r = post(real_cluster, path, body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["message"]


def test_one_model_and_the_version(real_cluster):
    client = openai.OpenAI(base_url=f"{real_cluster.http_url}/v1", api_key="unused", max_retries=0)
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
    version = httpx.get(f"{real_cluster.http_url}/version", timeout=10).json()["version"]
    assert version and version != "unknown"


def test_grpc_tokenize_detokenize_and_model_info(real_cluster):
    ref = inference_pb2.ModelRef(model=MODEL)
    with grpc.insecure_channel(real_cluster.grpc_addr) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        messages = inference_pb2.ChatMessages(messages=[common_pb2.ChatMessage(role="user", content="Hi")])
        tokens = stub.Tokenize(inference_pb2.TokenizeRequest(model=ref, messages=messages), timeout=30)
        assert tokens.count == len(tokens.tokens) > 3 and tokens.model == MODEL and tokens.model_version == 1
        text = stub.Detokenize(inference_pb2.DetokenizeRequest(model=ref, tokens=tokens.tokens), timeout=30).text
        assert "Hi" in text
        info = stub.GetModelInfo(inference_pb2.GetModelInfoRequest(model=ref), timeout=30)
        assert (info.model, info.model_version, info.chat_template, info.numerics) == (MODEL, 1, True, "int8")
        assert info.vocabulary_size == 49152 and info.max_context >= 2048 and "Llama" in info.architecture and info.server_version
        with pytest.raises(grpc.RpcError) as err:
            stub.GetModelInfo(inference_pb2.GetModelInfoRequest(model=inference_pb2.ModelRef(model=MODEL, model_version=99)), timeout=30)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
