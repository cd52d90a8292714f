"""GET /metrics: Prometheus text format, from the app's own registry (see app/metrics.py)."""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4

router = APIRouter(tags=["operations"])


@router.get("/metrics", summary="Prometheus metrics (text format; OpenMetrics on request)",
            response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_PLAIN_0_0_4: {"schema": {"type": "string"}}}}})
async def metrics(request: Request) -> Response:
    m = getattr(request.app.state, "metrics", None)
    if m is None:
        return Response(content=b"", media_type=CONTENT_TYPE_PLAIN_0_0_4)
    body, content_type = m.render(request.headers.get("accept"))
    return Response(content=body, headers={"Content-Type": content_type})
