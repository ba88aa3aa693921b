import json

import pytest

from llmserve.common.errors import ServiceError
from llmserve.router.openai_protocol import ChatCompletionRequest
from llmserve.router.rest_api import error_response
from llmserve.v1 import events_pb2

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "code, status",
    [
        (events_pb2.ERROR_CODE_INVALID_ARGUMENT, 400),
        (events_pb2.ERROR_CODE_NOT_FOUND, 404),
        (events_pb2.ERROR_CODE_RESOURCE_EXHAUSTED, 429),
        (events_pb2.ERROR_CODE_UNAVAILABLE, 503),
        (events_pb2.ERROR_CODE_DEADLINE_EXCEEDED, 504),
        (events_pb2.ERROR_CODE_PERMISSION_DENIED, 403),
        (events_pb2.ERROR_CODE_UNAUTHENTICATED, 401),
    ],
)
def test_each_code_has_its_status_and_openai_shape(code, status):
    response = error_response(ServiceError(code, "why", param="field"))
    body = json.loads(response.body)
    assert response.status_code == status
    assert body["error"]["message"] == "why" and body["error"]["param"] == "field"
    assert set(body["error"]) == {"message", "type", "param", "code"}


def test_overload_carries_retry_after_rounded_up():
    # Rounded up: a client that waits the whole seconds it is told is not refused again for the same reason.
    response = error_response(ServiceError(events_pb2.ERROR_CODE_RESOURCE_EXHAUSTED, "full", retry_after_s=2.4))
    assert response.status_code == 429 and response.headers["retry-after"] == "3"


def test_a_key_problem_is_401_with_openais_invalid_api_key_code():
    response = error_response(ServiceError.unauthenticated("invalid API key"))
    body = json.loads(response.body)
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    assert body["error"]["code"] == "invalid_api_key" and body["error"]["type"] == "invalid_request_error"


def test_content_parts_and_max_completion_tokens_are_understood():
    body = ChatCompletionRequest(
        model="m",
        messages=[{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
        max_tokens=5,
        max_completion_tokens=9,
        stop="x",
        temperature=0,
    )
    request = body.to_request()
    assert request.messages.messages[0].content == "ab"
    assert request.sampling.max_tokens == 9 and list(request.sampling.stop) == ["x"]


def test_image_parts_are_refused_with_the_field_named():
    body = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": [{"type": "image_url"}]}])
    with pytest.raises(ServiceError) as err:
        body.to_request()
    assert err.value.param == "messages"


def _chat(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields})


@pytest.mark.parametrize(
    "fields, param",
    [
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"audio": {"voice": "alloy"}}, "audio"),
        ({"top_logprobs": 5}, "top_logprobs"),  # without logprobs
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"logit_bias": {"x": -100}}, "logit_bias"),
        ({"reasoning_effort": "high"}, "reasoning_effort"),
        ({"frobnicate": 1}, "frobnicate"),
        ({"messages": [{"role": "user", "content": "hi", "name": "bob"}]}, "messages[0].name"),
    ],
)
def test_nothing_is_silently_ignored(fields, param):
    with pytest.raises(ServiceError) as err:
        _chat(**fields).to_request()
    assert err.value.param == param and err.value.http_status == 400


def test_defaults_of_unsupported_fields_and_the_documented_ignored_ones_are_accepted():
    request = _chat(
        response_format={"type": "text"}, tools=[], tool_choice="none", logprobs=False, logit_bias={},
        user="u-1", metadata={"a": "b"}, store=False, service_tier="auto",
        messages=[{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "hi"}],
    ).to_request()
    assert [m.role for m in request.messages.messages] == ["system", "user"]


@pytest.mark.parametrize("fields", [{"max_tokens": "10"}, {"temperature": "0.5"}, {"stream": "yes"}, {"n": True}])
def test_types_are_strict(fields):
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as err:
        _chat(**fields)
    assert err.value.errors()[0]["loc"][0] == next(iter(fields))
