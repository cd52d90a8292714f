"""Per-request context: request id and the timings the encoding path reports as headers."""
from __future__ import annotations

import contextvars
from dataclasses import dataclass, field


@dataclass
class RequestTimings:
    queue_ms: float = 0.0
    inference_ms: float = 0.0
    batch_size: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    encoded: bool = False
    extra: dict[str, str] = field(default_factory=dict)

    def headers(self) -> list[tuple[bytes, bytes]]:
        if not self.encoded:
            return []
        out = [
            (b"x-queue-time-ms", f"{self.queue_ms:.2f}".encode()),
            (b"x-inference-time-ms", f"{self.inference_ms:.2f}".encode()),
            (b"x-batch-size", str(self.batch_size).encode()),
            (b"x-cache-hits", str(self.cache_hits).encode()),
            (b"x-cache-misses", str(self.cache_misses).encode()),
        ]
        out.extend((k.lower().encode(), v.encode()) for k, v in self.extra.items())
        return out


current_timings: contextvars.ContextVar[RequestTimings | None] = contextvars.ContextVar(
    "current_timings", default=None)
current_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("current_request_id", default="-")


def timings() -> RequestTimings:
    t = current_timings.get()
    if t is None:  # outside a request (tests, jobs): a throwaway object
        t = RequestTimings()
    return t
