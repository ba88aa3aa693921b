"""Structured output end to end: the openai SDK's parse() with pydantic models, JSON Schema streamed and
not, JSON objects, regexes over gRPC, and what a run cut short by max_tokens says."""

import json
import re

import grpc
import openai
import pytest
from pydantic import BaseModel

from llmserve.v1 import common_pb2, inference_pb2, inference_pb2_grpc

pytestmark = pytest.mark.e2e

MODEL = "SmolLM2-135M-Instruct"


class City(BaseModel):
    name: str
    country: str
    population: int
    coastal: bool


PROMPTS = [
    "Describe Paris.", "Describe Tokyo.", "Tell me about Lima.", "Give me facts about Oslo.", "What do you know about Cairo?",
    "Describe a city by the sea.", "Name a big city in India.", "Describe the capital of Canada.", "Make up a city.",
    "Which city hosts the Eiffel Tower?",
]

SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}, "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                   "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3}},
    "required": ["answer", "confidence", "tags"],
    "additionalProperties": False,
}


@pytest.fixture
def client(real_cluster):
    return openai.OpenAI(base_url=f"{real_cluster.http_url}/v1", api_key="unused", max_retries=0, timeout=120)


def _check(value: dict) -> None:
    assert set(value) == {"answer", "confidence", "tags"}
    assert isinstance(value["answer"], str) and 0 <= value["confidence"] <= 1
    assert isinstance(value["tags"], list) and len(value["tags"]) <= 3 and all(isinstance(t, str) for t in value["tags"])


def test_parse_returns_a_pydantic_object_for_every_prompt(client):
    for prompt in PROMPTS:
        completion = client.chat.completions.parse(
            model=MODEL, messages=[{"role": "user", "content": prompt}], response_format=City, temperature=0, max_tokens=120
        )
        choice = completion.choices[0]
        assert choice.finish_reason == "stop", choice.message.content
        assert isinstance(choice.message.parsed, City), choice.message.content


def test_a_json_schema_holds_streamed_and_not(client):
    response_format = {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True}}
    messages = [{"role": "user", "content": "Is the sky blue? Answer with tags."}]
    whole = client.chat.completions.create(model=MODEL, messages=messages, response_format=response_format, temperature=0, max_tokens=120)
    _check(json.loads(whole.choices[0].message.content))
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=messages, response_format=response_format, temperature=0, max_tokens=120, stream=True
    ))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole.choices[0].message.content
    # Sampled too: every draw stays inside the schema.
    for seed in range(3):
        sampled = client.chat.completions.create(
            model=MODEL, messages=messages, response_format=response_format, temperature=1.0, seed=seed, max_tokens=150
        )
        if sampled.choices[0].finish_reason == "stop":
            _check(json.loads(sampled.choices[0].message.content))


def test_json_object_mode_returns_an_object(client):
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "List two fruits as JSON."}], response_format={"type": "json_object"},
        temperature=0, max_tokens=80,
    )
    assert r.choices[0].finish_reason == "stop" and isinstance(json.loads(r.choices[0].message.content), dict)


def test_a_run_cut_short_says_length_and_parse_refuses_it(client):
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Describe Paris."}],
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": City.model_json_schema()}}, temperature=0, max_tokens=5,
    )
    assert r.choices[0].finish_reason == "length"
    with pytest.raises(openai.LengthFinishReasonError):
        client.chat.completions.parse(
            model=MODEL, messages=[{"role": "user", "content": "Describe Paris."}], response_format=City, temperature=0, max_tokens=5
        )


@pytest.mark.parametrize(
    "fields, param",
    [
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}}, "response_format"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        ({"response_format": {"type": "yaml"}}, "response_format"),
        ({"extra_body": {"structured_outputs": {"regex": "[a-z]+", "grammar": "start: x"}}}, "structured_outputs"),
    ],
)
def test_unusable_constraints_are_a_400_naming_the_field(client, fields, param):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=8, **fields)
    assert err.value.body["param"].startswith(param)


def test_a_regex_over_grpc_and_rest(real_cluster, client):
    pattern = r"(yes|no), because [a-z ]{5,40}\."
    sampling = common_pb2.SamplingParams(max_tokens=40, constraint=common_pb2.OutputConstraint(regex=pattern))
    request = inference_pb2.GenerateRequest(
        messages=inference_pb2.ChatMessages(messages=[common_pb2.ChatMessage(role="user", content="Is water wet?")]), sampling=sampling
    )
    with grpc.insecure_channel(real_cluster.grpc_addr) as channel:
        answer = inference_pb2_grpc.InferenceStub(channel).Generate(request, timeout=120)
    assert re.fullmatch(pattern, answer.text), answer.text
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Is water wet?"}], max_tokens=40, extra_body={"structured_outputs": {"regex": pattern}}
    )
    assert re.fullmatch(pattern, r.choices[0].message.content)
