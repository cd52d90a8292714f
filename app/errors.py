"""One JSON error envelope for every failure: {"error": {"type", "message", "details"}}."""
from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("semsearch.errors")


class ApiError(Exception):
    """An error with an HTTP status, a machine-readable type and a human message."""

    def __init__(self, status: int, type: str, message: str, details: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message
        self.details = details or {}
        self.headers = headers


class ErrorBody(BaseModel):
    type: str = Field(description="machine-readable error type, e.g. collection_not_found")
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorEnvelope(BaseModel):
    """The body of every error response."""
    error: ErrorBody


_ERROR_MEANINGS = {
    400: "Bad request (invalid value, filter, name or vector; unparsable body)",
    401: "Missing or unknown API key (auth is on)", 403: "The API key lacks the needed scope",
    404: "Not found", 409: "Conflict", 413: "Request too large (body, texts, documents)",
    422: "Validation error", 429: "Overloaded: retry after Retry-After seconds",
    503: "Not ready, or storage temporarily unavailable", 507: "Storage full",
}
# Documented on every operation (FastAPI(responses=...)), so clients and the schema fuzzer know
# the envelope; it also replaces FastAPI's default 422 schema, which this service never sends.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorEnvelope, "description": text} for code, text in _ERROR_MEANINGS.items()}


def envelope(type: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"type": type, "message": message, "details": details or {}}}


def error_response(status: int, type: str, message: str, details: dict[str, Any] | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(envelope(type, message, details), status_code=status, headers=headers)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


def _allowed_methods(request: Request) -> str:
    from starlette.routing import Match

    methods: set[str] = set()
    for route in request.app.router.routes:
        if getattr(route, "methods", None) and route.matches(request.scope)[0] != Match.NONE:
            methods |= set(route.methods)
    if "GET" in methods:
        methods.add("HEAD")
    return ", ".join(sorted(methods))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.type, exc.message, exc.details, exc.headers)

    from index.errors import IndexServiceError

    @app.exception_handler(IndexServiceError)
    async def _index_error(_: Request, exc: IndexServiceError) -> JSONResponse:
        return error_response(exc.http_status, exc.type, exc.message, _jsonable(exc.details))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")),
                   "type": str(e.get("type", ""))} for e in exc.errors()]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(p for p in first["loc"] if p != "body") or "body"
        return error_response(422, "validation_error", f"{where}: {first['msg']}",
                              {"errors": _jsonable(errors)})

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kinds = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
                 401: "unauthorized", 403: "forbidden", 429: "rate_limited"}
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:  # Allow: every method of every route on this path
            headers["Allow"] = _allowed_methods(request)
        return error_response(exc.status_code, kinds.get(exc.status_code, "http_error"),
                              str(exc.detail), headers=headers or None)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # A bug, not bad input: log with the traceback, answer without leaking internals.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal server error")
