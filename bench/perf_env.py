"""Shared pieces of the performance benchmark: the texts, the machine description, statistics."""
from __future__ import annotations

import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from importlib import metadata, util
from typing import Any, Sequence

_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


def sentences(seed: int = 0) -> list[str]:
    """Real sentences: the Lee background corpus split into sentences plus the 200 polarity
    sentences (gensim 4.4.0 test data), de-duplicated, in a fixed shuffled order."""
    from models.datasets import lee_background, polarity

    out: list[str] = []
    for doc in lee_background():
        out += [s.strip() for s in _SPLIT.split(doc) if len(s.split()) >= 4]
    out += [t.strip() for t in polarity().texts if t.strip()]
    uniq = list(dict.fromkeys(out))
    random.Random(seed).shuffle(uniq)
    return uniq


def extra_query_sentences(exclude: Sequence[str] = ()) -> list[str]:
    """More distinct real sentences for cache-cold search queries (each is sent only once):
    the 50 Lee benchmark documents and the 200 newsgroup posts split into sentences (quoted
    lines, headers and e-mail addresses dropped), 4 to 40 words, minus ``exclude``."""
    from models.datasets import lee_benchmark, newsgroups

    out: list[str] = []
    for doc in lee_benchmark().documents:
        out += [s.strip() for s in _SPLIT.split(doc) if len(s.split()) >= 4]
    for post in newsgroups().texts:
        for para in re.split(r"\n\s*\n", post):
            para = " ".join(para.split())
            out += [s for s in _SPLIT.split(para) if 4 <= len(s.split()) <= 40 and "@" not in s
                    and not s.startswith(("From:", "Subject:", ">"))]
    skip = set(exclude)
    uniq = [s for s in dict.fromkeys(out) if s not in skip]
    random.Random(1).shuffle(uniq)
    return uniq


@dataclass
class Spread:
    values: list[float]

    @property
    def min(self) -> float:
        return min(self.values)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def max(self) -> float:
        return max(self.values)

    def fmt(self, digits: int = 1) -> str:
        if not self.values:
            return "n/a"
        return f"{self.min:.{digits}f} / **{self.median:.{digits}f}** / {self.max:.{digits}f}"


@dataclass
class Machine:
    nproc: int
    cpu_model: str
    load_start: tuple[float, float, float]
    busy_start: list[str]
    load_end: tuple[float, float, float] | None = None
    busy_end: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    started: str = ""


def _cpu_model() -> str:
    """Model name plus the SIMD features int8 inference depends on (VNNI makes it ~2x faster)."""
    model, flags = "", set()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    simd = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return (model or platform.processor() or "unknown") + (f" (SIMD: {', '.join(simd)})" if simd else "")


def busy_processes(sample_s: float = 1.0, min_percent: float = 10.0) -> list[str]:
    """Other processes using CPU right now (sampled over ``sample_s``): the noise we share with."""
    import psutil

    me = os.getpid()
    procs = [p for p in psutil.process_iter(["pid", "name", "cmdline"]) if p.pid != me]
    for p in procs:
        try:
            p.cpu_percent(None)
        except psutil.Error:
            pass
    time.sleep(sample_s)
    out = []
    for p in procs:
        try:
            pct = p.cpu_percent(None)
            if pct >= min_percent:
                cmd = " ".join(" ".join(p.info.get("cmdline") or [p.info.get("name") or "?"]).split())
                out.append((pct, f"{pct:.0f}% {cmd[:90]}"))
        except psutil.Error:
            pass
    return [s for _, s in sorted(out, reverse=True)]


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("onnxruntime", "torch", "sentence-transformers", "tokenizers", "transformers",
                 "fastapi", "starlette", "uvicorn", "pydantic", "faiss-cpu", "numpy", "redis",
                 "httpx"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    server = shutil.which("redis-server")
    if server:
        try:
            v = subprocess.run([server, "--version"], capture_output=True, text=True, timeout=5).stdout
            m = re.search(r"v=(\S+)", v)
            out["redis-server"] = m.group(1) if m else v.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    # uvicorn picks these up automatically when installed; without them it runs h11 + asyncio.
    out["uvicorn http/loop"] = ("httptools" if util.find_spec("httptools") else "h11") + " / " + \
        ("uvloop" if util.find_spec("uvloop") else "asyncio")
    return out


def machine() -> Machine:
    return Machine(nproc=os.cpu_count() or 1, cpu_model=_cpu_model(), load_start=os.getloadavg(),
                   busy_start=busy_processes(), versions=versions(),
                   started=time.strftime("%Y-%m-%d %H:%M:%S %Z"))


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def pct_row(values: Sequence[Any]) -> str:
    return " | ".join(str(v) for v in values)
