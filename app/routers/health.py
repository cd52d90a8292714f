from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: models loaded (503 until then); cache state")
async def readyz(request: Request) -> JSONResponse:
    svc = getattr(request.app.state, "svc", None)
    if svc is None or not svc.ready:
        return JSONResponse({"status": "starting", "models": [], "cache": "unknown"}, status_code=503)
    body: dict[str, Any] = {
        "status": "ready" if svc.pool.loaded else "no_models",
        "models": sorted(svc.pool.loaded),
        "unavailable": svc.pool.unavailable,
        "cache": await svc.cache_health(),
    }
    return JSONResponse(body, status_code=200 if svc.pool.loaded else 503)
