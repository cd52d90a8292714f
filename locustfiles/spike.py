"""Spike profile: the same user mix, shaped as baseline -> sudden spike -> recovery.

Of the run time (-t): 25% at a quarter of the users, 30% at all users (spawned within about a
second: the spike), then 45% back at the baseline to show recovery.  Reads -u/-r/-t, so

    locust -f locustfiles/spike.py --headless -u 40 -r 10 -t 90s --host http://127.0.0.1:8000
"""
from __future__ import annotations

import sys
from pathlib import Path

from locust import LoadTestShape

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from locustfiles.mix import SearchServiceUser, _seed  # noqa: E402,F401  (user class + seeding hook)


class SpikeShape(LoadTestShape):
    use_common_options = True  # take users / spawn rate / run time from the command line

    def tick(self) -> tuple[int, float] | None:
        opts = self.runner.environment.parsed_options if self.runner else None
        users = int(getattr(opts, "num_users", None) or 20)
        rate = float(getattr(opts, "spawn_rate", None) or 5)
        total = float(getattr(opts, "run_time", None) or 60)
        t = self.get_run_time()
        if t >= total:
            return None
        baseline = max(1, users // 4)
        if t < 0.25 * total:
            return baseline, rate
        if t < 0.55 * total:
            return users, float(max(rate, users))  # the spike: everyone at once
        return baseline, float(max(rate, users))
