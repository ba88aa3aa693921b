"""A client's request checked and made into a Job: defaults, ids, and every bad field named."""

import pytest

from llmserve.common.errors import ServiceError
from llmserve.router.validation import build_job
from llmserve.v1 import common_pb2, events_pb2, inference_pb2

pytestmark = pytest.mark.unit


def job(**fields) -> events_pb2.Job:
    request = inference_pb2.GenerateRequest(**fields)
    return build_job(
        request, default_model="m", default_max_tokens=64, max_tokens_limit=1000, reply_subject_for=lambda rid: f"t.{rid}"
    )


def chat(*turns: tuple[str, str]) -> inference_pb2.ChatMessages:
    return inference_pb2.ChatMessages(messages=[common_pb2.ChatMessage(role=r, content=c) for r, c in turns])


def test_defaults_are_applied():
    j = job(prompt="hi")
    assert j.model == "m"
    assert j.sampling.max_tokens == 64
    assert len(j.request_id) == 32
    assert j.reply_subject == f"t.{j.request_id}"


def test_client_request_id_is_kept():
    assert job(prompt="hi", request_id="abc-1").request_id == "abc-1"


@pytest.mark.parametrize(
    "fields, needle",
    [
        ({}, "prompt or messages"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x", "model": "bad.name"}, "model"),
        ({"prompt": "x", "request_id": "has space"}, "request_id"),
        ({"prompt": "x", "sampling": common_pb2.SamplingParams(temperature=5)}, "temperature"),
        ({"prompt": "x", "sampling": common_pb2.SamplingParams(top_p=1.5)}, "top_p"),
        ({"prompt": "x", "sampling": common_pb2.SamplingParams(top_k=-1)}, "top_k"),
        ({"prompt": "x", "sampling": common_pb2.SamplingParams(max_tokens=5000)}, "max_tokens"),
        ({"prompt": "x", "sampling": common_pb2.SamplingParams(stop=["a"] * 9)}, "stop"),
        ({"prompt": "x", "sampling": common_pb2.SamplingParams(temperature=float("nan"))}, "temperature"),
        ({"messages": chat()}, "messages is empty"),
        ({"messages": chat(("robot", "hi"))}, "messages[0].role"),
        ({"prompt": "x", "model_version": 0}, "model_version"),
        ({"prompt": "x", "priority": 17}, "priority"),
    ],
)
def test_bad_input_is_rejected_naming_the_field(fields, needle):
    with pytest.raises(ServiceError) as err:
        job(**fields)
    assert err.value.code == events_pb2.ERROR_CODE_INVALID_ARGUMENT
    assert needle in err.value.message


def test_messages_are_carried_over():
    j = job(messages=chat(("system", "be brief"), ("user", "hi")))
    assert [(m.role, m.content) for m in j.messages.messages] == [("system", "be brief"), ("user", "hi")]
