"""Vocabulary adaptation: a shattered domain word becomes one token initialised from its pieces."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="vocabulary adaptation is a build-time (torch) feature")


def test_shattered_word_becomes_one_token_with_mean_embedding(tmp_path, built_minilm):
    from tokenizers import Tokenizer
    from transformers import AutoModel

    from models.adapt.vocab import extend_vocabulary, shattered_words
    from models.build import materialize_source
    from models.registry import load_registry

    base = materialize_source(load_registry()["minilm"])
    texts = ["Hypoplasia of the phalanx."] * 5 + ["Mild phalanx hypoplasia", "short words only"] * 3
    found = {w: pieces for w, pieces, _ in shattered_words(base / "tokenizer.json", texts, min_freq=5)}
    assert "hypoplasia" in found and len(found["hypoplasia"]) >= 3
    assert "short" not in found and "words" not in found

    old_tok = Tokenizer.from_file(str(base / "tokenizer.json"))
    old_ids = [t.id for t in old_tok.model.tokenize("hypoplasia")]
    report = extend_vocabulary(base, tmp_path / "ext", ["hypoplasia", "phalanx"])
    assert report["added_tokens"] == 2

    new_tok = Tokenizer.from_file(str(tmp_path / "ext" / "tokenizer.json"))
    new_tok.no_padding()
    enc = new_tok.encode("Severe hypoplasia and hypoplasias")
    assert enc.tokens[:4] == ["[CLS]", "severe", "hypoplasia", "and"]
    assert enc.tokens[4:6] == ["hypoplasia", "##s"]             # greedy longest match still works
    new_id = new_tok.token_to_id("hypoplasia")
    assert new_id >= old_tok.get_vocab_size()

    old_emb = AutoModel.from_pretrained(str(base)).get_input_embeddings().weight.detach().numpy()
    new_model = AutoModel.from_pretrained(str(tmp_path / "ext"))
    new_emb = new_model.get_input_embeddings().weight.detach().numpy()
    assert new_emb.shape[0] == new_tok.get_vocab_size() == new_model.config.vocab_size
    np.testing.assert_allclose(new_emb[new_id], old_emb[old_ids].mean(0), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(new_emb[: old_emb.shape[0]], old_emb)   # old rows untouched

    # the Python tokenizer that training uses agrees with the Rust runtime tokenizer
    from transformers import AutoTokenizer
    py = AutoTokenizer.from_pretrained(str(tmp_path / "ext"))
    assert py("Severe hypoplasia")["input_ids"] == new_tok.encode("Severe hypoplasia").ids
