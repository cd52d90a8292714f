"""Background jobs: long clustering and training runs, polled with ``GET /v1/jobs/{id}``.

Concurrency is bounded: at most ``max_concurrent_jobs`` jobs run at once (setting, default 2);
further jobs wait in a queue (status ``queued``) of at most ``max_queued_jobs`` entries; beyond
that a submission is refused with 429 and ``Retry-After``.  Jobs live in memory only: a finished
job is kept ``job_ttl_s`` seconds after it finished, and no job (queued, running or finished)
survives a restart of the service.

A job is an ``async`` function taking a :class:`JobContext`; CPU-heavy parts run in worker
threads (``asyncio.to_thread``) and report progress in 0..1 through ``ctx.progress``.
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from ..errors import ApiError

log = logging.getLogger("semsearch.jobs")

DEFAULT_MAX_QUEUED = 64
DEFAULT_TTL_S = 3600.0
_ID = re.compile(r"[0-9a-f]{32}")


@dataclass
class Job:
    id: str
    kind: str
    status: str = "queued"          # queued | running | succeeded | failed | cancelled
    progress: float = 0.0
    result: Any = None
    error: dict[str, Any] | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    finished_mono: float | None = None
    task: asyncio.Task[None] | None = None

    @property
    def done(self) -> bool:
        return self.status in ("succeeded", "failed", "cancelled")

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "status": self.status,
                "progress": round(self.progress, 4), "created_at": _iso(self.created_at),
                "started_at": _iso(self.started_at), "finished_at": _iso(self.finished_at),
                "result": self.result, "error": self.error}


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


class JobContext:
    """What a running job may touch: its progress (monotone, clamped to 0..1)."""

    def __init__(self, job: Job) -> None:
        self._job = job

    def progress(self, fraction: float) -> None:
        # Plain attribute write: safe to call from a worker thread.
        self._job.progress = max(self._job.progress, min(1.0, max(0.0, float(fraction))))


JobFn = Callable[[JobContext], Awaitable[Any]]


class JobManager:
    def __init__(self, max_concurrent: int = 2, max_queued: int = DEFAULT_MAX_QUEUED,
                 ttl_s: float = DEFAULT_TTL_S) -> None:
        self.max_concurrent = max(1, int(max_concurrent))
        self.max_queued = max(0, int(max_queued))
        self.ttl_s = ttl_s
        self._jobs: dict[str, Job] = {}
        self._slots = asyncio.Semaphore(self.max_concurrent)
        self._closed = False

    # -- submission ----------------------------------------------------------------------
    def submit(self, kind: str, fn: JobFn) -> Job:
        self._prune()
        if self._closed:
            raise ApiError(503, "shutting_down", "the service is stopping; no new jobs")
        unfinished = sum(1 for j in self._jobs.values() if not j.done)
        if unfinished >= self.max_concurrent + self.max_queued:
            waiting = unfinished - self.max_concurrent
            raise ApiError(429, "too_many_jobs",
                           f"{waiting} jobs are already waiting (limit {self.max_queued}); "
                           "retry later", {"queued": waiting, "limit": self.max_queued},
                           headers={"Retry-After": "5"})
        job = Job(id=uuid.uuid4().hex, kind=kind)
        self._jobs[job.id] = job
        job.task = asyncio.get_running_loop().create_task(self._run(job, fn),
                                                          name=f"job-{kind}-{job.id}")
        job.task.add_done_callback(lambda _t, j=job: _mark_cancelled(j))
        return job

    async def _run(self, job: Job, fn: JobFn) -> None:
        try:
            async with self._slots:
                job.status, job.started_at = "running", time.time()
                result = await fn(JobContext(job))
            job.result, job.status, job.progress = result, "succeeded", 1.0
        except asyncio.CancelledError:
            job.status = "cancelled"
            job.error = {"type": "cancelled", "message": "the job was cancelled", "details": {}}
        except ApiError as exc:
            job.status = "failed"
            job.error = {"type": exc.type, "message": exc.message, "details": exc.details,
                         "status": exc.status}
        except Exception as exc:  # index errors carry their own type; anything else is a bug
            status = getattr(exc, "http_status", None)
            if isinstance(status, int) and hasattr(exc, "type"):
                job.error = {"type": exc.type, "message": getattr(exc, "message", str(exc)),
                             "details": getattr(exc, "details", {}), "status": status}
            else:
                log.exception("job %s (%s) failed", job.id, job.kind)
                job.error = {"type": "internal_error", "message": "the job failed unexpectedly",
                             "details": {}, "status": 500}
            job.status = "failed"
        finally:
            job.finished_at, job.finished_mono = time.time(), time.monotonic()

    # -- queries -------------------------------------------------------------------------
    def get(self, job_id: str) -> Job:
        self._prune()
        job = self._jobs.get(job_id) if isinstance(job_id, str) and _ID.fullmatch(job_id) else None
        if job is None:
            raise ApiError(404, "job_not_found",
                           f"job {job_id[:40]!r} does not exist (finished jobs are kept "
                           f"{int(self.ttl_s)}s; jobs do not survive a restart)",
                           {"job_id": job_id[:40]})
        return job

    def list(self) -> list[Job]:
        self._prune()
        return sorted(self._jobs.values(), key=lambda j: j.created_at, reverse=True)

    def cancel(self, job_id: str) -> Job:
        job = self.get(job_id)
        if not job.done and job.task is not None:
            job.task.cancel()
        return job

    def stats(self) -> dict[str, int]:
        out = {"queued": 0, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 0}
        for j in self._jobs.values():
            out[j.status] += 1
        return out

    def _prune(self) -> None:
        now = time.monotonic()
        for jid in [j.id for j in self._jobs.values()
                    if j.finished_mono is not None and now - j.finished_mono > self.ttl_s]:
            del self._jobs[jid]

    async def aclose(self) -> None:
        """Cancel unfinished jobs (their results would be lost with the process anyway)."""
        self._closed = True
        tasks = [j.task for j in self._jobs.values() if j.task is not None and not j.done]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


def _mark_cancelled(job: Job) -> None:
    """A task cancelled before it ever ran never reaches ``_run``'s handlers."""
    if not job.done:
        job.status = "cancelled"
        job.error = {"type": "cancelled", "message": "the job was cancelled", "details": {}}
        job.finished_at, job.finished_mono = time.time(), time.monotonic()


def get_jobs(svc: Any) -> JobManager:
    """The service's job manager (created with the service; lazily if the lifespan did not)."""
    jobs = svc.extras.get("jobs")
    if jobs is None:
        s = svc.settings
        jobs = JobManager(s.max_concurrent_jobs, getattr(s, "max_queued_jobs", DEFAULT_MAX_QUEUED),
                          getattr(s, "job_ttl_s", DEFAULT_TTL_S))
        svc.extras["jobs"] = jobs
    return jobs
