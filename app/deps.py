"""Shared objects, created once in the lifespan handler and handed to routers as dependencies."""
from __future__ import annotations

from typing import Any

from fastapi import Request

from .errors import ApiError


async def state(request: Request) -> Any:
    # async: a sync dependency would send every request through a worker thread
    st = getattr(request.app.state, "svc", None)
    if st is None:
        raise ApiError(503, "not_ready", "the service is still starting")
    return st
