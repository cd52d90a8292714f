"""SetFit-style fine-tuning of a classifier's encoder ("finetune": true): the pair recipe, the
child process (real torch fine-tuning of minilm on real Pang-Lee sentences, real ONNX export),
the API path (job, stored encoder, predictions through it, delete), validation before anything
is queued, and failure of the child leaving the previous classifier untouched.

Fine-tuning runs are kept tiny (8 examples per class, 4 pairs per example: 4 optimisation
steps) so each takes ~20 s on 2 cores; the quality figures are in bench/reports/."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.conftest import make_settings

ROOT = Path(__file__).resolve().parents[1]
TINY = {"pairs_per_example": 4, "max_seq_length": 64}


@pytest.fixture(scope="module")
def polarity():
    from models.datasets import polarity
    return polarity()


@pytest.fixture(scope="module")
def few(polarity):
    """8 real polarity sentences per class (a fixed draw)."""
    rng = np.random.default_rng(0)
    y = np.array(polarity.labels)
    idx = np.concatenate([rng.choice(np.flatnonzero(y == c), 8, replace=False)
                          for c in ("negative", "positive")])
    return [polarity.texts[i] for i in idx], [polarity.labels[i] for i in idx]


@pytest.fixture(scope="module")
def minilm_folder(built_minilm):
    from models.build import materialize_source
    return materialize_source(built_minilm.spec)


def _examples(texts, labels):
    return [{"text": t, "label": y} for t, y in zip(texts, labels)]


def _wait(client, job_id, timeout=240):
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        seen.append(job["progress"])
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job, seen
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {job['status']} after {timeout}s")


def _leftovers(data_dir: Path) -> list[str]:
    return sorted(p.name for p in (data_dir / "classifiers").iterdir() if p.name.startswith("."))


# ---------------------------------------------------------------------------- the pair recipe
def test_pairs_are_balanced_deterministic_and_never_self(polarity):
    from models.setfit import make_pairs

    texts, labels = polarity.texts[::5], polarity.labels[::5]          # 40, both labels
    label_of = dict(zip(texts, labels))
    assert len(label_of) == len(texts)                     # distinct sentences: text identifies example
    pairs = make_pairs(texts, labels, 6, seed=3)
    assert len(pairs) == 40 * 6
    assert Counter(a for a, _, _ in pairs) == {t: 6 for t in texts}          # 6 per example ...
    assert Counter((a, t) for a, _, t in pairs) == {(x, t): 3 for x in texts for t in (0.0, 1.0)}
    for a, b, target in pairs:                                                 # ... 3 + 3
        assert a != b
        assert (label_of[a] == label_of[b]) == (target == 1.0)
    assert make_pairs(texts, labels, 6, seed=3) == pairs                       # deterministic
    assert make_pairs(texts, labels, 6, seed=4) != pairs
    # three labels: negatives of each example are spread over both other labels
    labels3 = [["a", "b", "c"][i % 3] for i in range(30)]
    neg = Counter(labels3[texts.index(b)] for a, b, t in make_pairs(texts[:30], labels3, 40, 0)
                  if t == 0.0 and labels3[texts.index(a)] == "a")
    assert set(neg) == {"b", "c"} and abs(neg["b"] - neg["c"]) < 0.25 * (neg["b"] + neg["c"])


def test_pairs_reject_what_cannot_be_paired():
    from models.setfit import SetFitError, make_pairs

    with pytest.raises(SetFitError, match="even"):
        make_pairs(["a", "b", "c", "d"], ["x", "x", "y", "y"], 3, 0)
    with pytest.raises(SetFitError, match="fewer than 2"):
        make_pairs(["a", "b", "c"], ["x", "x", "y"], 2, 0)
    with pytest.raises(SetFitError, match="2 labels"):
        make_pairs(["a", "b"], ["x", "x"], 2, 0)


# ---------------------------------------------------------------------------- the child process
def _margin(vectors: np.ndarray, labels: list[str]) -> float:
    """Mean same-label cosine minus mean different-label cosine (off the diagonal)."""
    v = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    sims = v @ v.T
    y = np.array(labels)
    same = (y[:, None] == y[None, :]) & ~np.eye(len(y), dtype=bool)
    diff = y[:, None] != y[None, :]
    return float(sims[same].mean() - sims[diff].mean())


def test_child_fine_tunes_minilm_and_exports_a_loadable_encoder(tmp_path, few, minilm_folder,
                                                                built_minilm):
    from models.encoder import OnnxEncoder
    from models.registry import BuiltEncoder
    from models.sources import sha256_file

    texts, labels = few
    (tmp_path / "ex.json").write_text(json.dumps(_examples(texts, labels)))
    out = tmp_path / "out"
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "models.setfit", "--base", str(minilm_folder),
                           "--examples", str(tmp_path / "ex.json"), "--out", str(out),
                           "--seed", "0", "--pairs-per-example", "4", "--max-seq-length", "64",
                           "--learning-rate", "1e-4", "--threads", "2", "--precision", "both"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert time.monotonic() - t0 < 120
    err = proc.stderr
    assert "[setfit] pairs 64 (32 positive, 32 negative) from 16 examples" in err
    assert "[setfit] step 4/4" in err and "[setfit] export:" in err
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["pairs"] == 64 and summary["steps"] == 4 and summary["seed"] == 0
    assert summary["fidelity_min_cosine"]["fp32"] >= 0.9999
    # the layout OnnxEncoder loads, with the hashes it reports
    meta = json.loads((out / "meta.json").read_text())
    assert (out / ".complete").exists() and meta["setfit"] == summary
    for p in ("fp32", "int8"):
        assert meta["files"][p]["sha256"] == sha256_file(out / f"model.{p}.onnx")
    assert meta["files"]["tokenizer"]["sha256"] == sha256_file(out / "tokenizer.json")
    assert meta["dim"] == 384 and meta["max_length"] == 256 and meta["pooling"] == "mean"
    assert not list(tmp_path.glob(".setfit-work-*"))                # scratch removed
    tuned = OnnxEncoder(BuiltEncoder(built_minilm.spec, out, meta), "fp32", intra_op_threads=2)
    base = OnnxEncoder(built_minilm, "fp32", intra_op_threads=2)
    assert tuned.onnx_sha256 != base.onnx_sha256
    new, old = tuned.encode(texts).vectors, base.encode(texts).vectors
    cos = (new * old).sum(axis=1)
    assert cos.min() < 0.999 and cos.min() > 0.5                    # moved, not destroyed
    # contrastive training pulls same-label examples together, pushes the others apart
    assert _margin(new, labels) > _margin(old, labels) + 0.01


def test_child_rejects_bad_arguments_without_training(tmp_path):
    (tmp_path / "one-label.json").write_text(json.dumps(_examples(["a", "b"], ["x", "x"])))
    base = [sys.executable, "-m", "models.setfit", "--base", str(tmp_path), "--out", str(tmp_path / "o")]
    odd = subprocess.run(base + ["--examples", str(tmp_path / "one-label.json"),
                                 "--pairs-per-example", "3"], cwd=ROOT, capture_output=True, text=True)
    assert odd.returncode == 2 and "must be even" in odd.stderr
    one = subprocess.run(base + ["--examples", str(tmp_path / "one-label.json")],
                         cwd=ROOT, capture_output=True, text=True)
    assert one.returncode == 2 and "[setfit] error: fine-tuning needs at least 2 labels" in one.stderr
    assert not (tmp_path / "o").exists()


def test_child_failure_is_reported_with_its_stderr_tail(tmp_path):
    from app.errors import ApiError
    from app.services.finetune import run_child

    (tmp_path / "ex.json").write_text("not json")
    cmd = [sys.executable, "-m", "models.setfit", "--base", str(tmp_path), "--out", str(tmp_path / "o"),
           "--examples", str(tmp_path / "ex.json")]
    with pytest.raises(ApiError) as exc:
        asyncio.run(run_child(cmd, timeout_s=60, threads=1))
    e = exc.value
    assert e.type == "finetune_failed" and e.details["exit_code"] == 2
    assert "cannot read examples" in e.message
    assert any("[setfit] error" in line for line in e.details["stderr_tail"])


# ---------------------------------------------------------------------------- through the API
def test_finetune_job_stores_and_serves_its_own_encoder(client, few, built_minilm):
    from app.services.classifiers import ClassifierStore
    from models.encoder import OnnxEncoder
    from models.registry import BuiltEncoder
    from models.sources import sha256_file

    torch_before = "torch" in sys.modules
    data_dir = Path(client.app.state.svc.settings.data_dir)
    texts, labels = few
    r = client.put("/v1/classifiers/ft-sent", json={"model": "minilm", "examples": _examples(texts, labels),
                                                     "finetune": True, "finetune_options": TINY | {"learning_rate": 2e-4}})
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    assert r.headers["location"] == f"/v1/jobs/{job_id}"
    job, seen = _wait(client, job_id)
    assert job["status"] == "succeeded", job
    assert seen == sorted(seen) and all(0 <= p <= 1 for p in seen) and job["progress"] == 1
    res = job["result"]
    base_sha = built_minilm.onnx_sha256("int8")                     # the served base variant
    enc = res["encoder"]
    assert enc["type"] == "setfit" and enc["precision"] == "int8"
    assert enc["base_sha256"] == base_sha and enc["sha256"] != base_sha
    ft = res["finetune"]
    assert ft["pairs"] == 64 and ft["steps"] == 4 and ft["options"]["pairs_per_example"] == 4
    assert 0.5 <= ft["train_accuracy"] <= 1 and ft["seconds"] > 0
    # honest CV: the head's out-of-fold figures on the *base* encoder, exactly what the same
    # request without finetune reports (the tuned encoder has seen every example)
    assert res["cross_validation"]["encoder"] == "base"
    plain = client.put("/v1/classifiers/ft-plain", json={"model": "minilm",
                                                         "examples": _examples(texts, labels)})
    assert plain.status_code == 201 and "encoder" not in plain.json()
    assert {k: v for k, v in res["cross_validation"].items() if k != "encoder"} == \
        plain.json()["cross_validation"]
    got = client.get("/v1/classifiers/ft-sent").json()
    assert got["version"] == res["version"] and got["encoder"]["sha256"] == enc["sha256"]
    assert got["finetune"]["train_accuracy"] == ft["train_accuracy"]
    # the encoder files live inside the classifier's version directory, checksummed
    vdir = data_dir / "classifiers" / "ft-sent" / f"v-{res['version']}"
    assert sha256_file(vdir / "encoder" / "model.int8.onnx") == enc["sha256"]
    assert not (vdir / "encoder" / "model.fp32.onnx").exists()     # only the served variant
    assert _leftovers(data_dir) == []
    # predictions come from the fine-tuned encoder + the stored head (and not the base encoder)
    probe = ["a dull, lifeless and far too long film", "a warm, funny and moving delight",
             "the plot makes no sense", "one of the best films of the year"]
    pred = client.post("/v1/classifiers/ft-sent/predict", json={"texts": probe})
    assert pred.status_code == 200, pred.text
    api = np.array([[p["scores"][lab] for lab in ("negative", "positive")] for p in pred.json()["predictions"]])
    _, head = ClassifierStore(data_dir).load("ft-sent")
    order = [head.labels.index("negative"), head.labels.index("positive")]
    tuned_meta = json.loads((vdir / "encoder" / "meta.json").read_text())
    tuned = OnnxEncoder(BuiltEncoder(built_minilm.spec, vdir / "encoder", tuned_meta), "int8")
    want = head.predict_proba(tuned.encode(probe).vectors)[:, order]
    other = head.predict_proba(OnnxEncoder(built_minilm, "int8").encode(probe).vectors)[:, order]
    assert np.allclose(api, want, atol=2e-5)
    assert not np.allclose(api, other, atol=1e-3)
    if not torch_before:
        assert "torch" not in sys.modules, "the service imported torch"
    # delete removes the classifier with its encoder
    assert client.delete("/v1/classifiers/ft-sent").status_code == 200
    assert not (data_dir / "classifiers" / "ft-sent").exists()
    assert client.post("/v1/classifiers/ft-sent/predict", json={"texts": ["x"]}).status_code == 404


GOOD = [{"text": "nice", "label": "a"}, {"text": "good", "label": "a"},
        {"text": "bad", "label": "b"}, {"text": "awful", "label": "b"}]
MANY = [{"text": f"text number {i}", "label": "ab"[i % 2]} for i in range(2001)]


@pytest.mark.parametrize("body,status,kind", [
    ({"examples": GOOD, "finetune": True, "background": False}, 422, "finetune_requires_background"),
    ({"examples": GOOD, "finetune_options": {"epochs": 2}}, 422, "invalid_finetune_options"),
    ({"examples": GOOD, "finetune": True, "finetune_options": {"pairs_per_example": 3}}, 422, "validation_error"),
    ({"examples": GOOD, "finetune": True, "finetune_options": {"pairs_per_example": 1000}}, 422, "validation_error"),
    ({"examples": GOOD, "finetune": True, "finetune_options": {"epochs": 0}}, 422, "validation_error"),
    ({"examples": GOOD, "finetune": True, "finetune_options": {"learning_rate": 0}}, 422, "validation_error"),
    ({"examples": GOOD, "finetune": True, "finetune_options": {"batch_size": 1}}, 422, "validation_error"),
    ({"examples": GOOD, "finetune": True, "finetune_options": {"steps": 5}}, 422, "validation_error"),
    ({"examples": GOOD, "finetune": "yes please"}, 422, "validation_error"),
    ({"examples": GOOD, "finetune": True, "model": "medical"}, 422, "finetune_unsupported"),
    ({"examples": GOOD, "finetune": True, "model": "legal"}, 422, "finetune_unsupported"),
    ({"examples": GOOD, "finetune": True, "model": "nope"}, 404, "model_not_found"),
    ({"examples": GOOD[:3], "finetune": True}, 422, "too_few_examples"),
    ({"examples": MANY, "finetune": True}, 422, "finetune_too_large"),
    ({"examples": MANY[:1000], "finetune": True, "finetune_options": {"pairs_per_example": 100}},
     422, "finetune_too_large"),
])
def test_finetune_bad_input_queues_and_stores_nothing(client, body, status, kind):
    data_dir = Path(client.app.state.svc.settings.data_dir)
    jobs_before = len(client.get("/v1/jobs").json()["jobs"])
    r = client.put("/v1/classifiers/ft-bad", json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["type"] == kind
    if kind == "finetune_unsupported":
        assert "cannot be fine-tuned" in r.json()["error"]["message"]
    assert len(client.get("/v1/jobs").json()["jobs"]) == jobs_before
    assert client.get("/v1/classifiers/ft-bad").status_code == 404
    assert _leftovers(data_dir) == []


def test_finetune_without_the_build_extra_is_refused(client, monkeypatch):
    import app.services.finetune as ft

    real = ft.find_spec
    monkeypatch.setattr(ft, "find_spec", lambda name: None if name == "torch" else real(name))
    r = client.put("/v1/classifiers/ft-extra", json={"examples": GOOD, "finetune": True})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["type"] == "finetune_unavailable" and err["details"]["missing"] == ["torch"]
    assert "requirements/build.txt" in err["message"]
    assert client.get("/v1/classifiers/ft-extra").status_code == 404
    # without finetune the same request trains as before
    assert client.put("/v1/classifiers/ft-extra", json={"examples": GOOD}).status_code == 201


def test_failed_finetune_leaves_the_previous_version_serving(tmp_path, built_minilm, few):
    """A child that cannot finish in FINETUNE_TIMEOUT_S is killed: job failed, old version intact."""
    from app.main import create_app

    texts, labels = few
    probe = ["a dull, lifeless film", "a moving delight"]
    with TestClient(create_app(make_settings(tmp_path, finetune_timeout_s=1.0))) as c:
        r = c.put("/v1/classifiers/keep", json={"examples": _examples(texts, labels)})
        assert r.status_code == 201
        v1 = r.json()["version"]
        before = c.post("/v1/classifiers/keep/predict", json={"texts": probe}).json()
        r = c.put("/v1/classifiers/keep", json={"examples": _examples(texts, labels), "finetune": True,
                                                "finetune_options": TINY})
        assert r.status_code == 202, r.text
        job, _ = _wait(c, r.json()["job_id"], timeout=60)
        assert job["status"] == "failed", job
        assert job["error"]["type"] == "finetune_timeout" and "FINETUNE_TIMEOUT_S" in job["error"]["message"]
        assert c.get("/v1/classifiers/keep").json()["version"] == v1
        assert "encoder" not in c.get("/v1/classifiers/keep").json()
        assert c.post("/v1/classifiers/keep/predict", json={"texts": probe}).json() == before
        assert _leftovers(tmp_path) == []
        assert [p.name for p in (tmp_path / "classifiers" / "keep").iterdir()
                if p.is_dir()] == [f"v-{v1}"]


# ---------------------------------------------------------------------------- storage
def _fake_encoder(folder: Path, payload: bytes) -> dict:
    from models.sources import sha256_file

    folder.mkdir()
    (folder / "model.int8.onnx").write_bytes(payload)
    (folder / "tokenizer.json").write_text("{}")
    return {"type": "setfit", "precision": "int8", "sha256": "x", "files": {
        "model": {"path": "model.int8.onnx", "sha256": sha256_file(folder / "model.int8.onnx")},
        "tokenizer": {"path": "tokenizer.json", "sha256": sha256_file(folder / "tokenizer.json")}}}


def test_store_keeps_the_encoder_with_its_version(tmp_path):
    from app.errors import ApiError
    from app.services.classifiers import ClassifierStore, train_head

    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 4))
    head = train_head(x, np.repeat([0, 1], 4), ["a", "b"], x[:2], 1.0)
    store = ClassifierStore(tmp_path)
    src = tmp_path / "classifiers" / ".finetune-1" / "encoder"
    src.parent.mkdir()
    enc = _fake_encoder(src, b"weights-1")
    m1 = store.save("c", {"labels": ["a", "b"], "model": "m", "encoder": enc}, head, encoder_dir=src)
    v1 = tmp_path / "classifiers" / "c" / f"v-{m1['version']}" / "encoder"
    assert (v1 / "model.int8.onnx").read_bytes() == b"weights-1" and not src.exists()
    calls = []
    meta = store.meta("c")
    assert store.encoder("c", meta, lambda d: calls.append(d) or "ENC") == "ENC"
    assert store.encoder("c", meta, lambda d: calls.append(d) or "ENC2") == "ENC"   # cached per version
    assert calls == [v1]
    # a corrupted encoder file is detected on load (fresh store: as after a restart)
    (v1 / "model.int8.onnx").write_bytes(b"weights-X")
    with pytest.raises(ApiError) as exc:
        ClassifierStore(tmp_path).encoder("c", meta, lambda d: "ENC")
    assert exc.value.status == 503 and exc.value.type == "classifier_corrupt"
    # a superseding version removes the old one with its encoder; leftovers go at start-up
    m2 = store.save("c", {"labels": ["a", "b"], "model": "m"}, head)
    assert not v1.parent.exists() and (tmp_path / "classifiers" / "c" / f"v-{m2['version']}").exists()
    src.parent.mkdir(exist_ok=True)
    ClassifierStore(tmp_path)
    assert not src.parent.exists()
    # delete removes an encoder-carrying classifier entirely
    src2 = tmp_path / "classifiers" / ".finetune-2" / "encoder"
    src2.parent.mkdir()
    store.save("d", {"labels": ["a", "b"], "model": "m", "encoder": _fake_encoder(src2, b"w")},
               head, encoder_dir=src2)
    assert (tmp_path / "classifiers" / "d").exists()
    store.delete("d")
    assert not (tmp_path / "classifiers" / "d").exists()
