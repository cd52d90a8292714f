"""Domain adaptation of a general sentence encoder (build time only: needs torch).

``adapt_domain("medical")`` builds the registered ``medical`` encoder from ``minilm`` on the
Human Phenotype Ontology; likewise ``legal`` (ScanCode licenses) and ``finance``
(PolicyEngine-US parameters).  See ``pipeline.py`` for the steps and ``corpora.py`` for the
data and the held-out split.
"""
from __future__ import annotations

import os

# torch's OpenMP threads spin while waiting by default; on a shared 2-core machine that makes
# two threads slower than one.  Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .corpora import DOMAINS, load_corpus
from .pipeline import adapt_domain

__all__ = ["DOMAINS", "adapt_domain", "load_corpus"]
