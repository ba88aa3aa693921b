"""Tokenize, detokenize and model metadata: questions one worker of the model version answers.

The router resolves the version the way a generation request would (explicit version, else the
alias, "stable" by default) and asks that version's workers over NATS request/reply; no worker
answering is UNAVAILABLE, as a generation request for it would be.
"""

from __future__ import annotations

from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from llmserve.common.catalog import STABLE, ModelCatalog
from llmserve.common.errors import ServiceError
from llmserve.common.subjects import MODEL_NAME_RE, Subjects
from llmserve.v1 import events_pb2, inference_pb2


class ModelCalls:
    def __init__(self, nc: NATS, subjects: Subjects, catalog: ModelCatalog, default_model: str, timeout_s: float = 10.0) -> None:
        self._nc = nc
        self._subjects = subjects
        self._catalog = catalog
        self._default_model = default_model
        self._timeout_s = timeout_s

    async def version_of(self, ref: inference_pb2.ModelRef) -> tuple[str, int]:
        model = ref.model or self._default_model
        if not MODEL_NAME_RE.match(model):
            raise ServiceError.invalid(f"model {model!r} is not a valid model name", param="model")
        if ref.HasField("model_version"):
            await self._catalog.get(model, ref.model_version)  # NOT_FOUND when it does not exist
            return model, ref.model_version
        return model, await self._catalog.resolve(model, ref.model_alias or STABLE)

    async def ask(self, ref: inference_pb2.ModelRef, call: events_pb2.ModelCall) -> events_pb2.ModelCallReply:
        model, version = await self.version_of(ref)
        try:
            msg = await self._nc.request(self._subjects.model_calls(model, version), call.SerializeToString(), timeout=self._timeout_s)
        except NoRespondersError:
            raise ServiceError.unavailable(f"no live worker serves {model} v{version}") from None
        except (TimeoutError, NatsTimeoutError):
            raise ServiceError.unavailable(f"no worker of {model} v{version} answered in time") from None
        reply = events_pb2.ModelCallReply.FromString(msg.data)
        if reply.error_code != events_pb2.ERROR_CODE_UNSPECIFIED:
            raise ServiceError(reply.error_code, reply.error_message)
        return reply

    async def tokenize(self, request: inference_pb2.TokenizeRequest) -> inference_pb2.TokenizeResponse:
        if request.WhichOneof("input") is None:
            raise ServiceError.invalid("either prompt or messages is required", param="prompt")
        return (await self.ask(request.model, events_pb2.ModelCall(tokenize=request))).tokenize

    async def detokenize(self, request: inference_pb2.DetokenizeRequest) -> inference_pb2.DetokenizeResponse:
        return (await self.ask(request.model, events_pb2.ModelCall(detokenize=request))).detokenize

    async def info(self, request: inference_pb2.GetModelInfoRequest) -> inference_pb2.ModelDetails:
        return (await self.ask(request.model, events_pb2.ModelCall(info=request))).info
