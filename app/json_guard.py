"""Pure-ASGI middleware: refuse JSON request bodies Python's json module accepts but JSON does not.

``json.loads`` takes the literals ``NaN``, ``Infinity`` and ``-Infinity``, turns ``1e309`` (or a
300-digit number with a fraction) into ``inf``, and turns ``"\\ud800"`` (or raw UTF-8 surrogate
bytes) into a string that cannot be encoded again.  None of these may reach a vector, a filter,
a cache key or the document store, whatever endpoint they are sent to, so they are refused here
with a 422 before any route runs.

Cost: the body is collected (the route reads all of it before parsing anyway) and searched with
one regular expression; only a body that contains a suspicious token is parsed a second time,
with hooks that say exactly what is wrong.  Runs inside RequestContextMiddleware, so the body
size limit applies first.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any, Awaitable, Callable

from .errors import envelope

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# NaN / Infinity literals, exponents of 3+ digits, 300+ digit runs, surrogate escapes and raw
# UTF-8-encoded surrogates (ED A0..BF xx).
_SUSPICIOUS = re.compile(rb"NaN|Infinity|[eE][+-]?\d{3}|\d{300}|\\[uU][dD][89a-fA-F]|\xed[\xa0-\xbf]")
_BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


class _Rejected(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _constant(token: str) -> float:
    raise _Rejected(f"JSON does not allow {token}: numbers must be finite")


def _float(token: str) -> float:
    value = float(token)
    if not math.isfinite(value):
        raise _Rejected(f"number {token[:40]}{'...' if len(token) > 40 else ''} is too large "
                        "(it overflows a 64-bit float)")
    return value


def _check_strings(value: Any) -> None:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise _Rejected("a string contains an unpaired UTF-16 surrogate "
                                "(invalid Unicode)") from None
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def problem(body: bytes) -> str | None:
    """Why ``body`` must be refused, or None (also None for bodies that are not valid JSON at
    all: the route reports those itself)."""
    if not _SUSPICIOUS.search(body):
        return None
    try:
        parsed = json.loads(body, parse_constant=_constant, parse_float=_float)
        _check_strings(parsed)
    except _Rejected as exc:
        return exc.message
    except (ValueError, RecursionError):
        return None
    return None


def _is_json(headers: list[tuple[bytes, bytes]]) -> bool:
    for k, v in headers:
        if k == b"content-type":
            ctype = v.split(b";", 1)[0].strip().lower()
            return ctype == b"application/json" or ctype.endswith(b"+json")
    return True  # FastAPI parses a body without a content type as JSON too


class JsonBodyGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in _BODY_METHODS \
                or not _is_json(scope.get("headers", [])):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: let the app see it
                pending = [message]
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                pending = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]
                reason = problem(pending[0]["body"])
                if reason is not None:
                    payload = json.dumps(envelope("invalid_json_value", reason)).encode()
                    await send({"type": "http.response.start", "status": 422, "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(payload)).encode())]})
                    await send({"type": "http.response.body", "body": payload})
                    return
                break

        async def replay() -> dict[str, Any]:
            if pending:
                return pending.pop(0)
            return await receive()

        await self.app(scope, replay, send)
