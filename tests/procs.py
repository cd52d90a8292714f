"""Helpers shared by the test harnesses that run real child processes (redis_server.py,
e2e_server.py): a free loopback port, and stopping a child politely, then firmly."""
from __future__ import annotations

import signal
import socket
import subprocess


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def terminate(proc: subprocess.Popen, timeout_s: float) -> None:
    """SIGTERM, wait up to ``timeout_s``, then SIGKILL; returns once the child has exited."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL (no chance to clean up) and reap."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
