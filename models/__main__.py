"""Command line of the encoder side: ``python -m models {list,build,evaluate,...}``."""
from __future__ import annotations

from .cli import main

raise SystemExit(main())
