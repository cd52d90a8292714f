"""The background job manager (bounded concurrency, bounded queue, TTL, failures, cancel) and
the /v1/jobs endpoints."""
from __future__ import annotations

import asyncio
import time

import pytest

from app.errors import ApiError
from app.services.jobs import JobManager


def _run(coro):
    return asyncio.run(coro)


async def _settle(jobs: JobManager, ids, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(jobs.get(i).done for i in ids):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("jobs did not finish")


def test_lifecycle_progress_and_result():
    async def main():
        jobs = JobManager(max_concurrent=2)
        gate = asyncio.Event()

        async def work(ctx):
            ctx.progress(0.5)
            await gate.wait()
            ctx.progress(0.2)          # progress never goes backwards
            return {"answer": 42}
        job = jobs.submit("test", work)
        assert job.status == "queued" and len(job.id) == 32
        await asyncio.sleep(0.05)
        d = jobs.get(job.id).to_dict()
        assert d["status"] == "running" and d["progress"] == 0.5 and d["result"] is None
        gate.set()
        await _settle(jobs, [job.id])
        d = jobs.get(job.id).to_dict()
        assert d["status"] == "succeeded" and d["progress"] == 1 and d["result"] == {"answer": 42}
        assert d["started_at"] and d["finished_at"] and d["error"] is None
    _run(main())


def test_concurrency_is_bounded_and_extra_jobs_queue_then_429():
    async def main():
        jobs = JobManager(max_concurrent=2, max_queued=3)
        running = peak = 0
        gate = asyncio.Event()

        async def work(ctx):
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await gate.wait()
            running -= 1
        ids = [jobs.submit("t", work).id for _ in range(5)]
        await asyncio.sleep(0.05)
        assert [jobs.get(i).status for i in ids].count("running") == 2
        assert [jobs.get(i).status for i in ids].count("queued") == 3
        with pytest.raises(ApiError) as err:
            jobs.submit("t", work)
        assert err.value.status == 429 and err.value.headers == {"Retry-After": "5"}
        gate.set()
        await _settle(jobs, ids)
        assert peak == 2 and all(jobs.get(i).status == "succeeded" for i in ids)
        jobs.submit("t", work)   # the queue has room again
    _run(main())


def test_failures_are_reported_not_raised():
    async def main():
        jobs = JobManager()

        async def bad_input(ctx):
            raise ApiError(422, "k_too_large", "k is too large", {"k": 9})

        async def bug(ctx):
            raise RuntimeError("secret internals")
        a, b = jobs.submit("t", bad_input), jobs.submit("t", bug)
        await _settle(jobs, [a.id, b.id])
        assert a.status == "failed" and a.error == {"type": "k_too_large", "message": "k is too large",
                                                    "details": {"k": 9}, "status": 422}
        assert b.status == "failed" and b.error["type"] == "internal_error"
        assert "secret" not in str(b.to_dict())
    _run(main())


def test_ttl_cancel_and_close():
    async def main():
        jobs = JobManager(ttl_s=0.1)

        async def quick(ctx):
            return 1

        async def slow(ctx):
            await asyncio.sleep(30)
        q = jobs.submit("t", quick)
        await _settle(jobs, [q.id])
        await asyncio.sleep(0.15)
        with pytest.raises(ApiError) as err:
            jobs.get(q.id)                      # expired
        assert err.value.status == 404
        s = jobs.submit("t", slow)
        await asyncio.sleep(0.02)
        jobs.cancel(s.id)
        await asyncio.sleep(0.02)
        assert jobs.get(s.id).status == "cancelled"
        s2 = jobs.submit("t", slow)
        await jobs.aclose()
        assert s2.status == "cancelled"
        with pytest.raises(ApiError) as err:
            jobs.submit("t", quick)
        assert err.value.status == 503
    _run(main())


@pytest.mark.parametrize("job_id", ["0" * 32, "not-a-job", "../../etc"])
def test_unknown_job_is_404(client, job_id):
    r = client.get(f"/v1/jobs/{job_id}")
    assert r.status_code == 404 and r.json()["error"]["type"] in ("job_not_found", "not_found")


def test_jobs_list_endpoint(client):
    r = client.post("/v1/cluster", json={"texts": ["alpha beta", "gamma delta", "epsilon"],
                                         "k": 2, "background": True})
    assert r.status_code == 202
    listed = client.get("/v1/jobs").json()
    assert r.json()["job_id"] in [j["id"] for j in listed["jobs"]]
    assert listed["max_concurrent_jobs"] == 2 and "result" not in listed["jobs"][0]
