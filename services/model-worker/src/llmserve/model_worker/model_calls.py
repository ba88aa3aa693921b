"""Answering questions about the model version a worker serves: tokenize, detokenize, metadata.

Only workers hold a model's tokenizer and configuration, so a router asks them over NATS
(request/reply on `<prefix>.model.<model>.<version>`, one worker of the version answers). Tokenizing
goes through the same code as a generation request (`job_request.prompt_ids`), so the ids a client
is shown are the ids its prompt becomes.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from llmserve.common.subjects import Subjects
from llmserve.model_worker.job_request import JobRejected, render_chat, text_ids
from llmserve.v1 import events_pb2, inference_pb2

log = structlog.get_logger()

# Most tokens one detokenize call decodes.
MAX_DETOKENIZE = 1 << 17


def _server_version() -> str:
    try:
        return metadata.version("llmserve-model-worker")
    except metadata.PackageNotFoundError:
        return "unknown"


class ModelCallResponder:
    """Subscribes for one version's model calls and answers them from its tokenizer and config."""

    def __init__(self, nc: NATS, subjects: Subjects, model: str, version: int, tokenizer: Any, max_context: int, numerics: str,
                 architecture: str) -> None:
        self._nc = nc
        self._subject = subjects.model_calls(model, version)
        self.details = inference_pb2.ModelDetails(
            model=model,
            model_version=version,
            max_context=max_context,
            chat_template=bool(getattr(tokenizer, "chat_template", None)),
            numerics=numerics,
            vocabulary_size=len(tokenizer),
            architecture=architecture,
            server_version=_server_version(),
        )
        self._tokenizer = tokenizer
        self._sub = None

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(self._subject, queue=Subjects.MODEL_CALLS_QUEUE_GROUP, cb=self._on_call)

    async def stop(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception:
                pass  # connection closing: the server drops it anyway
            self._sub = None

    async def _on_call(self, msg: Msg) -> None:
        try:
            reply = self.answer(events_pb2.ModelCall.FromString(msg.data))
        except Exception as exc:
            log.exception("model_call_failed")
            reply = events_pb2.ModelCallReply(error_code=events_pb2.ERROR_CODE_INTERNAL, error_message=f"{type(exc).__name__}: {exc}")
        if msg.reply:
            await msg.respond(reply.SerializeToString())

    def answer(self, call: events_pb2.ModelCall) -> events_pb2.ModelCallReply:
        try:
            kind = call.WhichOneof("call")
            if kind == "tokenize":
                return events_pb2.ModelCallReply(tokenize=self.tokenize(call.tokenize))
            if kind == "detokenize":
                return events_pb2.ModelCallReply(detokenize=self.detokenize(call.detokenize))
            if kind == "info":
                return events_pb2.ModelCallReply(info=self.details)
            raise JobRejected(events_pb2.ERROR_CODE_INVALID_ARGUMENT, "empty model call")
        except JobRejected as exc:
            return events_pb2.ModelCallReply(error_code=exc.code, error_message=str(exc))

    def tokenize(self, request: inference_pb2.TokenizeRequest) -> inference_pb2.TokenizeResponse:
        kind = request.WhichOneof("input")
        if kind == "messages":
            generation_prompt = request.add_generation_prompt if request.HasField("add_generation_prompt") else True
            text = render_chat(self._tokenizer, request.messages.messages, generation_prompt)
            special = request.add_special_tokens if request.HasField("add_special_tokens") else False
        elif kind == "prompt":
            text = request.prompt
            special = request.add_special_tokens if request.HasField("add_special_tokens") else True
        else:
            raise JobRejected(events_pb2.ERROR_CODE_INVALID_ARGUMENT, "either prompt or messages is required")
        ids = text_ids(self._tokenizer, text, special)
        return inference_pb2.TokenizeResponse(
            tokens=ids, count=len(ids), max_model_len=self.details.max_context, model=self.details.model,
            model_version=self.details.model_version,
        )

    def detokenize(self, request: inference_pb2.DetokenizeRequest) -> inference_pb2.DetokenizeResponse:
        if len(request.tokens) > MAX_DETOKENIZE:
            raise JobRejected(events_pb2.ERROR_CODE_INVALID_ARGUMENT, f"at most {MAX_DETOKENIZE} tokens per call, got {len(request.tokens)}")
        bad = next((t for t in request.tokens if t >= self.details.vocabulary_size), None)
        if bad is not None:
            raise JobRejected(
                events_pb2.ERROR_CODE_INVALID_ARGUMENT, f"token {bad} is not in this model's vocabulary (0 to {self.details.vocabulary_size - 1})"
            )
        text = self._tokenizer.decode(list(request.tokens), skip_special_tokens=False, clean_up_tokenization_spaces=False)
        return inference_pb2.DetokenizeResponse(text=text)
