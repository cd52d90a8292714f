"""Bring your own checkpoint: a local BERT-family folder -> a registered ONNX encoder.

Accepts a sentence-transformers folder (Transformer [+ Pooling] [+ Normalize]) or a plain
Hugging Face folder (config.json + weights + tokenizer).  The folder is exported like every
other encoder (fp32 + int8, pooling and normalisation inside the graph), checked against
sentence-transformers on sample sentences (cosine >= 0.9999), and only then registered in the
user registry in the model cache (never in the source tree).
"""
from __future__ import annotations

import json
import re
import shutil
import sys
import tomllib
from pathlib import Path
from typing import Any, Callable

from ..paths import model_cache_dir
from ..registry import (REGISTRY_FILE, USER_REGISTRY_NAME, EncoderSpec, RegistryError, artifact_dir,
                        load_registry)
from ..sources import file_lock

BERT_FAMILY = ("bert", "roberta", "xlm-roberta", "distilbert", "mpnet", "electra", "albert",
               "camembert", "deberta", "deberta-v2", "modernbert")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,47}$")
_RESERVED = {"auto", "default", "all"}
_ST_MODULES_OK = ("Transformer", "Pooling", "Normalize")
FIDELITY_MIN_COSINE = 0.9999
SAMPLE = [
    "A man is playing a guitar on stage.",
    "The central bank raised interest rates by a quarter point.",
    "Shortness of breath and chest pain after climbing stairs",
    "This program is free software; you can redistribute it and/or modify it.",
    "ok",
    "The Earned Income Tax Credit phases out as income rises above the threshold for the filer's family size.",
]


def _log(msg: str) -> None:
    print(f"[import] {msg}", file=sys.stderr, flush=True)


def inspect_folder(folder: Path) -> dict[str, Any]:
    """Where the transformer lives inside ``folder`` and how the folder pools/normalises."""
    from ..export import read_st_config

    folder = folder.expanduser().resolve()
    if not folder.is_dir():
        raise RegistryError(f"{folder} is not a directory")
    info: dict[str, Any] = {"folder": folder, "hf_folder": folder, "sentence_transformers": False}
    modules = folder / "modules.json"
    if modules.exists():
        info["sentence_transformers"] = True
        for mod in json.loads(modules.read_text()):
            kind = str(mod.get("type", "")).rsplit(".", 1)[-1]
            if kind not in _ST_MODULES_OK:
                raise RegistryError(f"sentence-transformers module {kind!r} is not supported "
                                    f"(supported: {', '.join(_ST_MODULES_OK)})")
            if kind == "Transformer" and mod.get("path"):
                info["hf_folder"] = folder / mod["path"]
        info.update(read_st_config(folder))
    hf = info["hf_folder"]
    cfg_path = hf / "config.json"
    if not cfg_path.exists():
        raise RegistryError(f"{hf} has no config.json: not a Hugging Face model folder")
    cfg = json.loads(cfg_path.read_text())
    model_type = str(cfg.get("model_type", ""))
    if model_type not in BERT_FAMILY:
        raise RegistryError(f"model_type {model_type!r} is not a BERT-family encoder "
                            f"(supported: {', '.join(BERT_FAMILY)})")
    if not any((hf / n).exists() for n in ("model.safetensors", "pytorch_model.bin")):
        raise RegistryError(f"{hf} has no model.safetensors or pytorch_model.bin")
    if not any((hf / n).exists() for n in ("tokenizer.json", "vocab.txt", "tokenizer_config.json")):
        raise RegistryError(f"{hf} has no tokenizer files")
    info["model_type"] = model_type
    info["dim"] = int(cfg.get("hidden_size") or cfg.get("dim") or 0)
    limit = int(cfg.get("max_position_embeddings", 512))
    if model_type in ("roberta", "xlm-roberta", "camembert", "mpnet"):
        limit -= 2
    info["max_position"] = limit
    return info


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v), ensure_ascii=False)      # a valid TOML basic string


def _write_user_registry(entries: dict[str, dict[str, Any]]) -> None:
    path = model_cache_dir() / USER_REGISTRY_NAME
    lines = ["# Encoders imported with `python -m models import` (written by the tool; edit with care).", ""]
    for name, table in entries.items():
        lines.append(f"[encoders.{name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in table.items() if v is not None]
        lines.append("")
    tmp = path.with_suffix(".toml.tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    tmp.replace(path)


def _read_user_registry() -> dict[str, dict[str, Any]]:
    path = model_cache_dir() / USER_REGISTRY_NAME
    if not path.exists():
        return {}
    with open(path, "rb") as fh:
        return dict(tomllib.load(fh).get("encoders", {}))


def reference_embeddings(info: dict[str, Any], pooling: str, texts: list[str], max_length: int):  # type: ignore[no-untyped-def]
    """Embeddings from sentence-transformers itself (the folder as a user would load it)."""
    import logging

    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    logging.getLogger("sentence_transformers").setLevel(logging.ERROR)
    if info["sentence_transformers"]:
        st = SentenceTransformer(str(info["folder"]), device="cpu")
    else:
        tr = Transformer(str(info["hf_folder"]), max_seq_length=max_length)
        st = SentenceTransformer(modules=[tr, Pooling(tr.get_embedding_dimension(), pooling)], device="cpu")
    st.max_seq_length = max_length
    return st.encode(texts, convert_to_numpy=True, normalize_embeddings=True)


def import_checkpoint(name: str, path: str | Path, domain: str = "general", description: str | None = None,
                      pooling: str | None = None, normalize: bool | None = None,
                      max_length: int | None = None, precision: str = "int8", force: bool = False,
                      progress: Callable[[str], None] = _log) -> EncoderSpec:
    """Export, verify and register the folder at ``path`` as encoder ``name``."""
    from ..build import build_from_folder
    from ..encoder import OnnxEncoder
    from ..registry import find_built

    if not _NAME.match(name) or name in _RESERVED:
        raise RegistryError(f"invalid encoder name {name!r}: use lowercase letters, digits, '-' or '_'")
    with open(REGISTRY_FILE, "rb") as fh:
        if name in tomllib.load(fh).get("encoders", {}):
            raise RegistryError(f"{name!r} is a built-in encoder; choose another name")
    info = inspect_folder(Path(path))
    pooling = pooling or info.get("pooling", "mean")
    normalize = info.get("normalize", True) if normalize is None else normalize
    max_length = int(min(max_length or info.get("max_length", 512), info["max_position"]))
    spec = EncoderSpec(
        name=name, description=description or f"imported from {info['folder']}", source="local",
        pooling=str(pooling), normalize=bool(normalize), max_length=max_length, dim=info["dim"],
        domain=domain, precision=precision, path=str(info["hf_folder"]))
    with file_lock(model_cache_dir() / f".{USER_REGISTRY_NAME}.lock"):
        existing = _read_user_registry()
        if name in existing and not force and existing[name].get("path") != spec.path:
            raise RegistryError(f"{name!r} is already imported from {existing[name].get('path')}; "
                                f"use --force to replace it")
        built = find_built(spec)
        if built is None or force:
            progress(f"{name}: exporting {info['model_type']} from {info['hf_folder']}")
            directory = build_from_folder(spec, info["hf_folder"], progress=progress,
                                          extra_meta={"import": {"folder": str(info["folder"]),
                                                                 "sentence_transformers": info["sentence_transformers"]}})
            built = find_built(spec)
            assert built is not None and built.directory == directory
        ref = reference_embeddings(info, spec.pooling, SAMPLE, spec.max_length)
        got = OnnxEncoder(built, "fp32", intra_op_threads=2).encode(SAMPLE).vectors
        cosine = float((ref * got).sum(1).min())
        progress(f"{name}: ONNX fp32 vs sentence-transformers min cosine {cosine:.6f}")
        if cosine < FIDELITY_MIN_COSINE:
            shutil.rmtree(built.directory, ignore_errors=True)
            raise RegistryError(f"{name}: ONNX export does not reproduce the model (cosine {cosine:.6f}); not registered")
        meta_path = built.directory / "meta.json"
        meta = json.loads(meta_path.read_text())
        meta.setdefault("import", {})["fidelity_min_cosine"] = round(cosine, 6)
        tmp = meta_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
        tmp.replace(meta_path)
        table = {k: v for k, v in spec.to_json().items()
                 if k in ("description", "source", "pooling", "normalize", "max_length", "dim", "domain",
                          "precision", "path")}
        existing[name] = table
        _write_user_registry(existing)
    if name not in load_registry():
        raise RegistryError(f"{name!r} was written to the user registry but does not load")
    progress(f"{name}: registered ({artifact_dir(spec)})")
    return spec
