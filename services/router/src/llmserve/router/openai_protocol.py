"""Request and response shapes of the OpenAI API subset llmserve speaks, and their mapping to llmserve's own."""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llmserve.common.errors import ServiceError
from llmserve.v1 import common_pb2, inference_pb2

FINISH_REASONS = {
    common_pb2.FINISH_REASON_STOP: "stop",
    common_pb2.FINISH_REASON_LENGTH: "length",
    common_pb2.FINISH_REASON_CANCELLED: "stop",
}
# Most choices one request may ask for (n).
MAX_CHOICES = 16
PRIORITY_NAMES = {"low": 1, "normal": 2, "high": 3, "critical": 4}


# Strict types: "max_tokens": "10" is a 400 naming the field, not a silent conversion.
_STRICT = ConfigDict(strict=True)


class ContentPart(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")  # image_url, input_audio, ... refused by _text_of

    type: str
    text: str | None = None


class FunctionCallIn(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    name: str
    arguments: str = "{}"


class ToolCallIn(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    id: str = ""
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")  # name, audio, ... refused by to_request

    role: str
    # A string, or a list of parts of which only text parts are understood.
    content: str | list[ContentPart] | None = None
    # An assistant turn's calls; a tool turn's answer to one.
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None


class FunctionIn(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    name: str
    description: str = ""
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolIn(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    type: Literal["function"]
    function: FunctionIn


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    class _Name(BaseModel):
        model_config = ConfigDict(strict=True, extra="forbid")
        name: str

    type: Literal["function"]
    function: _Name


_TOOL_CHOICE_MODES = {
    "auto": common_pb2.TOOL_CHOICE_MODE_AUTO,
    "none": common_pb2.TOOL_CHOICE_MODE_NONE,
    "required": common_pb2.TOOL_CHOICE_MODE_REQUIRED,
}


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    name: str = ""
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """OpenAI's response_format: free text, any JSON object, or JSON valid under a schema."""

    model_config = ConfigDict(strict=True, extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StructuredOutputs(BaseModel):
    """llmserve extra (vLLM's shape): exactly one of a JSON Schema, a regex or a Lark grammar."""

    model_config = ConfigDict(strict=True, extra="forbid")

    json_: dict[str, Any] | None = Field(None, alias="json")
    regex: str | None = None
    grammar: str | None = None


def constraint_of(response_format: ResponseFormat | None, structured: StructuredOutputs | None) -> common_pb2.OutputConstraint | None:
    """The output constraint a request asks for, if any; a 400 naming the field when it is malformed."""
    if response_format is not None and response_format.type != "text" and structured is not None:
        raise ServiceError.invalid("send response_format or structured_outputs, not both", param="structured_outputs")
    if structured is not None:
        given = [(k, v) for k, v in (("json", structured.json_), ("regex", structured.regex), ("grammar", structured.grammar)) if v is not None]
        if len(given) != 1:
            raise ServiceError.invalid("structured_outputs takes exactly one of json, regex, grammar", param="structured_outputs")
        kind, value = given[0]
        if kind == "json":
            return common_pb2.OutputConstraint(json_schema=json.dumps(value))
        return common_pb2.OutputConstraint(regex=value) if kind == "regex" else common_pb2.OutputConstraint(lark=value)
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return common_pb2.OutputConstraint(json_object=True)
    if response_format.json_schema is None:
        raise ServiceError.invalid("response_format of type json_schema needs json_schema", param="response_format")
    return common_pb2.OutputConstraint(json_schema=json.dumps(response_format.json_schema.schema_))


class StreamOptions(BaseModel):
    model_config = _STRICT

    include_usage: bool = False


# OpenAI request fields accepted and not acted on, because they ask nothing of the generation: who
# the end user is (user, safety_identifier), what to keep with the answer on OpenAI's side (store,
# metadata), which of OpenAI's tiers and caches to use (service_tier, prompt_cache_key).
IGNORED_FIELDS = frozenset({"user", "safety_identifier", "store", "metadata", "service_tier", "prompt_cache_key"})

# OpenAI request fields llmserve does not honour yet, with the values that ask for nothing (what
# clients send as defaults): any other value is refused with a 400 naming the field.
_UNSUPPORTED_UNLESS: dict[str, tuple[Any, ...]] = {
    "functions": (None, []),
    "function_call": (None, "none", "auto"),
    "modalities": (None, ["text"]),
    "audio": (None,),
    "prediction": (None,),
    "reasoning_effort": (None,),
    "verbosity": (None,),
    "web_search_options": (None,),
    "best_of": (None, 1),
    "echo": (None, False),
    "suffix": (None, ""),
}


class SamplingFields(BaseModel):
    """Fields both endpoints share. Nothing is silently ignored: an unknown field, or a known OpenAI
    field asking for what llmserve does not do, is a 400 naming it (see check_extra_fields)."""

    model_config = ConfigDict(strict=True, extra="allow")

    model: str = ""
    temperature: float | None = Field(None, description="0 (greedy) to 2; OpenAI's default is 1.")
    top_p: float | None = Field(None, description="Nucleus sampling mass, (0, 1].")
    max_tokens: int | None = Field(None, description="Most tokens to generate.")
    stop: str | list[str] | None = Field(None, description="Up to 8 stop sequences.")
    seed: int | None = Field(None, description="Seed for reproducible sampling.")
    n: int = Field(1, description="Choices to generate (1 to 16); with a seed, choice i uses seed + i.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(None, description="-2 to 2: lowers the logits of tokens already generated.")
    frequency_penalty: float | None = Field(None, description="-2 to 2: lowers a token's logit per time it was generated.")
    logit_bias: dict[str, float] | None = Field(None, description="Token id (as a string) → bias from -100 to 100.")
    min_tokens: int | None = Field(None, description="llmserve extra (as vLLM's): end-of-sequence not before this many tokens.")
    response_format: ResponseFormat | None = Field(None, description="text, json_object, or json_schema (enforced while decoding).")
    structured_outputs: StructuredOutputs | None = Field(None, description="llmserve extra (vLLM's shape): json, regex or grammar.")
    # llmserve's own fields, accepted the way other OpenAI-compatible servers accept extras.
    top_k: int | None = Field(None, description="llmserve extra: keep only the k most likely tokens.")
    repetition_penalty: float | None = Field(None, description="llmserve extra: > 1 discourages repeats.")
    priority: int | str | None = Field(None, description="llmserve extra: 1-4 or low/normal/high/critical.")
    ignore_eos: bool = Field(False, description="llmserve extra: generate max_tokens tokens, past end-of-sequence (benchmarks).")

    def to_request(self) -> inference_pb2.GenerateRequest:
        check_extra_fields(self.model_extra or {})
        if not 1 <= self.n <= MAX_CHOICES:
            raise ServiceError.invalid(f"n must be between 1 and {MAX_CHOICES}, got {self.n}", param="n")
        sampling = common_pb2.SamplingParams(
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=self.top_k or 0,
            max_tokens=self._max_tokens(),
            repetition_penalty=self.repetition_penalty or 0.0,
            stop=[self.stop] if isinstance(self.stop, str) else list(self.stop or []),
            ignore_eos=self.ignore_eos,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            min_tokens=self.min_tokens or 0,
        )
        for key, bias in (self.logit_bias or {}).items():
            if not key.isdigit() or len(key) > 9:
                raise ServiceError.invalid(f"logit_bias keys must be token ids, got {key!r}", param="logit_bias")
            sampling.logit_bias[int(key)] = bias
        sampling.logprobs, sampling.top_logprobs = self._logprobs()
        constraint = constraint_of(self.response_format, self.structured_outputs)
        if constraint is not None:
            sampling.constraint.CopyFrom(constraint)
        if self.seed is not None:
            if self.seed < 0:
                raise ServiceError.invalid("seed must be 0 or more", param="seed")
            sampling.seed = self.seed
        return inference_pb2.GenerateRequest(model=self.model, sampling=sampling, priority=self._priority())

    def _logprobs(self) -> tuple[bool, int]:
        """(report logprobs, alternatives per position), as each endpoint spells them."""
        return False, 0

    def _max_tokens(self) -> int:
        value = self.max_tokens
        if value is not None and value < 1:
            raise ServiceError.invalid("max_tokens must be at least 1", param="max_tokens")
        return value or 0

    def _priority(self) -> int:
        if self.priority is None:
            return common_pb2.PRIORITY_UNSPECIFIED
        if isinstance(self.priority, str):
            if self.priority.lower() not in PRIORITY_NAMES:
                raise ServiceError.invalid(f"priority must be 1-4 or one of {sorted(PRIORITY_NAMES)}", param="priority")
            return PRIORITY_NAMES[self.priority.lower()]
        return self.priority


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessageIn]
    max_completion_tokens: int | None = Field(None, description="Preferred over max_tokens when both are set.")
    logprobs: bool | None = Field(None, description="Return each generated token's log probability.")
    top_logprobs: int | None = Field(None, description="With logprobs: also the 0 to 20 most likely tokens at each position.")
    tools: list[ToolIn] | None = Field(None, description="Functions the model may call.")
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = Field(None, description="Default: auto with tools.")
    parallel_tool_calls: bool | None = Field(None, description="May one answer hold several calls (default yes).")

    def _logprobs(self) -> tuple[bool, int]:
        if self.top_logprobs is not None and not self.logprobs:
            raise ServiceError.invalid("top_logprobs needs logprobs: true", param="top_logprobs")
        top = self.top_logprobs or 0
        if not 0 <= top <= 20:
            raise ServiceError.invalid(f"top_logprobs must be between 0 and 20, got {top}", param="top_logprobs")
        return bool(self.logprobs), top

    def _max_tokens(self) -> int:
        if self.max_completion_tokens is not None:
            if self.max_completion_tokens < 1:
                raise ServiceError.invalid("max_completion_tokens must be at least 1", param="max_completion_tokens")
            return self.max_completion_tokens
        return super()._max_tokens()

    def to_request(self) -> inference_pb2.GenerateRequest:
        request = super().to_request()
        for i, message in enumerate(self.messages):
            if message.model_extra:
                field = sorted(message.model_extra)[0]
                raise ServiceError.invalid(f"messages[{i}].{field} is not supported", param=f"messages[{i}].{field}")
            # "developer" is OpenAI's newer name for the system role.
            role = "system" if message.role == "developer" else message.role
            turn = common_pb2.ChatMessage(role=role, content=_text_of(message, i), tool_call_id=message.tool_call_id or "")
            for call in message.tool_calls or []:
                turn.tool_calls.add(id=call.id, name=call.function.name, arguments=call.function.arguments)
            request.messages.messages.append(turn)
        if not self.messages:
            raise ServiceError.invalid("messages must hold at least one message", param="messages")
        for tool in self.tools or []:
            parameters = json.dumps(tool.function.parameters) if tool.function.parameters is not None else ""
            request.tools.add(name=tool.function.name, description=tool.function.description, parameters=parameters)
        if isinstance(self.tool_choice, NamedToolChoice):
            request.tool_choice.mode = common_pb2.TOOL_CHOICE_MODE_FUNCTION
            request.tool_choice.function = self.tool_choice.function.name
        elif self.tool_choice is not None:
            request.tool_choice.mode = _TOOL_CHOICE_MODES[self.tool_choice]
        if self.parallel_tool_calls is not None:
            request.tool_choice.parallel = self.parallel_tool_calls
        return request


class CompletionRequest(SamplingFields):
    prompt: str | list[str]
    logprobs: int | None = Field(None, description="Return each token's log probability and this many (0 to 5) alternatives.")

    def _logprobs(self) -> tuple[bool, int]:
        if self.logprobs is None:
            return False, 0
        if not 0 <= self.logprobs <= 5:
            raise ServiceError.invalid(f"logprobs must be between 0 and 5, got {self.logprobs}", param="logprobs")
        return True, self.logprobs

    def to_request(self) -> inference_pb2.GenerateRequest:
        request = super().to_request()
        prompt = self.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise ServiceError.invalid("prompt must be one string (batches of prompts are not supported)", param="prompt")
            prompt = prompt[0]
        request.prompt = prompt
        return request


class TokenizeBody(BaseModel):
    """POST /tokenize, in vLLM's shape: a prompt, or chat messages rendered by the model's template."""

    model_config = ConfigDict(strict=True, extra="forbid")

    model: str = ""
    prompt: str | None = None
    messages: list[ChatMessageIn] | None = None
    add_special_tokens: bool | None = Field(None, description="Default: true for a prompt, false for messages.")
    add_generation_prompt: bool = Field(True, description="Messages: end with the assistant's turn opening.")

    def to_request(self) -> inference_pb2.TokenizeRequest:
        request = inference_pb2.TokenizeRequest(model=inference_pb2.ModelRef(model=self.model))
        if (self.prompt is None) == (self.messages is None):
            raise ServiceError.invalid("send either prompt or messages", param="prompt")
        if self.prompt is not None:
            request.prompt = self.prompt
        else:
            for i, message in enumerate(self.messages or []):
                role = "system" if message.role == "developer" else message.role
                request.messages.messages.append(common_pb2.ChatMessage(role=role, content=_text_of(message, i)))
            request.add_generation_prompt = self.add_generation_prompt
        if self.add_special_tokens is not None:
            request.add_special_tokens = self.add_special_tokens
        return request


class DetokenizeBody(BaseModel):
    """POST /detokenize, in vLLM's shape."""

    model_config = ConfigDict(strict=True, extra="forbid")

    model: str = ""
    tokens: list[int]

    def to_request(self) -> inference_pb2.DetokenizeRequest:
        if any(t < 0 for t in self.tokens):
            raise ServiceError.invalid("tokens must be 0 or more", param="tokens")
        return inference_pb2.DetokenizeRequest(model=inference_pb2.ModelRef(model=self.model), tokens=self.tokens)


def check_extra_fields(extra: dict[str, Any]) -> None:
    """Refuses, naming the field, every field beyond the ones llmserve honours, except IGNORED_FIELDS
    and unsupported OpenAI fields whose value asks for nothing."""
    for name, value in sorted(extra.items()):
        if name in IGNORED_FIELDS:
            continue
        if name in _UNSUPPORTED_UNLESS:
            if any(value == allowed and type(value) is type(allowed) for allowed in _UNSUPPORTED_UNLESS[name]):
                continue
            raise ServiceError.invalid(f"{name} is not supported by this server (yet)", param=name)
        raise ServiceError.invalid(f"unrecognized request argument supplied: {name}", param=name)


def _text_of(message: ChatMessageIn, index: int) -> str:
    if message.content is None:
        return ""
    if isinstance(message.content, str):
        return message.content
    texts = []
    for part in message.content:
        if part.type != "text":
            raise ServiceError.invalid(f"messages[{index}].content: only text parts are supported", param="messages")
        texts.append(part.text or "")
    return "".join(texts)


def usage_dict(usage: common_pb2.Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def created() -> int:
    return int(time.time())


Kind = Literal["chat", "completion"]
