"""The REST bridge: OpenAI-compatible routes, health, metrics and the playground, over GenerationService.

Errors are OpenAI-shaped ({"error": {message, type, param, code}}) with the matching HTTP status.
A streamed response only starts once the first chunk is in hand, so an error that happens before
any output (unknown model, full queue, no worker) still gets its real status code.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator
from importlib import metadata, resources

import structlog
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from swagger_ui_bundle import swagger_ui_path

from llmserve.common import tracing
from llmserve.common.auth import INFERENCE, Authenticator, Principal
from llmserve.common.catalog import ModelCatalog
from llmserve.common.errors import ServiceError, dependency_error
from llmserve.common.liveness import LivenessTable
from llmserve.common.startup import Readiness
from llmserve.common.subjects import MODEL_NAME_RE
from llmserve.router.callers import CallerGate
from llmserve.router.generation import GenerationService
from llmserve.router.model_calls import ModelCalls
from llmserve.router.openai_protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeBody,
    Kind,
    TokenizeBody,
    error_body,
)
from llmserve.router.openai_stream import Answer, interleave, service_error_body, sse_events, whole_response
from llmserve.v1 import common_pb2, events_pb2

log = structlog.get_logger()

try:
    SERVER_VERSION = metadata.version("llmserve-router")
except metadata.PackageNotFoundError:
    SERVER_VERSION = "unknown"

def error_response(exc: ServiceError) -> JSONResponse:
    headers = {}
    if exc.retry_after_whole_s is not None:
        headers["Retry-After"] = str(exc.retry_after_whole_s)
    if exc.http_status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(service_error_body(exc), status_code=exc.http_status, headers=headers)





class RestBridge:
    def __init__(
        self, gate: CallerGate, generation: GenerationService, catalog: ModelCatalog, liveness: LivenessTable, model_calls: ModelCalls
    ) -> None:
        self._gate = gate
        self._generation = generation
        self._catalog = catalog
        self._liveness = liveness
        self.model_calls = model_calls

    async def _job(
        self, body: ChatCompletionRequest | CompletionRequest, request: Request, principal: Principal | None, admit: bool = True
    ) -> events_pb2.Job:
        proto = body.to_request()
        proto.request_id = request.headers.get("x-request-id", "")
        timeout = request.headers.get("x-request-timeout")
        deadline = 0.0
        if timeout:
            try:
                deadline = time.time() + float(timeout)
            except ValueError:
                raise ServiceError.invalid("X-Request-Timeout must be a number of seconds", param="X-Request-Timeout") from None
        return await self._gate.job(proto, principal, deadline=deadline, tenant_header=request.headers.get("x-tenant", ""), admit=admit)

    async def complete(
        self, kind: Kind, body: ChatCompletionRequest | CompletionRequest, request: Request, principal: Principal | None
    ) -> Response:
        resume_from = resume_index(request, body)
        attach = resume_from is not None
        job = await self._job(body, request, principal, admit=not attach)
        jobs = self._gate.choices(job, body.n)
        parent = tracing.extract(request.headers)
        chunks = interleave([
            self._gate.metered(self._generation.stream(j, api="rest", trace_parent=parent, attach=attach), principal) for j in jobs
        ])
        headers = {"x-request-id": job.request_id}
        if body.stream:
            # Wait for the first chunk before answering 200: errors before any output keep their status.
            first = await anext(chunks)
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(
                sse_events(kind, job, first, chunks, len(jobs), include_usage, resume_from),
                media_type="text/event-stream",
                headers={**headers, "Cache-Control": "no-cache"},
            )
        answers = await collect_unless_gone(chunks, len(jobs), request)
        if answers is None:
            # The client left; the request was stopped and logged as cancelled. Nobody reads this.
            return Response(status_code=499)
        return JSONResponse(whole_response(kind, job, answers), headers=headers)

    async def models(self) -> dict:
        data = []
        for name in await self._catalog.model_names():
            try:
                data.append(await self.model(name))
            except ServiceError:
                continue  # a model without a stable version cannot be requested by name alone
        return {"object": "list", "data": data}

    async def model(self, name: str) -> dict:
        """One model as OpenAI lists it; NOT_FOUND unless it has a stable version."""
        record = await self._catalog.get_by_alias(name)
        return {"id": name, "object": "model", "created": int(record.created_at), "owned_by": "llmserve"}


def resume_index(request: Request, body: ChatCompletionRequest | CompletionRequest) -> int | None:
    """A re-attach (the client's earlier router died mid-stream): the same request again with its
    X-Request-Id and the id of the last event it has in Last-Event-ID (empty: none yet). Returns the
    index of the first piece to send, or None for an ordinary request."""
    last = request.headers.get("last-event-id")
    if last is None:
        return None
    if not request.headers.get("x-request-id"):
        raise ServiceError.invalid("Last-Event-ID re-attaches to a request: send its X-Request-Id too", param="X-Request-Id")
    if not body.stream or body.n != 1:
        raise ServiceError.invalid("only a streamed request of one choice can be re-attached to (stream=true, n=1)", param="Last-Event-ID")
    if not last.strip():
        return 0
    try:
        index = int(last)
    except ValueError:
        index = -1
    if index < 0:
        raise ServiceError.invalid("Last-Event-ID must be the id of an event of the stream (a whole number)", param="Last-Event-ID")
    return index + 1


async def collect_unless_gone(
    chunks: AsyncGenerator[tuple[int, events_pb2.TokenChunk], None], n: int, request: Request, poll_s: float = 0.25
) -> list[Answer] | None:
    """A non-streamed answer of n choices (their texts, final chunks and logprobs), or None when the
    client disconnected first.

    Starlette cancels a streamed response's generator when its client goes, but not a handler that is
    still collecting: without this a client that gave up kept a worker slot busy to its last token.
    Stopping the collection closes the stream, which cancels the jobs on their workers.
    """

    async def collect() -> list[Answer]:
        texts: list[list[str]] = [[] for _ in range(n)]
        logprobs: list[list[common_pb2.TokenLogprob]] = [[] for _ in range(n)]
        finals: list[events_pb2.TokenChunk | None] = [None] * n
        async for index, chunk in chunks:
            texts[index].append(chunk.text)
            logprobs[index].extend(chunk.logprobs)
            if chunk.final:
                finals[index] = chunk
        assert all(f is not None for f in finals)
        return [Answer("".join(t), f, lp) for t, f, lp in zip(texts, finals, logprobs, strict=True)]

    task = asyncio.ensure_future(collect())
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll_s)
            if done:
                return task.result()
            if await request.is_disconnected():
                return None
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await chunks.aclose()


def caller(authenticator: Authenticator, role: int):
    """A dependency that admits a request whose key may act in `role` and keeps its Principal in
    request.state.principal (None with auth off). /healthz, /readyz, /metrics and the playground
    page stay open."""

    async def check(request: Request) -> None:
        peer = request.client.host if request.client else ""
        request.state.principal = await authenticator.authenticate(request.headers.get("authorization"), role, peer=peer)

    return check


def create_app(bridge: RestBridge, readiness: Readiness, authenticator: Authenticator, admin: APIRouter | None = None) -> FastAPI:
    app = FastAPI(
        title="llmserve",
        version=SERVER_VERSION,
        description="OpenAI-compatible API of an llmserve cluster, plus health, metrics and a playground.",
        docs_url=None,
        redoc_url=None,
    )
    _add_docs(app)
    _add_error_handlers(app)
    _add_openai_routes(app, bridge, caller(authenticator, INFERENCE))
    _add_operations_routes(app, readiness)
    if admin is not None:
        app.include_router(admin)

    @app.get("/v1/auth", include_in_schema=False)
    async def auth_mode() -> dict:
        # The playground asks for a key when one is required.
        return {"required": authenticator.required}

    @app.get("/", include_in_schema=False)
    async def playground() -> HTMLResponse:
        return HTMLResponse(resources.files("llmserve.router").joinpath("static/playground.html").read_text())

    return app


def _add_docs(app: FastAPI) -> None:
    # The interactive docs' script and styles are served from the swagger-ui-bundle package, so /docs
    # works on machines that cannot reach a CDN.
    app.mount("/static/swagger", StaticFiles(directory=str(swagger_ui_path)), name="swagger")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="llmserve API",
            swagger_js_url="/static/swagger/swagger-ui-bundle.js",
            swagger_css_url="/static/swagger/swagger-ui.css",
            swagger_favicon_url="data:,",
        )


def _add_error_handlers(app: FastAPI) -> None:
    """Every error in OpenAI's shape: ServiceError by its code, a bad body as 400 naming the field,
    Redis or NATS away as 503, anything else as 500 (logged)."""

    @app.exception_handler(ServiceError)
    async def _service_error(_request: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        message = f"{param}: {first.get('msg', 'invalid value')}" if param else first.get("msg", "invalid request body")
        return JSONResponse(error_body(message, "invalid_request_error", param, "invalid_argument"), status_code=400)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        unavailable = dependency_error(exc)
        if unavailable is not None:
            return error_response(unavailable)
        log.exception("rest_request_failed")
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}", "server_error", None, "internal"), status_code=500)

    app.add_middleware(_CleanLogContext)


class _CleanLogContext:
    """Each HTTP request starts with a clean logging context. A plain ASGI middleware: Starlette's
    BaseHTTPMiddleware (`@app.middleware`) hides the client's disconnect from the handlers below it,
    which collect_unless_gone relies on."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            structlog.contextvars.unbind_contextvars("request_id", "model")
        await self.app(scope, receive, send)


def _add_openai_routes(app: FastAPI, bridge: RestBridge, inference_caller) -> None:
    checked = [Depends(inference_caller)]

    @app.post("/v1/chat/completions", tags=["openai"], summary="Chat completion (streamed with stream=true)", dependencies=checked)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return await bridge.complete("chat", body, request, request.state.principal)

    @app.post("/v1/completions", tags=["openai"], summary="Text completion (streamed with stream=true)", dependencies=checked)
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await bridge.complete("completion", body, request, request.state.principal)

    @app.get("/v1/models", tags=["openai"], summary="Models that can be requested", dependencies=checked)
    async def models() -> dict:
        return await bridge.models()

    @app.get("/v1/models/{model_id}", tags=["openai"], summary="One model", dependencies=checked)
    async def model(model_id: str) -> dict:
        if not MODEL_NAME_RE.match(model_id):
            raise ServiceError.not_found(f"model {model_id!r} is not published")
        return await bridge.model(model_id)

    @app.post("/tokenize", tags=["tokenizer"], summary="Token ids of a prompt or chat messages (vLLM's shape)", dependencies=checked)
    async def tokenize(body: TokenizeBody) -> dict:
        answer = await bridge.model_calls.tokenize(body.to_request())
        return {"count": answer.count, "max_model_len": answer.max_model_len, "tokens": list(answer.tokens)}

    @app.post("/detokenize", tags=["tokenizer"], summary="The text of token ids (vLLM's shape)", dependencies=checked)
    async def detokenize(body: DetokenizeBody) -> dict:
        return {"prompt": (await bridge.model_calls.detokenize(body.to_request())).text}


def _add_operations_routes(app: FastAPI, readiness: Readiness) -> None:
    @app.get("/healthz", tags=["operations"], summary="The router process is alive")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], summary="A request for the default model would be served now")
    async def readyz() -> JSONResponse:
        status, body = readiness.probe()
        return JSONResponse(body, status_code=status)

    @app.get("/version", tags=["operations"], summary="The router's version")
    async def version() -> dict:
        return {"version": SERVER_VERSION}

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
