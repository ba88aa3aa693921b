"""The gRPC Inference service: a thin layer over GenerationService; errors become statuses in the interceptor."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc

from llmserve.common import tracing
from llmserve.common.catalog import ModelCatalog
from llmserve.common.errors import ServiceError
from llmserve.common.grpc_server import CALLER
from llmserve.common.liveness import LivenessTable
from llmserve.router.callers import CallerGate
from llmserve.router.generation import GenerationService
from llmserve.router.model_calls import ModelCalls
from llmserve.router.tools import ToolCallParser
from llmserve.v1 import common_pb2, events_pb2, inference_pb2, inference_pb2_grpc


class InferenceServicer(inference_pb2_grpc.InferenceServicer):
    def __init__(
        self, gate: CallerGate, generation: GenerationService, catalog: ModelCatalog, liveness: LivenessTable, model_calls: ModelCalls
    ) -> None:
        self._gate = gate
        self._generation = generation
        self._catalog = catalog
        self._liveness = liveness
        self._model_calls = model_calls

    async def _job(self, request: inference_pb2.GenerateRequest, context: grpc.aio.ServicerContext, admit: bool = True) -> events_pb2.Job:
        remaining = context.time_remaining()
        return await self._gate.job(
            request,
            CALLER.get(),
            deadline=time.time() + remaining if remaining is not None else 0.0,
            tenant_header=_metadata(context, "x-tenant"),
            admit=admit,
        )

    def _chunks(self, job: events_pb2.Job, context: grpc.aio.ServicerContext, attach: bool = False) -> AsyncIterator[events_pb2.TokenChunk]:
        stream = self._generation.stream(job, trace_parent=tracing.extract(context.invocation_metadata()), attach=attach)
        return self._gate.metered(stream, CALLER.get())

    async def GenerateStream(
        self, request: inference_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[inference_pb2.GenerateStreamResponse]:
        # Re-attach (the client's earlier router died): the same request again, with its id and the
        # index of the first message the client lacks; not a new request, so no rate-limit admission.
        attach = request.HasField("resume_from_index")
        if attach and not request.request_id:
            raise ServiceError.invalid("resume_from_index needs the request_id of the request to re-attach to", param="request_id")
        job = await self._job(request, context, admit=not attach)
        await context.send_initial_metadata((("x-request-id", job.request_id),))
        skip_below = request.resume_from_index if attach else 0
        calls = ToolCallParser() if job.tools else None
        # One message per piece of the answer, numbered by the piece's index, so that a client
        # re-attaching through another router resumes exactly after the last message it has.
        async for chunk in self._chunks(job, context, attach):
            text, found = chunk.text, []
            if calls is not None:
                text, found = calls.feed(text)
                if chunk.final:
                    text += calls.finish()
            if chunk.index < skip_below:
                continue  # the client has it (the parser above still saw it)
            finish = chunk.finish_reason
            if chunk.final and calls is not None and calls.calls:
                finish = common_pb2.FINISH_REASON_TOOL_CALLS
            response = inference_pb2.GenerateStreamResponse(
                request_id=job.request_id,
                index=chunk.index,
                text=text,
                finish_reason=finish,
                model=job.model,
                model_version=chunk.model_version,
                logprobs=chunk.logprobs,
                tool_calls=found,
            )
            if chunk.final:
                response.usage.CopyFrom(chunk.usage)
            yield response

    async def Generate(
        self, request: inference_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.GenerateResponse:
        job = await self._job(request, context)
        parts: list[str] = []
        response = inference_pb2.GenerateResponse(request_id=job.request_id, model=job.model)
        async for chunk in self._chunks(job, context):
            parts.append(chunk.text)
            response.logprobs.extend(chunk.logprobs)
            if chunk.final:
                response.model = job.model  # the fallback model, when one served the request
                response.finish_reason = chunk.finish_reason
                response.usage.CopyFrom(chunk.usage)
                response.model_version = chunk.model_version
        response.text = "".join(parts)
        if job.tools:
            said, calls = ToolCallParser.split(response.text)
            if calls:
                response.text = said
                response.tool_calls.extend(calls)
                response.finish_reason = common_pb2.FINISH_REASON_TOOL_CALLS
        return response

    async def ListModels(
        self, request: inference_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.ListModelsResponse:
        return await list_models(self._catalog, self._liveness)

    async def Tokenize(self, request: inference_pb2.TokenizeRequest, context: grpc.aio.ServicerContext) -> inference_pb2.TokenizeResponse:
        return await self._model_calls.tokenize(request)

    async def Detokenize(
        self, request: inference_pb2.DetokenizeRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.DetokenizeResponse:
        return await self._model_calls.detokenize(request)

    async def GetModelInfo(self, request: inference_pb2.GetModelInfoRequest, context: grpc.aio.ServicerContext) -> inference_pb2.ModelDetails:
        return await self._model_calls.info(request)


async def list_models(catalog: ModelCatalog, liveness: LivenessTable) -> inference_pb2.ListModelsResponse:
    response = inference_pb2.ListModelsResponse()
    for name in await catalog.model_names():
        versions = await catalog.versions(name)
        try:
            stable = await catalog.resolve(name)
        except Exception:
            stable = 0
        response.models.append(
            inference_pb2.ModelInfo(
                name=name, stable_version=stable, versions=versions, live_workers=len(liveness.live_workers(name))
            )
        )
    return response


def _metadata(context: grpc.aio.ServicerContext, key: str) -> str:
    for k, v in context.invocation_metadata() or ():
        if k == key:
            return v if isinstance(v, str) else v.decode()
    return ""


