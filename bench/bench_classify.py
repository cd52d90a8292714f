"""Classification and clustering figures on real data, through the real HTTP API.

    python -m bench.bench_classify                 # int8 (the service default) and fp32
    python -m bench.bench_classify --precision int8
    python -m bench.bench_classify --setfit only   # only head vs fine-tuned (polarity, int8)

Writes bench/reports/classify.md (``--setfit only``: bench/reports/classify_setfit.md).  Every figure goes through create_app + httpx ASGITransport
(the real minilm ONNX encoder, the real endpoints).  Baselines are measured in the same run
on the same embeddings (fetched with /v1/embeddings): plain scikit-learn logistic regression
for few-shot, scikit-learn KMeans(k=2) for V-measure.

Data (gensim 4.4.0 wheel): the 200-post 20-Newsgroups subset (atheism/space) and the 200
Pang-Lee polarity sentences.  Newsgroups posts are scored twice: with their NNTP headers (as
the issue's reference figures were measured; the header includes ``Newsgroups: alt.atheism``,
which leaks the label) and header-stripped (``models.datasets.newsgroups()``, the honest one).
Few-shot: the mean over 5 random draws (seeds 0-4) of k examples per class, tested on the rest.
With ``--setfit on`` (default) the int8 run also trains polarity 16/class with ``"finetune": true``
(SetFit-style fine-tuning in a child process, API default options) on the same 5 splits and the
same seeds, next to the head alone, so the two columns differ only by the fine-tuning.
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
SETFIT_REPORT = Path(__file__).parent / "reports" / "classify_setfit.md"
SETFIT_PER_CLASS = 16
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


async def wait_job(c: httpx.AsyncClient, job_id: str, timeout_s: float = 3600) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = (await c.get(f"/v1/jobs/{job_id}")).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            if job["status"] != "succeeded":
                raise RuntimeError(f"job {job_id} {job['status']}: {job['error']}")
            return job
        await asyncio.sleep(0.5)
    raise RuntimeError(f"job {job_id} did not finish in {timeout_s}s")


async def evaluate_setfit(c: httpx.AsyncClient, texts: list[str], labels: list[str],
                          per_class: int) -> dict:
    """Head alone vs SetFit-style fine-tuning + head, same splits and seeds (SEEDS)."""
    out: dict = {"per_class": per_class, "seeds": []}
    for seed in SEEDS:
        train, test = split(labels, per_class, seed)
        body = {"examples": [{"text": texts[i], "label": labels[i]} for i in train], "seed": seed}
        test_texts = [texts[i] for i in test]
        row: dict = {"seed": seed}
        for kind, extra in (("head", {}), ("finetuned", {"finetune": True})):
            name = f"bench-setfit-{kind}"
            t0 = time.perf_counter()
            r = await c.put(f"/v1/classifiers/{name}", json=body | extra, timeout=600)
            if r.status_code == 202:
                meta = (await wait_job(c, r.json()["job_id"]))["result"]
            elif r.status_code in (200, 201):
                meta = r.json()
            else:
                raise RuntimeError(f"PUT {name}: {r.status_code} {r.text[:300]}")
            row[f"{kind}_seconds"] = time.perf_counter() - t0
            pred = (await post(c, "POST", f"/v1/classifiers/{name}/predict",
                               {"texts": test_texts}))["predictions"]
            row[kind] = float(np.mean([p["label"] == labels[i] for p, i in zip(pred, test)]))
            row[f"{kind}_cv"] = meta["cross_validation"]["accuracy"]
            if kind == "finetuned":
                ft = meta["finetune"]
                row.update(pairs=ft["pairs"], steps=ft["steps"], train_accuracy=ft["train_accuracy"],
                           child_seconds=ft["seconds"], options=ft["options"],
                           encoder_sha256=meta["encoder"]["sha256"],
                           base_sha256=meta["encoder"]["base_sha256"])
        print(f"[setfit] seed {seed}: head {row['head']:.3f}, fine-tuned {row['finetuned']:.3f} "
              f"({row['finetuned_seconds']:.0f}s)", file=sys.stderr, flush=True)
        out["seeds"].append(row)
    for k in ("head", "finetuned", "finetuned_seconds", "child_seconds", "train_accuracy"):
        vals = [r[k] for r in out["seeds"]]
        out[k], out[f"{k}_sd"] = float(np.mean(vals)), float(np.std(vals))
    return out


async def run(precision: str, setfit: str = "on") -> tuple[list[dict], dict | None]:
    settings = Settings(models="minilm", data_dir=Path(tempfile.mkdtemp(prefix="bench-classify-")),
                        encoder_precision=precision, log_json=False, log_level="warning")
    app = create_app(settings)
    ng_raw, ng, pol = newsgroups(strip_headers=False), newsgroups(), polarity()
    sf = None
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as c:
            rows = []
            for name, ds, labels, k in (("newsgroups (headers)", ng_raw, ["atheism", "space"], 8),
                                        ("newsgroups (stripped)", ng, ["atheism", "space"], 8),
                                        ("polarity", pol, ["negative", "positive"], 16)):
                if setfit == "only":
                    break
                print(f"[{precision}] {name} ...", file=sys.stderr, flush=True)
                row = await evaluate(c, name.split()[0] + ("-raw" if "headers" in name else ""),
                                     ds.texts, ds.labels, labels, k)
                row["name"], row["precision"] = name, precision
                rows.append(row)
            if setfit != "off" and precision == "int8":
                print(f"[{precision}] polarity with fine-tuning ...", file=sys.stderr, flush=True)
                sf = await evaluate_setfit(c, pol.texts, pol.labels, SETFIT_PER_CLASS)
                sf["precision"] = precision
    return rows, sf


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


def setfit_report(sf: dict) -> str:
    o = sf["seeds"][0]["options"]
    lines = ["## Few-shot with SetFit-style fine-tuning (polarity, 16/class, minilm int8)", "",
             f"`PUT /v1/classifiers/NAME` with `\"finetune\": true` and the default options "
             f"(pairs_per_example {o['pairs_per_example']}, epochs {o['epochs']}, learning_rate "
             f"{o['learning_rate']}, batch_size {o['batch_size']}, max_seq_length "
             f"{o['max_seq_length']}), against the same request without it: same 5 splits (seeds "
             "0-4, 16 examples per class, tested on the other 168 sentences), same head seeds. The "
             "fine-tuned encoder is exported to ONNX and served int8, like the base encoder.", "",
             "| seed | head only | fine-tuned + head | CV reported (head on base encoder) | "
             "train accuracy (fine-tuned) | pairs | steps | fine-tune job s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sf["seeds"]:
        lines.append(f"| {r['seed']} | {r['head']:.3f} | {r['finetuned']:.3f} | {r['finetuned_cv']:.3f} | "
                     f"{r['train_accuracy']:.3f} | {r['pairs']} | {r['steps']} | {r['finetuned_seconds']:.0f} |")
    lines += [f"| **mean ± sd** | **{sf['head']:.3f} ± {sf['head_sd']:.3f}** | "
              f"**{sf['finetuned']:.3f} ± {sf['finetuned_sd']:.3f}** | | "
              f"{sf['train_accuracy']:.3f} | | | {sf['finetuned_seconds']:.0f} ± {sf['finetuned_seconds_sd']:.0f} |",
              "", f"Gain from fine-tuning: {sf['finetuned'] - sf['head']:+.3f} (mean over the 5 splits; "
              f"wins on {sum(r['finetuned'] > r['head'] for r in sf['seeds'])}/5, ties on "
              f"{sum(r['finetuned'] == r['head'] for r in sf['seeds'])}/5).  A fine-tune job took "
              f"{sf['finetuned_seconds']:.0f} s on average (child process: {sf['child_seconds']:.0f} s: "
              "torch start-up, training, ONNX export + int8 quantisation, fidelity check).", "",
              "The cross-validated accuracy a fine-tuned classifier reports is the head's on the "
              "*base* encoder (the fine-tuned encoder has seen every training example, so "
              "out-of-fold figures on it would be optimistic); train accuracy is measured on the "
              "training examples and is not an estimate for new texts.  The test columns above are "
              "the only honest comparison."]
    return "\n".join(lines) + "\n"


NOTES = """## Notes

- **The newsgroups header leaks the label.**  The raw posts start with `Newsgroups: alt.atheism`
  / `sci.space`; the issue's reference figures (0.99 / 0.98 / 0.93) are reproduced only with the
  headers kept.  `models.datasets.newsgroups()` strips them (keeping the Subject line); those rows
  are the honest figures for "classify a post by its content".
- **int8 embeddings depend on the batch.**  The int8 encoder uses dynamic quantisation with one
  scale per tensor, so a text's vector changes slightly with the other texts of its batch (up to
  0.044 per component measured on polarity; the micro-batcher mixes requests).  The service
  encodes label sets in their own call so that they are always embedded (and cached) alike.
  With the current encoder build, polarity zero-shot in int8 was 0.680 whether the 200
  sentences were encoded in one call, one by one or in batches of 16 (checked in-process on
  2026-12-05), the same as fp32.  An earlier build's report gave 0.660 and saw 0.61-0.675 across
  groupings; that was before the encoder bounded padding when grouping texts (which changes
  which texts share a quantisation scale), and the cause was not pinned down further.
- **Few-shot head.**  `PUT /v1/classifiers/{name}` trains logistic regression (C=1) plus
  nearest-prototype scores plus a zero-shot prior from the label names/descriptions (weight
  `prior_weight`, default 1; set 0 for opaque label names).  The table compares it with plain
  logistic regression on the same splits: on polarity 16/class it is above the issue's 0.67 and
  above plain LR in both precisions.
  SetFit-style contrastive fine-tuning of the encoder is optional (`"finetune": true`, see the
  section above): it runs in a child process with the build extra, and the classifier then
  carries its own fine-tuned ONNX encoder; torch is never imported by the service.
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
    ap.add_argument("--setfit", choices=["on", "off", "only"], default="on",
                    help="polarity head vs fine-tuned (int8 only); 'only' skips everything else "
                    f"and writes {SETFIT_REPORT.relative_to(Path(__file__).parent.parent)}")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    started = time.perf_counter()
    rows: list[dict] = []
    sf = None
    precisions = ["int8", "fp32"] if args.precision == "both" else [args.precision]
    if args.setfit == "only":
        precisions = ["int8"]
    for p in precisions:
        got, got_sf = asyncio.run(run(p, args.setfit))
        rows += got
        sf = sf or got_sf
    command = "python -m bench.bench_classify" + (f" --precision {args.precision}"
                                                  if args.precision != "both" else "") + \
        (f" --setfit {args.setfit}" if args.setfit != "on" else "")
    seconds = time.perf_counter() - started
    if args.setfit == "only":
        out = args.out or SETFIT_REPORT
        text = (f"# Few-shot classification with and without fine-tuning\n\nCommand: `{command}` "
                f"({time.strftime('%Y-%m-%d')}, {platform.machine()}, python "
                f"{platform.python_version()}, {seconds:.0f} s).\n\n" + setfit_report(sf))
    else:
        out = args.out or REPORT
        text = report(rows, command, seconds)
        if sf is not None:
            text += "\n" + setfit_report(sf)
        text += "\n" + NOTES
    args.out = out
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
