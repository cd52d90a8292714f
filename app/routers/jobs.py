"""Background jobs (clustering a collection, training large classifiers): poll, list, cancel.

Jobs are kept in memory only: a finished job can be fetched for JOB_TTL (1 hour) after it
finished, and no job survives a restart of the service."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Path

from ..auth import require_scope
from ..deps import state
from ..services.jobs import get_jobs

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[Depends(require_scope("read"))])

JobId = Path(..., max_length=64, description="the job_id returned with 202 Accepted")


@router.get("/{job_id}", summary="A job's status, progress (0..1), and then its result or error")
async def get_job(job_id: str = JobId, svc: Any = Depends(state)) -> dict[str, Any]:
    return get_jobs(svc).get(job_id).to_dict()


@router.get("", summary="Jobs still in memory, newest first (results omitted)")
async def list_jobs(svc: Any = Depends(state)) -> dict[str, Any]:
    jobs = get_jobs(svc)
    return {"jobs": [{k: v for k, v in j.to_dict().items() if k != "result"} for j in jobs.list()],
            "counts": jobs.stats(), "max_concurrent_jobs": jobs.max_concurrent,
            "max_queued_jobs": jobs.max_queued}


@router.delete("/{job_id}", dependencies=[Depends(require_scope("write"))],
               summary="Cancel a queued or running job (a finished job is left as it is)")
async def cancel_job(job_id: str = JobId, svc: Any = Depends(state)) -> dict[str, Any]:
    job = get_jobs(svc).cancel(job_id)
    return {"id": job.id, "status": job.status, "cancel_requested": not job.done}
