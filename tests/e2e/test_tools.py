"""Function calling with the official openai SDK and over gRPC: a whole round trip (request, tool_calls,
tool message, answer), named and required calls, streamed calls, and clear refusals."""

import json

import grpc
import openai
import pytest

from llmserve.v1 import common_pb2, inference_pb2, inference_pb2_grpc

pytestmark = pytest.mark.e2e

MODEL = "SmolLM2-135M-Instruct"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
                       "required": ["city"]},
    },
}
TIME = {
    "type": "function",
    "function": {"name": "get_time", "description": "The local time in a time zone.",
                 "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}},
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture
def client(real_cluster):
    return openai.OpenAI(base_url=f"{real_cluster.http_url}/v1", api_key="unused", max_retries=0, timeout=120)


def test_a_tool_call_round_trip(client):
    first = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER, TIME], tool_choice="required", temperature=0, max_tokens=80)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls", choice.message
    (call,) = choice.message.tool_calls[:1]
    assert call.type == "function" and call.id.startswith("call_") and call.function.name in ("get_weather", "get_time")
    assert isinstance(json.loads(call.function.arguments), dict)
    history = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [{"id": call.id, "type": "function",
                                                               "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"city": "Paris", "temperature": 21, "unit": "celsius"})},
    ]
    answer = client.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER, TIME], tool_choice="none", temperature=0, max_tokens=40)
    assert answer.choices[0].finish_reason in ("stop", "length") and answer.choices[0].message.content
    assert not answer.choices[0].message.tool_calls


def test_a_named_function_is_the_one_called_with_valid_arguments(client):
    r = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER, TIME], tool_choice={"type": "function", "function": {"name": "get_weather"}},
        temperature=0, max_tokens=80,
    )
    calls = r.choices[0].message.tool_calls
    assert [c.function.name for c in calls] == ["get_weather"]
    arguments = json.loads(calls[0].function.arguments)
    assert isinstance(arguments["city"], str) and arguments.get("unit", "celsius") in ("celsius", "fahrenheit")


def test_streamed_calls_arrive_as_tool_call_deltas(client):
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="required", temperature=0, max_tokens=80, stream=True
    ))
    deltas = [d for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or [])]
    assert deltas and deltas[0].function.name == "get_weather" and deltas[0].id.startswith("call_")
    assert "city" in json.loads("".join(d.function.arguments or "" for d in deltas if d.index == 0))
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]


def test_auto_lets_the_model_answer_or_call(client):
    r = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], temperature=0, max_tokens=60)
    choice = r.choices[0]
    assert (choice.finish_reason == "tool_calls" and choice.message.tool_calls) or choice.message.content


@pytest.mark.parametrize(
    "fields, param",
    [
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "nonsense"}}}]}, "tools"),
        ({"messages": [*ASK, {"role": "tool", "content": "21"}]}, "messages[1].tool_call_id"),
        ({"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice"),
    ],
)
def test_bad_tool_requests_are_a_400_naming_the_field(client, fields, param):
    args = {"model": MODEL, "messages": ASK, "max_tokens": 8, **fields}
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(**args)
    assert err.value.body["param"] == param


def test_grpc_tool_calls(real_cluster):
    request = inference_pb2.GenerateRequest(
        messages=inference_pb2.ChatMessages(messages=[common_pb2.ChatMessage(role="user", content="What time is it in Tokyo?")]),
        sampling=common_pb2.SamplingParams(max_tokens=80),
        tools=[common_pb2.Tool(name="get_time", description="The local time in a time zone.",
                               parameters=json.dumps(TIME["function"]["parameters"]))],
        tool_choice=common_pb2.ToolChoice(mode=common_pb2.TOOL_CHOICE_MODE_FUNCTION, function="get_time"),
    )
    with grpc.insecure_channel(real_cluster.grpc_addr) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        whole = stub.Generate(request, timeout=120)
        streamed = list(stub.GenerateStream(request, timeout=120))
    assert whole.finish_reason == common_pb2.FINISH_REASON_TOOL_CALLS
    assert [c.name for c in whole.tool_calls] == ["get_time"] and "zone" in json.loads(whole.tool_calls[0].arguments)
    assert [c.name for r in streamed for c in r.tool_calls] == ["get_time"]
    assert streamed[-1].finish_reason == common_pb2.FINISH_REASON_TOOL_CALLS
