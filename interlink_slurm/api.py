"""HTTP routes of the plugin, as interLink calls them. Thin: parse, call the service, answer.

Every error answer is ``text/plain`` and one sentence naming what is wrong: interLink hands the
body of a failed /create to the user as the pod's failure message.
"""

from __future__ import annotations

import hmac
import itertools
import json
import logging
import random
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from interlink_slurm import __version__, logsetup
from interlink_slurm.errors import (
    BadRequest,
    NotFound,
    PluginError,
    PodRejected,
    SchedulerError,
    SchedulerUnavailable,
    StorageError,
    SubmitRejected,
    describe_validation_error,
)
from interlink_slurm.metrics import Metrics
from interlink_slurm.service import LOG_SOURCES, Service
from interlink_slurm.wire import LogRequest, Pod, RetrievedPodData

log = logging.getLogger(__name__)
access_log = logging.getLogger("interlink_slurm.access")

M = TypeVar("M")

RETRY_AFTER_SECONDS = "10"
# Probes and metrics answer without the token (no pod data in them).
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
KNOWN_PATHS = frozenset({"/create", "/delete", "/status", "/getLogs", *OPEN_PATHS})
STATUS_FOR: list[tuple[type[PluginError], int]] = [
    (BadRequest, 400),
    (NotFound, 404),
    (PodRejected, 422),
    (SubmitRejected, 422),
    (SchedulerUnavailable, 503),
    (StorageError, 507),
    (SchedulerError, 502),
]


class TooLarge(BadRequest):
    """A request body over max_body_bytes (413)."""


def _status_for(err: PluginError) -> int:
    if isinstance(err, TooLarge):
        return 413
    for cls, code in STATUS_FOR:
        if isinstance(err, cls):
            return code
    return 500


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"the request body is larger than the limit of {limit} bytes")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"the request body is larger than the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


_REQUIRED = object()

# Deeper than any Kubernetes object (a pod nests about 15 levels); json.loads and the models
# recurse once per level, and a body nested thousands deep would exhaust the stack.
MAX_JSON_DEPTH = 128
_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = [1 if chr(b) in "[{" else -1 for b in range(256)]


def _too_deep(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the JSON text nests arrays and objects deeper than ``limit``, found without
    parsing it: strings removed, then the running count of opening less closing brackets,
    a block at a time so that a deep body is known as such at its start."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    marks = _STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    depth = 0
    for start in range(0, len(marks), 1 << 16):
        steps = itertools.accumulate(map(_STEP.__getitem__, marks[start : start + (1 << 16)]))
        block = [depth + d for d in steps]
        if max(block) > limit:
            return True
        depth = block[-1]
    return False


async def _json(request: Request, limit: int, empty: Any = _REQUIRED) -> Any:
    """The body as JSON; an empty body is refused unless ``empty`` says what it means."""
    body = await _body(request, limit)
    if not body.strip():
        if empty is _REQUIRED:
            raise BadRequest("the request body is empty: expected JSON")
        return empty
    if _too_deep(body):
        raise BadRequest(
            f"the request body nests arrays and objects more than {MAX_JSON_DEPTH} levels deep"
        )
    try:
        return json.loads(body)
    except RecursionError as err:
        raise BadRequest("the request body nests arrays and objects too deeply") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        where = (
            f" (line {err.lineno}, column {err.colno})"
            if isinstance(err, json.JSONDecodeError)
            else ""
        )
        reason = err.msg if isinstance(err, json.JSONDecodeError) else "not UTF-8"
        raise BadRequest(f"the request body is not valid JSON: {reason}{where}") from err


def _parse(adapter: TypeAdapter[M], data: Any, what: str) -> M:
    try:
        return adapter.validate_python(data)
    except ValidationError as err:
        raise BadRequest(f"invalid {what}: {describe_validation_error(err)}") from err


_CREATE = TypeAdapter(RetrievedPodData)
_PODS = TypeAdapter(list[Pod])
_LOGS = TypeAdapter(LogRequest)
_POD = TypeAdapter(Pod)


def _dump(model: BaseModel | list[Any]) -> Any:
    if isinstance(model, list):
        return [_dump(m) for m in model]
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def create_app(service: Service, token: str | None) -> FastAPI:
    """The plugin's HTTP API over ``service``: interLink's routes (create, delete, status,
    getLogs), metrics and probes; every request but the open ones needs ``token`` when set."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(
        title="interlink-slurm",
        version=__version__,
        description="interLink plugin: Kubernetes pods as Slurm jobs",
        lifespan=lifespan,
    )
    _add_guard(app, token, service.metrics)
    _add_pod_routes(app, service, service.settings.max_body_bytes)
    _add_service_routes(app, service)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _add_guard(app: FastAPI, token: str | None, metrics: Metrics) -> None:
    """The middleware every request goes through (Guard), and PluginError raised in a route
    answered from errors.py's table."""
    app.add_middleware(Guard, token=token, metrics=metrics)

    @app.exception_handler(PluginError)
    async def plugin_error(request: Request, err: PluginError) -> Response:
        return _error(err, request.method, request.url.path)


class Guard:
    """Every request's id, the bearer token, the one place where errors become answers,
    metrics and the access log. Pure ASGI: Starlette's ``@app.middleware("http")`` runs each
    request's route in a task of its own and passes the answer through a memory stream, a
    cost paid on every /create."""

    def __init__(self, app: ASGIApp, *, token: str | None, metrics: Metrics) -> None:
        self.app = app
        self.token = token.encode() if token is not None else None
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        path: str = scope["path"]
        method: str = scope["method"]
        # Not uuid4: os.urandom is a system call, made on every request in the event loop.
        request_id = headers.get("InterLink-Http-Session") or f"{random.getrandbits(48):012x}"
        logsetup.request_id.set(request_id)
        if self.token is not None and path not in OPEN_PATHS:
            scheme, _, value = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                value.strip().encode(), self.token
            ):
                denied = PlainTextResponse(
                    "missing or wrong bearer token in the Authorization header",
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer", "X-Request-Id": request_id},
                )
                await denied(scope, receive, send)
                return
        started = time.perf_counter()
        answered: list[int] = []
        request_header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *(h for h in message.get("headers", ()) if h[0].lower() != b"x-request-id"),
                    request_header,
                ]
                answered.append(message["status"])
                # Measured when the answer starts, as a streamed log's may never end.
                self._observe(method, path, message["status"], time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as err:
            if answered:
                raise  # the answer has started: nothing else can be said now
            if isinstance(err, PluginError):
                response = _error(err, method, path)
            else:
                log.exception("unexpected error on %s %s [%s]", method, path, request_id)
                response = PlainTextResponse(
                    f"internal error in interlink-slurm (request {request_id}); "
                    "see the service log",
                    status_code=500,
                )
            await response(scope, receive, send_with_id)

    def _observe(self, method: str, path: str, status: int, elapsed: float) -> None:
        endpoint = path if path in KNOWN_PATHS else "other"
        self.metrics.requests.labels(endpoint, str(status)).inc()
        self.metrics.request_seconds.labels(endpoint).observe(elapsed)
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(
                "%s %s %d",
                method,
                path,
                status,
                extra={"status": status, "duration_ms": round(elapsed * 1000, 2)},
            )


def _error(err: PluginError, method: str, path: str) -> Response:
    code = _status_for(err)
    headers = {"Retry-After": RETRY_AFTER_SECONDS} if code == 503 else {}
    log.log(
        logging.WARNING if code >= 500 else logging.INFO,
        "%s %s → %d: %s",
        method,
        path,
        code,
        err,
    )
    return PlainTextResponse(str(err), status_code=code, headers=headers)


def _one(data: Any, what: str) -> Any:
    # interLink <= 0.4 sent a one-element array where 0.6 sends an object.
    if isinstance(data, list):
        if len(data) != 1:
            raise BadRequest(f"expected one {what}, got an array of {len(data)}")
        return data[0]
    return data


def _add_pod_routes(app: FastAPI, service: Service, limit: int) -> None:
    """interLink's routes; each reads at most ``limit`` bytes of body and parses it itself."""

    @app.post("/create")
    async def create(request: Request) -> Response:
        data = _one(await _json(request, limit), "pod (a RetrievedPodData object)")
        if not isinstance(data, dict):
            raise BadRequest("expected a RetrievedPodData JSON object with a 'pod' key")
        pod_data = _parse(_CREATE, data, "pod")
        answer = await service.create(pod_data)
        return JSONResponse(_dump(answer))

    @app.post("/delete", operation_id="delete_post")
    @app.delete("/delete", operation_id="delete_delete")
    async def delete(request: Request) -> Response:
        pod = _parse(_POD, _one(await _json(request, limit), "pod"), "pod")
        return PlainTextResponse(await service.delete(pod))

    @app.get("/status", operation_id="status_get")
    @app.post("/status", operation_id="status_post")
    async def status(request: Request) -> Response:
        data = await _json(request, limit, empty=[])  # no body: the ping
        if isinstance(data, dict):
            data = [data]
        pods = _parse(_PODS, data, "status request")
        if not pods:
            return JSONResponse(_dump(await service.ping()))
        return JSONResponse(_dump(await service.status(pods)))

    @app.get("/getLogs", operation_id="getLogs_get")
    @app.post("/getLogs", operation_id="getLogs_post")
    async def get_logs(request: Request) -> Response:
        """A container's log; ``?source=job`` gives the batch job's own output instead,
        ``?source=pull`` the output of the image pulls on the submit host."""
        req = _parse(_LOGS, await _json(request, limit), "log request")
        source = request.query_params.get("source", "container")
        if source not in LOG_SOURCES:
            raise BadRequest(f"source must be one of {', '.join(LOG_SOURCES)}, not {source!r}")
        chunks = await service.logs(req, source=source)
        media = "text/plain; charset=utf-8"
        if req.Opts.Follow:
            return StreamingResponse(chunks, media_type=media)
        return Response(b"".join([c async for c in chunks]), media_type=media)


def _add_service_routes(app: FastAPI, service: Service) -> None:
    """Prometheus metrics and the liveness and readiness probes."""
    metrics = service.metrics

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        age = service.snapshot_age()
        if age is not None:
            metrics.refresh_age.set(age)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    async def healthz() -> Response:
        return PlainTextResponse("ok")

    @app.get("/readyz")
    async def readyz() -> Response:
        await service.ready()
        return PlainTextResponse("ready")


# What each route reads from its body. The routes parse raw bodies themselves (to answer with
# sentences that name the field), so FastAPI cannot see these; the OpenAPI document declares
# them for clients and for schema-driven fuzzing.
REQUEST_BODIES: dict[tuple[str, str], TypeAdapter[Any]] = {
    ("/create", "post"): _CREATE,
    ("/delete", "post"): _POD,
    ("/delete", "delete"): _POD,
    ("/status", "get"): _PODS,
    ("/status", "post"): _PODS,
    ("/getLogs", "get"): _LOGS,
    ("/getLogs", "post"): _LOGS,
}


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi

    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for (path, method), adapter in REQUEST_BODIES.items():
        body = adapter.json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
        components.update(body.pop("$defs", {}))
        operation = schema["paths"][path][method]
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body}},
        }
    app.openapi_schema = schema
    return schema
