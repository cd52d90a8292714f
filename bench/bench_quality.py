"""Encoder quality report: fidelity vs sentence-transformers and the Lee benchmark.

    python -m bench.bench_quality        # writes bench/reports/encoder_quality.md
"""
from __future__ import annotations

import platform
import time
from pathlib import Path

import numpy as np

from models.build import build, materialize_source
from models.datasets import lee_benchmark, newsgroups, polarity
from models.encoder import OnnxEncoder
from models.evaluate import lee_pearson
from models.registry import find_built, load_registry

REPORT = Path(__file__).parent / "reports" / "encoder_quality.md"


def main() -> None:
    from sentence_transformers import SentenceTransformer

    specs = load_registry()
    rows = []
    texts = lee_benchmark().documents + polarity().texts[:100] + newsgroups().texts[:50]
    for name in [n for n, s in specs.items() if s.source in ("package-folder", "split-zip")]:
        build(name)
        built = find_built(specs[name], specs)
        st = SentenceTransformer(str(materialize_source(specs[name])), device="cpu")
        ref = st.encode(texts, batch_size=16, normalize_embeddings=True)
        fp32 = OnnxEncoder(built, "fp32")
        int8 = OnnxEncoder(built, "int8")
        got = fp32.encode(texts).vectors
        cos = (ref * got).sum(1)
        got8 = int8.encode(texts).vectors
        cos8 = (ref * got8).sum(1)
        rows.append({
            "name": name,
            "st": lee_pearson(lambda t: st.encode(list(t), batch_size=16, normalize_embeddings=True)),
            "fp32": lee_pearson(lambda t: fp32.encode(t).vectors),
            "int8": lee_pearson(lambda t: int8.encode(t).vectors),
            "fid_min": float(cos.min()), "fid_mean": float(cos.mean()),
            "fid8_min": float(cos8.min()), "fid8_mean": float(cos8.mean()),
            "mb32": built.meta["files"]["fp32"]["bytes"] / 1e6, "mb8": built.meta["files"]["int8"]["bytes"] / 1e6,
        })
    lines = [
        "# Encoder quality", "",
        f"Command: `python -m bench.bench_quality` ({time.strftime('%Y-%m-%d')}, {platform.machine()}, "
        f"python {platform.python_version()}).", "",
        f"Fidelity: cosine between sentence-transformers (PyTorch fp32) and the ONNX export on {len(texts)} real texts "
        "(50 Lee news documents, 100 polarity sentences, 50 newsgroup posts; long ones are truncated identically).", "",
        "Lee: Pearson correlation between cosine similarity and the mean human rating over the 1,225 "
        "document pairs of Lee et al. (2005), data from the gensim 4.4.0 wheel.", "",
        "| encoder | Lee ST fp32 | Lee ONNX fp32 | Lee ONNX int8 | int8 − fp32 | fidelity fp32 min / mean | int8 vs ST min / mean | ONNX MB fp32 / int8 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['name']} | {r['st']:.4f} | {r['fp32']:.4f} | {r['int8']:.4f} | {r['int8'] - r['fp32']:+.4f} | "
                     f"{r['fid_min']:.6f} / {r['fid_mean']:.6f} | {r['fid8_min']:.4f} / {r['fid8_mean']:.4f} | "
                     f"{r['mb32']:.0f} / {r['mb8']:.0f} |")
    lines += ["", "int8 = dynamic quantisation, int8 weights per output channel with reduce_range, "
              "activations quantised per call (see models/export.py for the variants that were measured)."]
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
