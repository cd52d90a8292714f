"""One settings object; every knob is an environment variable (documented in the README)."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    # server
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path("./data")
    log_level: str = "info"
    log_json: bool = True
    access_log: bool = True                   # one JSON line per request

    # encoders
    model_cache: Path | None = None           # default: ~/.cache/semsearch/models
    default_model: str = "minilm"
    models: str = ""                          # comma-separated encoders to load; "" = every built one
    encoder_precision: Literal["", "int8", "fp32"] = ""   # "" = each encoder's registry default
    intra_op_threads: int = 0                 # onnxruntime threads per inference; 0 = all cores
    inter_op_threads: int = 1
    ort_allow_spinning: bool = False          # onnxruntime busy-wait between calls (off: leaves CPU to the event loop)

    # micro-batching
    micro_batching: bool = True
    batch_max_tokens: int = 8192              # padded tokens per ONNX call
    batch_max_wait_ms: float = 2.0            # how long the first request of a batch may wait
    queue_max_texts: int = 4096               # beyond this, 429 with Retry-After

    # request limits
    max_texts_per_request: int = 2048
    max_text_chars: int = 20000
    overlong_text: Literal["truncate", "reject"] = "truncate"
    max_body_bytes: int = 16 * 1024 * 1024
    max_top_k: int = 1000
    max_documents_per_upsert: int = 2048
    max_filter_depth: int = 8
    max_filter_conditions: int = 256
    max_pairs_texts: int = 5000

    # cache
    redis_url: str | None = None
    cache_prefix: str = "semsearch:"
    cache_local_max_items: int = 100_000
    cache_local_max_bytes: int = 256 * 1024 * 1024
    cache_embedding_ttl_s: int = 7 * 24 * 3600
    cache_result_ttl_s: int = 300
    redis_timeout_ms: int = 50
    redis_breaker_failures: int = 3
    redis_breaker_cooldown_s: float = 5.0

    # index
    index_snapshot_every_writes: int = 1000
    index_snapshot_every_s: float = 30.0

    # jobs
    max_concurrent_jobs: int = 2
    max_queued_jobs: int = 64                 # waiting jobs beyond the running ones; then 429
    job_ttl_s: float = 3600.0                 # finished jobs are kept (in memory) this long
    finetune_timeout_s: float = 1800.0        # wall-time limit of one fine-tuning child process

    # security
    api_keys: str = ""                        # "key:scope,key2:scope"; empty = auth off
    api_keys_file: Path | None = None
    cors_origins: str = ""                    # comma-separated; empty = CORS off

    def model_list(self) -> list[str]:
        return [m.strip() for m in self.models.split(",") if m.strip()]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
