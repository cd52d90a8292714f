"""Loaded encoders: one OnnxEncoder + MicroBatcher per built registry entry."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from models.batcher import MicroBatcher
from models.encoder import OnnxEncoder
from models.registry import EncoderSpec, build_command, find_built, load_registry

from ..errors import ApiError
from ..settings import Settings

log = logging.getLogger("semsearch.encoders")


@dataclass
class LoadedEncoder:
    spec: EncoderSpec
    encoder: OnnxEncoder
    batcher: MicroBatcher

    @property
    def name(self) -> str:
        return self.spec.name


class EncoderPool:
    """Named encoders the service can use, plus the ones that are registered but not built."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.specs = load_registry()
        self.loaded: dict[str, LoadedEncoder] = {}
        self.unavailable: dict[str, str] = {}
        self.default_name = settings.default_model
        self.router: Any = None          # models.domain_router.DomainRouter, for model="auto"

    def load(self) -> None:
        wanted = self.settings.model_list() or list(self.specs)
        for name in wanted:
            spec = self.specs.get(name)
            if spec is None:
                self.unavailable[name] = "not in the registry"
                log.warning("MODELS names unknown encoder %s", name)
                continue
            built = find_built(spec, self.specs)
            if built is None:
                self.unavailable[name] = f"not built; run: {build_command(name)}"
                log.warning("encoder %s is not built (run: %s); serving without it", name, build_command(name))
                continue
            precision = self.settings.encoder_precision or spec.precision
            try:
                enc = OnnxEncoder(built, precision=precision,
                                  intra_op_threads=self.settings.intra_op_threads,
                                  inter_op_threads=self.settings.inter_op_threads,
                                  max_batch_tokens=self.settings.batch_max_tokens,
                                  allow_spinning=self.settings.ort_allow_spinning)
            except Exception as exc:  # a corrupt artifact must not take the service down
                self.unavailable[name] = f"failed to load: {exc}"
                log.exception("encoder %s failed to load", name)
                continue
            batcher = MicroBatcher(enc, max_batch_tokens=self.settings.batch_max_tokens,
                                   max_wait_ms=self.settings.batch_max_wait_ms,
                                   queue_max_texts=self.settings.queue_max_texts,
                                   enabled=self.settings.micro_batching)
            self.loaded[name] = LoadedEncoder(spec, enc, batcher)
            log.info("loaded encoder %s (%s, dim %d)", name, precision, enc.dim)
        try:
            from models.domain_router import DomainRouter

            self.router = DomainRouter.load(self.specs)
        except Exception:  # a broken router disables "auto", nothing else
            log.exception("domain router failed to load; model=auto is unavailable")
            self.router = None
        if self.router is not None and self.router.base not in self.loaded:
            self.router = None
        if self.default_name not in self.loaded and self.loaded:
            fallback = next(iter(self.loaded))
            log.warning("default model %s is unavailable; using %s", self.default_name, fallback)
            self.default_name = fallback

    def start(self) -> None:
        for le in self.loaded.values():
            le.batcher.start()

    async def stop(self) -> None:
        for le in self.loaded.values():
            await le.batcher.stop()

    def get(self, name: str | None) -> LoadedEncoder:
        key = name or self.default_name
        if key == "auto":
            raise ApiError(400, "auto_not_supported",
                           "model 'auto' routes each text to a domain encoder; it is accepted by "
                           "stateless endpoints only (embeddings, similarity, classify, cluster)")
        if key in self.loaded:
            return self.loaded[key]
        if key in self.unavailable:
            raise ApiError(503, "model_not_available", f"model {key!r} is {self.unavailable[key]}",
                           {"model": key, "available": sorted(self.loaded)})
        raise ApiError(404, "model_not_found", f"unknown model {key!r}",
                       {"model": key, "available": sorted(self.loaded)})

    def domain_encoder(self, domain: str) -> str:
        """The loaded encoder serving ``domain`` (its adapted encoder), else the default."""
        for name, le in self.loaded.items():
            if le.spec.domain == domain and le.spec.source == "adapted":
                return name
        return self.default_name

    def describe(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for name, spec in self.specs.items():
            le = self.loaded.get(name)
            entry: dict[str, Any] = {
                "name": name, "description": spec.description, "domain": spec.domain,
                "dim": spec.dim, "max_length": spec.max_length, "pooling": spec.pooling,
                "normalized": spec.normalize, "default": name == self.default_name,
            }
            if le:
                meta = le.encoder.built.meta
                entry.update({
                    "status": "ready", "precision": le.encoder.precision,
                    "max_length": le.encoder.max_length,
                    "metadata": {k: meta.get(k) for k in (
                        "source_packages", "weights_sha256", "opset", "built_at", "key",
                        "adaptation", "evaluation") if k in meta}
                    | {"onnx_sha256": le.encoder.onnx_sha256},
                })
            else:
                entry.update({"status": "unavailable",
                              "reason": self.unavailable.get(name, "not loaded (MODELS setting)")})
            out.append(entry)
        return out
