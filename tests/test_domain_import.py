"""Bring your own checkpoint: a local Hugging Face folder becomes a registered ONNX encoder."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch", reason="importing a checkpoint exports it with torch (build-time)")

SENTENCES = ["A cat sits on the mat.", "Stock markets fell sharply on Monday.",
             "Patients reported chest pain.", "short", "The licensee may redistribute the software."]


@pytest.fixture(scope="module")
def two_layer_folder(tmp_path_factory, built_minilm):
    """minilm cut to 2 layers, saved as a plain HF folder (no modules.json): a different model."""
    from transformers import AutoModel, AutoTokenizer

    from models.build import materialize_source
    from models.registry import load_registry

    src = materialize_source(load_registry()["minilm"])
    model = AutoModel.from_pretrained(str(src))
    model.encoder.layer = model.encoder.layer[:2]
    model.config.num_hidden_layers = 2
    out = tmp_path_factory.mktemp("ckpt") / "tiny-bert"
    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(src)).save_pretrained(str(out))
    assert not (out / "modules.json").exists()
    return out


def test_import_end_to_end(two_layer_folder, built_minilm, tmp_path, monkeypatch, capsys):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    from models.cli import main
    from models.encoder import OnnxEncoder
    from models.registry import USER_REGISTRY_NAME, find_built, load_registry

    monkeypatch.setenv("MODEL_CACHE", str(tmp_path / "cache"))     # keep the real user registry clean
    assert main(["import", "--name", "tiny", "--path", str(two_layer_folder), "--domain", "test"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["fidelity_min_cosine"] >= 0.9999 and report["dim"] == 384

    specs = load_registry()
    spec = specs["tiny"]
    assert (spec.source, spec.domain, spec.pooling, spec.normalize) == ("local", "test", "mean", True)
    assert (tmp_path / "cache" / USER_REGISTRY_NAME).exists()
    built = find_built(spec, specs)
    assert built is not None

    # independent reference: sentence-transformers with mean pooling over the same folder
    tr = Transformer(str(two_layer_folder))
    st = SentenceTransformer(modules=[tr, Pooling(384, "mean")], device="cpu")
    ref = st.encode(SENTENCES, normalize_embeddings=True)
    got = OnnxEncoder(built, "fp32").encode(SENTENCES).vectors
    assert float((ref * got).sum(1).min()) >= 0.9999
    got8 = OnnxEncoder(built, "int8").encode(SENTENCES).vectors
    assert float((ref * got8).sum(1).min()) >= 0.97
    # a genuinely different model from minilm (2 of its 6 layers)
    base = OnnxEncoder(built_minilm, "fp32").encode(SENTENCES).vectors
    assert float((base * got).sum(1).mean()) < 0.95

    # importing again is a no-op that reuses the build; the name shows up in `list`
    assert main(["import", "--name", "tiny", "--path", str(two_layer_folder)]) == 0
    capsys.readouterr()
    assert main(["list"]) == 0
    assert "tiny" in capsys.readouterr().out


def test_import_rejects_what_it_cannot_serve(two_layer_folder, tmp_path, monkeypatch):
    from models.adapt.importer import import_checkpoint
    from models.registry import RegistryError

    monkeypatch.setenv("MODEL_CACHE", str(tmp_path / "cache"))
    with pytest.raises(RegistryError, match="built-in"):
        import_checkpoint("minilm", two_layer_folder)
    with pytest.raises(RegistryError, match="invalid encoder name"):
        import_checkpoint("Bad Name!", two_layer_folder)
    with pytest.raises(RegistryError, match="not a directory"):
        import_checkpoint("x", tmp_path / "missing")
    gpt = tmp_path / "gpt"
    gpt.mkdir()
    (gpt / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(RegistryError, match="not a BERT-family"):
        import_checkpoint("gptish", gpt)
    dense = tmp_path / "dense"
    dense.mkdir()
    (dense / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Dense", "type": "sentence_transformers.models.Dense"}]))
    with pytest.raises(RegistryError, match="Dense"):
        import_checkpoint("densey", dense)
