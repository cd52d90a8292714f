"""Registry of named encoders and the content-addressed location of their built artifacts.

The registry file (``models/registry.toml``) says what an encoder is; the model cache says
whether it has been built.  The artifact key is a hash of everything that determines the
built files: the source packages and versions, the build settings and the build code itself,
so a change to any of them leads to a new build and an unchanged checkout reuses the old one.
"""
from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .paths import model_cache_dir

REGISTRY_FILE = Path(__file__).with_name("registry.toml")
# Extra registry entries written by `models import` / `models adapt` live in the cache, so a
# user's own encoders never modify the source tree.
USER_REGISTRY_NAME = "user-registry.toml"

# Build settings shared by every encoder; part of the artifact key.
ONNX_OPSET = 17
BUILD_SETTINGS: dict[str, Any] = {"opset": ONNX_OPSET, "quantization": "dynamic-qint8-per-channel-reduce-range"}
# Source files whose content determines the built artifacts.
_BUILD_CODE = ("export.py", "build.py", "sources.py")

PRECISIONS = ("int8", "fp32")


class RegistryError(ValueError):
    """The registry file is malformed or names something unknown."""


@dataclass(frozen=True)
class EncoderSpec:
    name: str
    description: str
    source: str
    pooling: str
    normalize: bool
    max_length: int
    dim: int
    domain: str = "general"
    precision: str = "int8"
    default: bool = False
    packages: tuple[str, ...] = ()
    folder: str | None = None
    parts: tuple[str, ...] = ()
    path: str | None = None              # source == "local"
    base: str | None = None              # source == "adapted": encoder it starts from
    adapt: dict[str, Any] = field(default_factory=dict)  # adaptation recipe (domain encoders)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["packages"] = list(self.packages)
        d["parts"] = list(self.parts)
        return d


def _spec_from_table(name: str, table: dict[str, Any]) -> EncoderSpec:
    try:
        spec = EncoderSpec(
            name=name,
            description=str(table.get("description", "")),
            source=str(table["source"]),
            pooling=str(table.get("pooling", "mean")),
            normalize=bool(table.get("normalize", True)),
            max_length=int(table["max_length"]),
            dim=int(table["dim"]),
            domain=str(table.get("domain", "general")),
            precision=str(table.get("precision", "int8")),
            default=bool(table.get("default", False)),
            packages=tuple(table.get("packages", ())),
            folder=table.get("folder"),
            parts=tuple(table.get("parts", ())),
            path=table.get("path"),
            base=table.get("base"),
            adapt=dict(table.get("adapt", {})),
        )
    except KeyError as exc:
        raise RegistryError(f"encoder {name!r} lacks field {exc}") from exc
    if spec.pooling not in ("mean", "cls"):
        raise RegistryError(f"encoder {name!r}: pooling must be mean or cls")
    if spec.precision not in PRECISIONS:
        raise RegistryError(f"encoder {name!r}: precision must be one of {PRECISIONS}")
    if spec.source not in ("package-folder", "split-zip", "adapted", "local"):
        raise RegistryError(f"encoder {name!r}: unknown source {spec.source!r}")
    return spec


def load_registry(path: Path | None = None, include_user: bool = True) -> dict[str, EncoderSpec]:
    """All registered encoders, in file order (built-in first, then user-imported)."""
    with open(path or REGISTRY_FILE, "rb") as fh:
        data = tomllib.load(fh)
    specs = {name: _spec_from_table(name, t) for name, t in data.get("encoders", {}).items()}
    user = model_cache_dir() / USER_REGISTRY_NAME
    if include_user and path is None and user.exists():
        with open(user, "rb") as fh:
            for name, t in tomllib.load(fh).get("encoders", {}).items():
                if name not in specs:
                    specs[name] = _spec_from_table(name, t)
    return specs


def default_encoder_name(specs: dict[str, EncoderSpec]) -> str:
    for spec in specs.values():
        if spec.default:
            return spec.name
    return next(iter(specs))


def build_code_hash() -> str:
    h = hashlib.sha256()
    here = Path(__file__).parent
    for name in _BUILD_CODE:
        h.update(name.encode())
        h.update((here / name).read_bytes())
    return h.hexdigest()


def artifact_key(spec: EncoderSpec, specs: dict[str, EncoderSpec] | None = None) -> str:
    """Content key of the built artifacts of ``spec``.

    Adapted encoders include their base encoder's key (a new base means a new adaptation) and
    the hash of the adaptation code.
    """
    payload: dict[str, Any] = {
        "spec": {k: v for k, v in spec.to_json().items() if k not in ("description", "default", "precision")},
        "build": BUILD_SETTINGS,
        "code": build_code_hash(),
    }
    if spec.source == "adapted":
        specs = specs or load_registry()
        if spec.base not in specs:
            raise RegistryError(f"encoder {spec.name!r}: unknown base {spec.base!r}")
        payload["base_key"] = artifact_key(specs[spec.base], specs)
        adapt_dir = Path(__file__).parent / "adapt"
        h = hashlib.sha256()
        if adapt_dir.exists():
            for p in sorted(adapt_dir.glob("*.py")):
                h.update(p.name.encode())
                h.update(p.read_bytes())
        payload["adapt_code"] = h.hexdigest()
    if spec.source == "local" and spec.path:
        payload["local_fingerprint"] = _folder_fingerprint(Path(spec.path))
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def _folder_fingerprint(folder: Path) -> str:
    """Cheap fingerprint of a local model folder: names, sizes and mtimes of its files."""
    h = hashlib.sha256()
    if folder.exists():
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                st = p.stat()
                h.update(f"{p.relative_to(folder)}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()


def artifact_dir(spec: EncoderSpec, specs: dict[str, EncoderSpec] | None = None) -> Path:
    return model_cache_dir() / "encoders" / spec.name / artifact_key(spec, specs)


@dataclass(frozen=True)
class BuiltEncoder:
    """Paths and metadata of a built encoder found in the cache."""
    spec: EncoderSpec
    directory: Path
    meta: dict[str, Any]

    def onnx_path(self, precision: str) -> Path:
        return self.directory / self.meta["files"][precision]["path"]

    def onnx_sha256(self, precision: str) -> str:
        return str(self.meta["files"][precision]["sha256"])

    @property
    def tokenizer_path(self) -> Path:
        return self.directory / "tokenizer.json"


def find_built(spec: EncoderSpec, specs: dict[str, EncoderSpec] | None = None) -> BuiltEncoder | None:
    """The built artifacts of ``spec`` if a complete build is in the cache, else None."""
    try:
        directory = artifact_dir(spec, specs)
    except RegistryError:
        return None
    meta_path = directory / "meta.json"
    if not (directory / ".complete").exists() or not meta_path.exists():
        return None
    meta = json.loads(meta_path.read_text())
    return BuiltEncoder(spec=spec, directory=directory, meta=meta)


def build_command(name: str) -> str:
    spec_hint = "adapt --domain" if name in ("medical", "legal", "finance") else "build"
    return f"python -m models {spec_hint} {name}"

