"""Vocabulary-based adaptation: frequent domain words that WordPiece shatters become tokens.

A word such as "hypoplasia" that the general tokenizer splits into three or more pieces is
added to the WordPiece vocabulary itself (not as an "added token"), so the Rust
``tokenizers`` runtime, the Python tokenizer and the ONNX export all treat it the same way:
greedy longest-match now finds the whole word (and "hypoplasias" -> "hypoplasia", "##s").
The new embedding row is the mean of the rows of the pieces it replaces, so the model starts
from (roughly) what it saw before and training refines it.
"""
from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Iterable

_WORD = re.compile(r"^[a-z][a-z]+$")


def shattered_words(tokenizer_json: Path, texts: Iterable[str], min_pieces: int = 3,
                    min_freq: int = 5, max_words: int = 500, min_chars: int = 5) -> list[tuple[str, list[str], int]]:
    """Frequent words split into >= ``min_pieces`` pieces: [(word, pieces, frequency)], best first.

    Ranked by tokens saved (frequency x (pieces - 1)), ties by word, so the choice is
    deterministic for a given corpus.
    """
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    counts: Counter[str] = Counter()
    for text in texts:
        norm = tok.normalizer.normalize_str(text) if tok.normalizer else text
        for word, _ in tok.pre_tokenizer.pre_tokenize_str(norm):
            if len(word) >= min_chars and _WORD.match(word):
                counts[word] += 1
    vocab = tok.get_vocab()
    found = []
    for word, freq in counts.items():
        if freq < min_freq or word in vocab:
            continue
        pieces = [t.value for t in tok.model.tokenize(word)]
        if len(pieces) >= min_pieces:
            found.append((word, pieces, freq))
    found.sort(key=lambda w: (-w[2] * (len(w[1]) - 1), w[0]))
    return found[:max_words]


def extend_vocabulary(src: Path, dst: Path, words: list[str]) -> dict[str, object]:
    """Copy the model folder ``src`` to ``dst`` with ``words`` added to its vocabulary.

    Updates tokenizer.json (WordPiece vocab), vocab.txt, the embedding matrix (new rows =
    mean of the old pieces' rows) and config.json.  Returns a small report.
    """
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModel

    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    old_vocab = tok.get_vocab()
    new_words = [w for w in dict.fromkeys(words) if w not in old_vocab]
    pieces = {w: [t.id for t in tok.model.tokenize(w)] for w in new_words}

    data = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    if data["model"].get("type") != "WordPiece":
        raise ValueError("vocabulary adaptation supports WordPiece tokenizers only")
    vocab: dict[str, int] = data["model"]["vocab"]
    next_id = max(vocab.values()) + 1
    ids = {}
    for w in new_words:
        ids[w] = next_id
        vocab[w] = next_id
        next_id += 1
    (dst / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    vocab_txt = dst / "vocab.txt"
    if vocab_txt.exists():
        lines = vocab_txt.read_text(encoding="utf-8").splitlines()
        if len(lines) != min(ids.values(), default=len(lines)):
            raise ValueError("vocab.txt and tokenizer.json disagree on the vocabulary size")
        vocab_txt.write_text("\n".join(lines + new_words) + "\n", encoding="utf-8")

    model = AutoModel.from_pretrained(str(src))
    emb = model.get_input_embeddings().weight.detach().clone()
    new_rows = torch.stack([emb[pieces[w]].mean(0) for w in new_words]) if new_words else emb[:0]
    model.resize_token_embeddings(next_id, mean_resizing=False)
    with torch.no_grad():
        weight = model.get_input_embeddings().weight
        weight[: emb.shape[0]] = emb
        if new_words:
            weight[emb.shape[0]:] = new_rows
    model.save_pretrained(str(dst))
    # save_pretrained may write pytorch_model.bin or model.safetensors; keep exactly one.
    if (dst / "model.safetensors").exists() and (dst / "pytorch_model.bin").exists():
        (dst / "pytorch_model.bin").unlink()
    return {"added_tokens": len(new_words), "vocab_size": next_id,
            "examples": {w: [tok.id_to_token(i) for i in pieces[w]] for w in new_words[:10]}}
