"""Checking a client's request and turning it into a Job. Every message names the bad field."""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Callable

import structlog

from llmserve.common.errors import ServiceError
from llmserve.common.grammars import grammar_error
from llmserve.common.keys import TENANT_RE
from llmserve.common.subjects import MODEL_NAME_RE, REQUEST_ID_RE
from llmserve.router.tools import check_tools, tool_constraint
from llmserve.v1 import common_pb2, events_pb2, inference_pb2

ROLES = frozenset({"system", "user", "assistant", "tool"})
MAX_STOP_SEQUENCES = 8
MAX_STOP_LENGTH = 256
# OpenAI's limits.
MAX_LOGIT_BIAS = 300
MAX_TOP_LOGPROBS = 20


def new_request_id() -> str:
    return uuid.uuid4().hex


def _check_sampling(s: common_pb2.SamplingParams, default_max_tokens: int, max_tokens_limit: int) -> common_pb2.SamplingParams:
    out = common_pb2.SamplingParams()
    out.CopyFrom(s)
    if not math.isfinite(s.temperature) or not 0.0 <= s.temperature <= 2.0:
        raise ServiceError.invalid(f"sampling.temperature must be between 0 and 2, got {s.temperature}", param="temperature")
    if not math.isfinite(s.top_p) or not 0.0 <= s.top_p <= 1.0:
        raise ServiceError.invalid(f"sampling.top_p must be between 0 and 1, got {s.top_p}", param="top_p")
    if s.top_k < 0:
        raise ServiceError.invalid(f"sampling.top_k must be 0 or more, got {s.top_k}", param="top_k")
    if not math.isfinite(s.repetition_penalty) or s.repetition_penalty < 0:
        raise ServiceError.invalid(f"sampling.repetition_penalty must be positive, got {s.repetition_penalty}", param="repetition_penalty")
    if s.max_tokens < 0 or s.max_tokens > max_tokens_limit:
        raise ServiceError.invalid(f"sampling.max_tokens must be between 1 and {max_tokens_limit}, got {s.max_tokens}", param="max_tokens")
    if len(s.stop) > MAX_STOP_SEQUENCES:
        raise ServiceError.invalid(f"sampling.stop takes at most {MAX_STOP_SEQUENCES} sequences, got {len(s.stop)}", param="stop")
    for stop in s.stop:
        if not stop or len(stop) > MAX_STOP_LENGTH:
            raise ServiceError.invalid(f"sampling.stop sequences must be 1 to {MAX_STOP_LENGTH} characters", param="stop")
    for name in ("presence_penalty", "frequency_penalty"):
        value = getattr(s, name)
        if not math.isfinite(value) or not -2.0 <= value <= 2.0:
            raise ServiceError.invalid(f"sampling.{name} must be between -2 and 2, got {value}", param=name)
    if len(s.logit_bias) > MAX_LOGIT_BIAS:
        raise ServiceError.invalid(f"sampling.logit_bias takes at most {MAX_LOGIT_BIAS} tokens, got {len(s.logit_bias)}", param="logit_bias")
    for token_id, bias in s.logit_bias.items():
        if not math.isfinite(bias) or not -100.0 <= bias <= 100.0:
            raise ServiceError.invalid(f"sampling.logit_bias[{token_id}] must be between -100 and 100, got {bias}", param="logit_bias")
    if s.min_tokens < 0:
        raise ServiceError.invalid(f"sampling.min_tokens must be 0 or more, got {s.min_tokens}", param="min_tokens")
    if not 0 <= s.top_logprobs <= MAX_TOP_LOGPROBS:
        raise ServiceError.invalid(f"sampling.top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {s.top_logprobs}", param="top_logprobs")
    if s.top_logprobs and not s.logprobs:
        raise ServiceError.invalid("sampling.top_logprobs needs sampling.logprobs", param="top_logprobs")
    if s.HasField("constraint") and s.constraint.WhichOneof("kind") is not None:
        why = grammar_error(s.constraint)
        if why:
            raise ServiceError.invalid(f"the output constraint cannot be used: {why}", param="response_format")
        if s.ignore_eos:
            raise ServiceError.invalid("ignore_eos cannot be combined with an output constraint", param="ignore_eos")
    out.max_tokens = s.max_tokens or default_max_tokens
    if s.min_tokens > out.max_tokens:
        raise ServiceError.invalid(f"sampling.min_tokens ({s.min_tokens}) is above max_tokens ({out.max_tokens})", param="min_tokens")
    return out


class JobFactory:
    """Turns a validated request into a Job with the router's defaults, and binds its ids for logging.

    Both front ends (gRPC and REST) use it, so they accept, default and refuse exactly the same things.
    """

    def __init__(self, default_model: str, default_max_tokens: int, max_tokens_limit: int, reply_subject_for: Callable[[str], str]) -> None:
        self._default_model = default_model
        self._default_max_tokens = default_max_tokens
        self._max_tokens_limit = max_tokens_limit
        self._reply_subject_for = reply_subject_for

    def choices(self, job: events_pb2.Job, n: int) -> list[events_pb2.Job]:
        """The job and n - 1 siblings for the other choices of an n > 1 request: each its own request
        (id `<id>-n<i>`, its own token subject), the seed (when set) moved on by i."""
        jobs = [job]
        for i in range(1, n):
            sibling = events_pb2.Job()
            sibling.CopyFrom(job)
            suffix = f"-n{i}"
            sibling.request_id = job.request_id[: 64 - len(suffix)] + suffix
            sibling.reply_subject = self._reply_subject_for(sibling.request_id)
            if job.sampling.HasField("seed"):
                sibling.sampling.seed = (job.sampling.seed + i) % 2**64
            jobs.append(sibling)
        return jobs

    def __call__(self, request: inference_pb2.GenerateRequest, deadline: float = 0.0, tenant: str = "") -> events_pb2.Job:
        job = build_job(
            request,
            default_model=self._default_model,
            default_max_tokens=self._default_max_tokens,
            max_tokens_limit=self._max_tokens_limit,
            reply_subject_for=self._reply_subject_for,
            deadline=deadline,
            tenant=tenant,
        )
        structlog.contextvars.bind_contextvars(request_id=job.request_id, model=job.model)
        return job


def build_job(
    request: inference_pb2.GenerateRequest,
    *,
    default_model: str,
    default_max_tokens: int,
    max_tokens_limit: int,
    reply_subject_for: Callable[[str], str],
    deadline: float = 0.0,
    tenant: str = "",
) -> events_pb2.Job:
    model = request.model or default_model
    if not MODEL_NAME_RE.match(model):
        raise ServiceError.invalid(f"model {model!r} is not a valid model name", param="model")
    request_id = request.request_id or new_request_id()
    if not REQUEST_ID_RE.match(request_id):
        raise ServiceError.invalid("request_id must be 1-64 letters, digits, '-' or '_'", param="request_id")
    if request.model_alias and not MODEL_NAME_RE.match(request.model_alias):
        raise ServiceError.invalid(f"model_alias {request.model_alias!r} is not a valid alias", param="model_alias")
    if tenant and not TENANT_RE.match(tenant):
        raise ServiceError.invalid("the tenant (x-tenant) must be 1-64 letters, digits, '_', '.', '@' or '-'", param="x-tenant")
    if request.priority not in common_pb2.Priority.values():
        raise ServiceError.invalid(f"priority {request.priority} is not a known level", param="priority")
    job = events_pb2.Job(
        request_id=request_id,
        model=model,
        model_alias=request.model_alias,
        sampling=_check_sampling(request.sampling, default_max_tokens, max_tokens_limit),
        priority=request.priority,
        reply_subject=reply_subject_for(request_id),
        deadline=deadline,
        submitted_at=time.time(),
        tenant=tenant,
    )
    if request.HasField("model_version"):
        if request.model_version == 0:
            raise ServiceError.invalid("model_version starts at 1", param="model_version")
        job.model_version = request.model_version
    kind = request.WhichOneof("input")
    if kind == "prompt":
        if not request.prompt:
            raise ServiceError.invalid("prompt is empty", param="prompt")
        job.prompt = request.prompt
    elif kind == "messages":
        if not request.messages.messages:
            raise ServiceError.invalid("messages is empty", param="messages")
        for i, message in enumerate(request.messages.messages):
            _check_message(i, message)
        job.messages.messages.extend(request.messages.messages)
    else:
        raise ServiceError.invalid("either prompt or messages is required", param="messages")
    _add_tools(job, request)
    return job


def _check_message(i: int, message: common_pb2.ChatMessage) -> None:
    if message.role not in ROLES:
        raise ServiceError.invalid(f"messages[{i}].role must be one of {sorted(ROLES)}, got {message.role!r}", param="messages")
    if message.role == "tool" and not message.tool_call_id:
        raise ServiceError.invalid(f"messages[{i}]: a tool message needs tool_call_id", param=f"messages[{i}].tool_call_id")
    if message.tool_calls and message.role != "assistant":
        raise ServiceError.invalid(f"messages[{i}]: only assistant messages have tool_calls", param=f"messages[{i}].tool_calls")
    for call in message.tool_calls:
        try:
            arguments = json.loads(call.arguments or "{}")
        except ValueError:
            arguments = None
        if not isinstance(arguments, dict) or not call.name:
            raise ServiceError.invalid(
                f"messages[{i}].tool_calls: each call needs a function name and arguments as a JSON object", param=f"messages[{i}].tool_calls"
            )


def _add_tools(job: events_pb2.Job, request: inference_pb2.GenerateRequest) -> None:
    """The tools the model is shown and, for a required or named call, the grammar it answers in."""
    if not request.tools:
        if request.tool_choice.mode != common_pb2.TOOL_CHOICE_MODE_AUTO:
            check_tools([], request.tool_choice)
        return
    if job.WhichOneof("input") != "messages":
        raise ServiceError.invalid("tools need chat messages, not a raw prompt", param="tools")
    check_tools(list(request.tools), request.tool_choice)
    if request.tool_choice.mode == common_pb2.TOOL_CHOICE_MODE_NONE:
        return
    job.tools.extend(request.tools)
    constraint = tool_constraint(list(request.tools), request.tool_choice)
    if constraint is not None:
        if job.sampling.constraint.WhichOneof("kind") is not None:
            raise ServiceError.invalid("a required function call cannot be combined with response_format", param="tool_choice")
        job.sampling.constraint.CopyFrom(constraint)
