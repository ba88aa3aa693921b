"""Preparing a job for the engine: chat template, tokenization, and the limits of the model's context.

Whatever is wrong with a job's input is found here and refused with a reason (`JobRejected`, answered
to the client as INVALID_ARGUMENT) before the engine sees it.
"""

from __future__ import annotations

from typing import Any

from llmserve.common.grammars import grammar_of
from llmserve.common.subjects import attempt_key
from llmserve.model_worker.constraints import ConstrainedOutput, ConstraintCompiler
from llmserve.model_worker.engine import EngineRequest
from llmserve.model_worker.sampling import SamplingConfig
from llmserve.model_worker.tool_prompts import chat_turns, knows_tools
from llmserve.v1 import common_pb2, events_pb2


class JobRejected(Exception):
    """The job cannot run on this model: `code` is the ErrorCode the client gets."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def render_chat(
    tokenizer: Any, messages: list[common_pb2.ChatMessage], add_generation_prompt: bool = True, tools: list[common_pb2.Tool] | None = None
) -> str:
    """Chat messages (and the functions the model may call) as text, through the model's chat template."""
    if not getattr(tokenizer, "chat_template", None):
        raise JobRejected(events_pb2.ERROR_CODE_INVALID_ARGUMENT, "this model has no chat template: send a prompt instead of messages")
    turns, native_tools = chat_turns(list(messages), list(tools or []), knows_tools(tokenizer))
    try:
        return tokenizer.apply_chat_template(turns, tools=native_tools, add_generation_prompt=add_generation_prompt, tokenize=False)
    except Exception as exc:
        raise JobRejected(events_pb2.ERROR_CODE_INVALID_ARGUMENT, f"messages cannot be rendered: {exc}") from exc


def text_ids(tokenizer: Any, text: str, add_special_tokens: bool) -> list[int]:
    return tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]


def prompt_ids(job: events_pb2.Job, tokenizer: Any) -> list[int]:
    """The job's prompt as token ids: chat messages through the model's chat template (which writes
    the special tokens itself), or raw text with the tokenizer's special tokens."""
    if job.WhichOneof("input") == "messages":
        ids = text_ids(tokenizer, render_chat(tokenizer, job.messages.messages, tools=job.tools), add_special_tokens=False)
    else:
        ids = text_ids(tokenizer, job.prompt, add_special_tokens=True)
    if not ids:
        raise JobRejected(events_pb2.ERROR_CODE_INVALID_ARGUMENT, "the prompt is empty after tokenization")
    return ids


def engine_request(job: events_pb2.Job, tokenizer: Any, context: int, constraints: ConstraintCompiler | None = None) -> EngineRequest:
    """The engine's request for a job, on a model (and engine) that holds `context` positions at most;
    `constraints` compiles its output constraint, if it has one."""
    ids = prompt_ids(job, tokenizer)
    room = context - len(ids)
    # A migrated request's resumed tokens count against max_tokens; they need room too.
    if room <= 0:
        raise JobRejected(
            events_pb2.ERROR_CODE_INVALID_ARGUMENT,
            f"the prompt has {len(ids)} tokens; this model serves at most {context}",
        )
    s = job.sampling
    vocabulary = len(tokenizer)
    for token_id in s.logit_bias:
        if token_id >= vocabulary:
            raise JobRejected(
                events_pb2.ERROR_CODE_INVALID_ARGUMENT, f"logit_bias names token {token_id}; this model's tokens are 0 to {vocabulary - 1}"
            )
    sampling = SamplingConfig(
        temperature=s.temperature,
        top_p=s.top_p if 0 < s.top_p < 1 else 1.0,
        top_k=s.top_k,
        seed=s.seed if s.HasField("seed") else None,
        repetition_penalty=s.repetition_penalty if s.repetition_penalty > 0 else 1.0,
        # Never past the model's context: the answer ends with finish_reason "length" instead.
        max_tokens=min(s.max_tokens, room),
        stop=tuple(s.stop),
        presence_penalty=s.presence_penalty,
        frequency_penalty=s.frequency_penalty,
        logit_bias=tuple(sorted(s.logit_bias.items())),
        min_tokens=s.min_tokens,
        logprobs=s.logprobs,
        top_logprobs=s.top_logprobs if s.logprobs else 0,
    )
    return EngineRequest(
        constraint=output_constraint(job, constraints),
        request_id=attempt_key(job.request_id, job.attempt),
        prompt_ids=tuple(ids),
        sampling=sampling,
        ignore_eos=s.ignore_eos,
        resume_ids=tuple(job.resume_token_ids),
        resume_text_chars=job.resume_text_chars,
        priority=job.priority or common_pb2.PRIORITY_NORMAL,
    )


def output_constraint(job: events_pb2.Job, constraints: ConstraintCompiler | None) -> ConstrainedOutput | None:
    """The job's decoding state in its grammar, past any resumed tokens; None when unconstrained."""
    try:
        grammar = grammar_of(job.sampling.constraint)
    except Exception as exc:
        raise JobRejected(events_pb2.ERROR_CODE_INVALID_ARGUMENT, f"response_format: {exc}") from exc
    if grammar is None:
        return None
    if constraints is None:
        raise JobRejected(events_pb2.ERROR_CODE_INVALID_ARGUMENT, "this worker's engine cannot constrain its output")
    try:
        state = constraints.start(grammar)
        for token_id in job.resume_token_ids:
            state.take(token_id)
    except ValueError as exc:
        raise JobRejected(events_pb2.ERROR_CODE_INVALID_ARGUMENT, f"response_format: {exc}") from exc
    return state
