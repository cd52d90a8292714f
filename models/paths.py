"""Where built artifacts and fetched source packages live."""
from __future__ import annotations

import os
from pathlib import Path


def model_cache_dir() -> Path:
    """Per-user, content-addressed cache for built encoders and fetched package files.

    Shared between clones on one machine, so a fresh checkout (what CI is) reuses the
    artifacts an earlier build produced instead of exporting again.
    """
    env = os.environ.get("MODEL_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return (base / "semsearch" / "models").resolve()


def downloads_dir() -> Path:
    return model_cache_dir() / "downloads"
