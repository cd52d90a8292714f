"""Pure-ASGI middleware: request id, body size limit, timing headers, access log, metrics."""
from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any, Awaitable, Callable

from .context import RequestTimings, current_request_id, current_timings
from .errors import envelope

access_log = logging.getLogger("semsearch.access")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_SAFE_ID = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


def _request_id(headers: list[tuple[bytes, bytes]]) -> str:
    for k, v in headers:
        if k == b"x-request-id":
            rid = v.decode("latin-1")[:128]
            if rid and all(c in _SAFE_ID for c in rid):
                return rid
    return uuid.uuid4().hex


class _BodyTooLarge(Exception):
    pass


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int,
                 observe: Callable[[str, str, int, float], None] | None = None,
                 log_requests: bool = True) -> None:
        self.app = app
        self.log_requests = log_requests
        self.max_body_bytes = max_body_bytes
        self.observe = observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        headers = scope.get("headers", [])
        rid = _request_id(headers)
        timings = RequestTimings()
        tok_t = current_timings.set(timings)
        tok_r = current_request_id.set(rid)
        status_holder = {"status": 500, "started": False}
        limit = self.max_body_bytes

        for k, v in headers:
            if k == b"content-length":
                try:
                    declared = int(v)
                except ValueError:
                    declared = 0
                if declared > limit:
                    await self._reject(send, rid, declared)
                    self._log(scope, 413, t0, rid)
                    current_timings.reset(tok_t)
                    current_request_id.reset(tok_r)
                    return

        received = 0

        async def limited_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge()
            return message

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                status_holder["started"] = True
                hdrs = list(message.get("headers", []))
                hdrs.append((b"x-request-id", rid.encode()))
                hdrs.extend(timings.headers())
                hdrs.append((b"x-process-time-ms", f"{(time.perf_counter() - t0) * 1000:.2f}".encode()))
                message = {**message, "headers": hdrs}
            await send(message)

        try:
            await self.app(scope, limited_receive, send_wrapper)
        except _BodyTooLarge:
            if not status_holder["started"]:
                await self._reject(send, rid, received)
            status_holder["status"] = 413
        finally:
            current_timings.reset(tok_t)
            current_request_id.reset(tok_r)
            self._log(scope, int(status_holder["status"]), t0, rid)

    def _log(self, scope: Scope, status: int, t0: float, rid: str) -> None:
        elapsed = time.perf_counter() - t0
        route = scope.get("route")
        path_tmpl = getattr(route, "path", None) or "unmatched"
        if self.observe is not None:
            self.observe(scope.get("method", "-"), path_tmpl, status, elapsed)
        if self.log_requests and access_log.isEnabledFor(logging.INFO):
            access_log.info("request", extra={"fields": {
                "request_id": rid, "method": scope.get("method"), "route": path_tmpl,
                "path": scope.get("path"), "status": status, "latency_ms": round(elapsed * 1000, 2)}})

    async def _reject(self, send: Send, rid: str, size: int) -> None:
        body = json.dumps(envelope("payload_too_large",
                                   f"request body exceeds {self.max_body_bytes} bytes",
                                   {"limit": self.max_body_bytes})).encode()
        await send({"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"x-request-id", rid.encode())]})
        await send({"type": "http.response.body", "body": body})


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line; never includes request bodies or credentials."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        elif (rid := current_request_id.get()) != "-":
            out["request_id"] = rid
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(level: str, as_json: bool) -> None:
    root = logging.getLogger()
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLogFormatter() if as_json else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("uvicorn.access",):
        logging.getLogger(noisy).disabled = True
