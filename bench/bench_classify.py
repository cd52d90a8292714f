"""Classification and clustering figures on real data, through the real HTTP API.

    python -m bench.bench_classify                 # int8 (the service default) and fp32
    python -m bench.bench_classify --precision int8

Writes bench/reports/classify.md.  Every figure goes through create_app + httpx ASGITransport
(the real minilm ONNX encoder, the real endpoints).  Baselines are measured in the same run
on the same embeddings (fetched with /v1/embeddings): plain scikit-learn logistic regression
for few-shot, scikit-learn KMeans(k=2) for V-measure.

Data (gensim 4.4.0 wheel): the 200-post 20-Newsgroups subset (atheism/space) and the 200
Pang-Lee polarity sentences.  Newsgroups posts are scored twice: with their NNTP headers (as
the issue's reference figures were measured; the header includes ``Newsgroups: alt.atheism``,
which leaks the label) and header-stripped (``models.datasets.newsgroups()``, the honest one).
Few-shot: the mean over 5 random draws (seeds 0-4) of k examples per class, tested on the rest.
"""
from __future__ import annotations

import argparse
import asyncio
import platform
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import v_measure_score

from app.main import create_app
from app.settings import Settings
from models.datasets import newsgroups, polarity

REPORT = Path(__file__).parent / "reports" / "classify.md"
SEEDS = range(5)
TEMPERATURES = [0.015, 0.02, 0.025, 0.03, 0.035, 0.04, 0.05, 0.07, 0.1]


def split(labels: list[str], per_class: int, seed: int) -> tuple[list[int], list[int]]:
    rng = np.random.default_rng(seed)
    y = np.array(labels)
    train = np.concatenate([rng.choice(np.flatnonzero(y == c), per_class, replace=False)
                            for c in sorted(set(labels))])
    train_set = set(train.tolist())
    return sorted(train_set), [i for i in range(len(labels)) if i not in train_set]


async def post(c: httpx.AsyncClient, method: str, url: str, body: dict) -> dict:
    r = await c.request(method, url, json=body, timeout=600)
    if r.status_code >= 400:
        raise RuntimeError(f"{method} {url}: {r.status_code} {r.text[:300]}")
    return r.json()


async def evaluate(c: httpx.AsyncClient, name: str, texts: list[str], labels: list[str],
                   label_names: list[str], per_class: int) -> dict:
    y = np.array(labels)
    out: dict = {"name": name, "n": len(texts), "per_class": per_class}
    data = (await post(c, "POST", "/v1/embeddings", {"input": texts}))["data"]
    x = np.array([d["embedding"] for d in data], dtype=np.float32)
    t0 = time.perf_counter()
    zs = (await post(c, "POST", "/v1/classify", {"texts": texts, "labels": label_names}))["results"]
    out["zs_ms"] = 1000 * (time.perf_counter() - t0)
    out["zero_shot"] = float(np.mean([r["label"] == t for r, t in zip(zs, labels)]))
    nll = {}
    for temp in TEMPERATURES:
        res = (await post(c, "POST", "/v1/classify", {"texts": texts, "labels": label_names,
                                                      "temperature": temp}))["results"]
        nll[temp] = float(-np.mean([np.log(max(r["scores"][t], 1e-12)) for r, t in zip(res, labels)]))
    out["nll"] = nll
    service, baseline = [], []
    for seed in SEEDS:
        train, test = split(labels, per_class, seed)
        await post(c, "PUT", f"/v1/classifiers/bench-{name}", {
            "examples": [{"text": texts[i], "label": labels[i]} for i in train], "seed": seed})
        pred = (await post(c, "POST", f"/v1/classifiers/bench-{name}/predict",
                           {"texts": [texts[i] for i in test]}))["predictions"]
        service.append(float(np.mean([p["label"] == labels[i] for p, i in zip(pred, test)])))
        lr = LogisticRegression(max_iter=2000).fit(x[train], y[train])
        baseline.append(float((lr.predict(x[test]) == y[test]).mean()))
    out["few_shot"], out["few_shot_sd"] = float(np.mean(service)), float(np.std(service))
    out["few_shot_lr"], out["few_shot_lr_sd"] = float(np.mean(baseline)), float(np.std(baseline))
    res = await post(c, "POST", "/v1/cluster", {"texts": texts, "k": 2, "seed": 0})
    assign = np.full(len(texts), -1)
    for cl in res["clusters"]:
        assign[cl["members"]] = cl["id"]
    out["v_measure"] = float(v_measure_score(labels, assign))
    out["v_measure_sk"] = float(v_measure_score(labels, KMeans(2, n_init=10, random_state=0).fit_predict(x)))
    out["silhouette"] = res["silhouette"]
    out["cluster_labels"] = [cl["label"] for cl in res["clusters"]]
    auto = await post(c, "POST", "/v1/cluster", {"texts": texts, "seed": 0, "k_max": 8})
    out["auto_k"] = len(auto["clusters"])
    return out


async def run(precision: str) -> list[dict]:
    settings = Settings(models="minilm", data_dir=Path(tempfile.mkdtemp(prefix="bench-classify-")),
                        encoder_precision=precision, log_json=False, log_level="warning")
    app = create_app(settings)
    ng_raw, ng, pol = newsgroups(strip_headers=False), newsgroups(), polarity()
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as c:
            rows = []
            for name, ds, labels, k in (("newsgroups (headers)", ng_raw, ["atheism", "space"], 8),
                                        ("newsgroups (stripped)", ng, ["atheism", "space"], 8),
                                        ("polarity", pol, ["negative", "positive"], 16)):
                print(f"[{precision}] {name} ...", file=sys.stderr, flush=True)
                row = await evaluate(c, name.split()[0] + ("-raw" if "headers" in name else ""),
                                     ds.texts, ds.labels, labels, k)
                row["name"], row["precision"] = name, precision
                rows.append(row)
    return rows


TARGETS = {"newsgroups": {"zero_shot": 0.99, "few_shot": 0.98, "v_measure": 0.93},
           "polarity": {"zero_shot": 0.68, "few_shot": 0.67, "v_measure": None}}


def report(rows: list[dict], command: str, seconds: float) -> str:
    lines = ["# Classification and clustering figures", "",
             f"Command: `{command}` ({time.strftime('%Y-%m-%d')}, {platform.machine()}, "
             f"python {platform.python_version()}, {seconds:.0f} s).", "",
             "Everything below went through the HTTP API of the real app (minilm ONNX encoder). "
             "Issue targets (minilm + plain scikit-learn): newsgroups zero-shot 0.99, few-shot "
             "8/class 0.98, k-means V-measure 0.93; polarity zero-shot 0.68, few-shot 16/class 0.67.",
             "", "| data | encoder | zero-shot | few-shot (service head) | few-shot (plain LR, same split) "
             "| k-means V-measure (service) | KMeans V-measure (sklearn) | silhouette k=2 | auto k |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | minilm {r['precision']} | {r['zero_shot']:.3f} | "
                     f"{r['few_shot']:.3f} ± {r['few_shot_sd']:.3f} ({r['per_class']}/class) | "
                     f"{r['few_shot_lr']:.3f} ± {r['few_shot_lr_sd']:.3f} | {r['v_measure']:.3f} | "
                     f"{r['v_measure_sk']:.3f} | {r['silhouette']:.3f} | {r['auto_k']} |")
    lines += ["", "± is the standard deviation over the 5 draws.", "",
              "## Zero-shot temperature", "",
              "Mean negative log-likelihood of the true label for single-label scores at each "
              "temperature (accuracy does not depend on it).  The default, 0.035, minimises the "
              "pooled NLL of header-stripped newsgroups + polarity (int8).  The per-set optima differ "
              "(about 0.025 vs 0.05): the pooled default costs each set < 0.01 NLL against its own "
              "optimum, whereas fitting on one set and applying to the other (leave-one-set-out) "
              "costs 0.03-0.04, so no single temperature is right for every corpus; `temperature` "
              "is a request parameter.", "",
              "| data | encoder | " + " | ".join(f"T={t}" for t in TEMPERATURES) + " | best T |",
              "|---|---|" + "---|" * (len(TEMPERATURES) + 1)]
    for r in rows:
        best = min(r["nll"], key=r["nll"].get)
        lines.append(f"| {r['name']} | {r['precision']} | " +
                     " | ".join(f"{r['nll'][t]:.3f}" for t in TEMPERATURES) + f" | {best} |")
    lines += ["", "## Cluster labels (c-TF-IDF keywords, k=2)", ""]
    for r in rows:
        lines.append(f"- {r['name']} ({r['precision']}): " + " / ".join(f"`{x}`" for x in r["cluster_labels"]))
    return "\n".join(lines) + "\n"


NOTES = """## Notes

- **The newsgroups header leaks the label.**  The raw posts start with `Newsgroups: alt.atheism`
  / `sci.space`; the issue's reference figures (0.99 / 0.98 / 0.93) are reproduced only with the
  headers kept.  `models.datasets.newsgroups()` strips them (keeping the Subject line); those rows
  are the honest figures for "classify a post by its content".
- **int8 embeddings depend on the batch.**  The int8 encoder uses dynamic quantisation with one
  scale per tensor, so a text's vector changes slightly with the other texts of its batch (up to
  0.044 per component measured on polarity; the micro-batcher mixes requests).  Polarity zero-shot
  moved between 0.61 and 0.675 with int8 depending only on batching (labels encoded together with
  the texts or alone; texts one by one or all together); fp32 gives 0.68.  The service encodes
  label sets in their own call so that they are always embedded (and cached) alike.
- **Few-shot head.**  `PUT /v1/classifiers/{name}` trains logistic regression (C=1) plus
  nearest-prototype scores plus a zero-shot prior from the label names/descriptions (weight
  `prior_weight`, default 1; set 0 for opaque label names).  On polarity 16/class it gives
  0.696 (int8) / 0.698 (fp32) against 0.676 / 0.668 for plain logistic regression on the same
  splits -- better than the issue's 0.67, by about one standard deviation of the draws.
  SetFit-style contrastive fine-tuning of the encoder is **not** implemented: it would need a
  fine-tuned ONNX encoder per classifier; torch is never imported by the service.
- **Clustering.**  Service k-means is scikit-learn KMeans (n_init=10, random_state=seed) on the
  normalised embeddings; labels are c-TF-IDF keywords (e-mail addresses and URLs removed,
  English stop words).  Polarity does not cluster by sentiment (V-measure ~0.02): its two k-means
  clusters are about films vs. everything else, which is what the labels show.
- Multi-label zero-shot scores are sigmoid((cos - 0.09) / 0.06), fitted by logistic regression
  on the cosine of right vs. wrong labels (pooled, int8).  Short texts have higher cosines than
  long posts, so with short texts raise `threshold`.
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precision", choices=["int8", "fp32", "both"], default="both")
    ap.add_argument("--out", type=Path, default=REPORT)
    args = ap.parse_args()
    started = time.perf_counter()
    rows = []
    for p in (["int8", "fp32"] if args.precision == "both" else [args.precision]):
        rows += asyncio.run(run(p))
    command = "python -m bench.bench_classify" + (f" --precision {args.precision}"
                                                  if args.precision != "both" else "")
    text = report(rows, command, time.perf_counter() - started)
    text += "\n" + NOTES
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
