"""Optional SetFit-style fine-tuning of a classifier's encoder (``"finetune": true``).

The service never imports torch.  Fine-tuning runs in a child process (``python -m
models.setfit``, see that module for the recipe) started by the training job; this module
validates a request before anything is queued (is the build extra installed? can this encoder
be fine-tuned?), runs the child with a timeout while turning its ``[setfit] step I/N`` lines
into job progress, and loads fine-tuned ONNX encoders (onnxruntime only) for prediction.

Which encoders can be fine-tuned: the ones whose original sentence-transformers folder can be
obtained -- shipped encoders (``package-folder``, ``split-zip``: ``models.build.materialize_source``)
and imported local checkpoints whose folder still exists.  Domain-adapted encoders cannot: their
build keeps only the ONNX export and ``meta.json`` (the trained checkpoint is a scratch folder
deleted after export), and ONNX is not trainable.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import sys
from collections import deque
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Callable

from models.registry import BuiltEncoder, EncoderSpec

from ..errors import ApiError

log = logging.getLogger("semsearch.finetune")

REQUIRED_MODULES = ("torch", "sentence_transformers")
INSTALL_HINT = "pip install -r requirements/build.txt"
TRAINABLE_SOURCES = ("package-folder", "split-zip", "local")
MAX_FINETUNE_EXAMPLES = 2000
MAX_FINETUNE_PAIR_PASSES = 50_000    # examples x pairs_per_example x epochs
STDERR_TAIL_LINES = 20
PROJECT_ROOT = Path(__file__).resolve().parents[2]
_STEP = re.compile(r"\bstep (\d+)/(\d+)\b")


def missing_modules() -> list[str]:
    """Build-extra modules that are not installed (looked up, never imported)."""
    return [m for m in REQUIRED_MODULES if find_spec(m) is None]


@dataclass(frozen=True)
class FinetunePlan:
    spec: EncoderSpec
    precision: str                 # variant served for the base encoder; the fine-tuned one matches
    max_length: int                # tokens of the exported encoder (the registry's, as builds use)
    pairs_per_example: int
    epochs: int
    learning_rate: float
    batch_size: int
    max_seq_length: int

    def options(self) -> dict[str, Any]:
        return {"pairs_per_example": self.pairs_per_example, "epochs": self.epochs,
                "learning_rate": self.learning_rate, "batch_size": self.batch_size,
                "max_seq_length": self.max_seq_length}


def check_request(req: Any) -> None:
    """Checks that need nothing but the request (run before the examples are looked at)."""
    if not req.finetune:
        if req.finetune_options is not None:
            raise ApiError(422, "invalid_finetune_options",
                           "finetune_options is only meaningful with \"finetune\": true")
        return
    if req.background is False:
        raise ApiError(422, "finetune_requires_background",
                       "fine-tuning always runs as a background job (202 + job_id); drop "
                       "\"background\": false or set it to true")


def plan_finetune(svc: Any, req: Any, examples: int) -> FinetunePlan:
    """Validate a fine-tuning request completely; raises before anything is queued."""
    missing = missing_modules()
    if missing:
        raise ApiError(422, "finetune_unavailable",
                       f"fine-tuning needs the build extra ({', '.join(missing)} not installed); "
                       f"install it with: {INSTALL_HINT}", {"missing": missing, "install": INSTALL_HINT})
    pool = svc.embedding.pool
    name = req.model or pool.default_name
    spec = pool.specs.get(name)
    if spec is not None and spec.source not in TRAINABLE_SOURCES:
        base = f"; fine-tune its base encoder {spec.base!r} instead" if spec.base else ""
        raise ApiError(422, "finetune_unsupported",
                       f"encoder {name!r} cannot be fine-tuned: it is {spec.source} and its build "
                       "keeps only the ONNX export, no trainable checkpoint" + base +
                       ", or train without \"finetune\"", {"model": name, "source": spec.source})
    if spec is not None and spec.source == "local" and not (spec.path and Path(spec.path).is_dir()):
        raise ApiError(422, "finetune_unsupported",
                       f"encoder {name!r} was imported from {spec.path}, which no longer exists",
                       {"model": name, "source": spec.source})
    le = svc.embedding.encoder(req.model)          # 404 unknown / 503 not built, as without finetune
    if examples > MAX_FINETUNE_EXAMPLES:
        raise ApiError(422, "finetune_too_large",
                       f"fine-tuning takes at most {MAX_FINETUNE_EXAMPLES} examples (got {examples}); "
                       "SetFit is a few-shot method: train without \"finetune\" on this many",
                       {"count": examples, "limit": MAX_FINETUNE_EXAMPLES})
    if req.finetune_options is not None:
        o = req.finetune_options
    else:
        from ..schemas.classify import FinetuneOptions
        o = FinetuneOptions()
    passes = examples * o.pairs_per_example * o.epochs
    if passes > MAX_FINETUNE_PAIR_PASSES:
        raise ApiError(422, "finetune_too_large",
                       f"examples x pairs_per_example x epochs = {passes} exceeds "
                       f"{MAX_FINETUNE_PAIR_PASSES}; lower pairs_per_example or epochs",
                       {"pair_passes": passes, "limit": MAX_FINETUNE_PAIR_PASSES})
    return FinetunePlan(spec=le.spec, precision=le.encoder.precision, max_length=le.spec.max_length,
                        pairs_per_example=o.pairs_per_example, epochs=o.epochs,
                        learning_rate=o.learning_rate, batch_size=o.batch_size,
                        max_seq_length=min(o.max_seq_length, le.spec.max_length))


# ---------------------------------------------------------------------------- the child process
def source_folder(spec: EncoderSpec) -> Path:
    """The encoder's original sentence-transformers folder (fetched/joined once, then cached)."""
    if spec.source == "local":
        return Path(str(spec.path))
    from models.build import materialize_source
    return materialize_source(spec)


def child_command(ft: FinetunePlan, base: Path, examples: Path, out: Path, seed: int,
                  threads: int) -> list[str]:
    return [sys.executable, "-m", "models.setfit", "--base", str(base), "--examples", str(examples),
            "--out", str(out), "--seed", str(seed),
            "--pairs-per-example", str(ft.pairs_per_example), "--epochs", str(ft.epochs),
            "--learning-rate", repr(ft.learning_rate), "--batch-size", str(ft.batch_size),
            "--max-seq-length", str(ft.max_seq_length), "--threads", str(threads),
            "--precision", ft.precision, "--pooling", ft.spec.pooling,
            "--normalize" if ft.spec.normalize else "--no-normalize",
            "--max-length", str(ft.max_length)]


def _kill(proc: asyncio.subprocess.Process) -> None:
    """End the child (its own process group: start_new_session) by id."""
    if proc.returncode is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            proc.kill()
        except ProcessLookupError:
            pass


async def run_child(cmd: list[str], timeout_s: float, threads: int,
                    on_line: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Run ``cmd`` (the setfit child); return its JSON summary.  Raises ApiError on a non-zero
    exit (with the stderr tail) or when ``timeout_s`` passes (the child is killed)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    env.setdefault("OMP_NUM_THREADS", str(threads))
    env["PYTHONUNBUFFERED"] = "1"
    tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
    proc = await asyncio.create_subprocess_exec(*cmd, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE,
                                                cwd=str(PROJECT_ROOT), env=env,
                                                start_new_session=True)
    log.info("fine-tuning child %d started", proc.pid)

    async def read_stderr() -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            for line in raw.decode("utf-8", "replace").replace("\r", "\n").splitlines():
                line = line.rstrip()
                if line:
                    tail.append(line[:500])
                    on_line(line)

    async def communicate() -> bytes:
        assert proc.stdout is not None
        out, _ = await asyncio.gather(proc.stdout.read(), read_stderr())
        await proc.wait()
        return out

    try:
        stdout = await asyncio.wait_for(communicate(), timeout=timeout_s)
    except asyncio.TimeoutError:
        _kill(proc)
        await proc.wait()
        raise ApiError(504, "finetune_timeout",
                       f"fine-tuning did not finish within FINETUNE_TIMEOUT_S={timeout_s:g}s and was "
                       "stopped; the previous version of the classifier is unchanged",
                       {"timeout_s": timeout_s, "stderr_tail": list(tail)}) from None
    finally:  # cancelled job, or any error while reading: never leave the child running
        if proc.returncode is None:
            _kill(proc)
            await proc.wait()
    if proc.returncode != 0:
        last = next((t for t in reversed(tail) if "error" in t.lower()), tail[-1] if tail else "")
        raise ApiError(500, "finetune_failed",
                       f"fine-tuning failed (exit status {proc.returncode}): {last}; the previous "
                       "version of the classifier is unchanged",
                       {"exit_code": proc.returncode, "stderr_tail": list(tail)})
    try:
        return json.loads(stdout.decode("utf-8").strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise ApiError(500, "finetune_failed", "the fine-tuning child printed no summary",
                       {"stderr_tail": list(tail)}) from None


async def finetune_encoder(svc: Any, ft: FinetunePlan, texts: list[str], labels: list[str],
                           seed: int, work: Path, progress: Callable[[float], None],
                           lo: float = 0.1, hi: float = 0.85) -> tuple[Path, dict[str, Any]]:
    """Fine-tune in a child process; returns (encoder folder inside ``work``, its meta.json)."""
    work.mkdir(parents=True, exist_ok=True)
    examples = work / "examples.json"
    examples.write_text(json.dumps([{"text": t, "label": y} for t, y in zip(texts, labels)]),
                        encoding="utf-8")
    try:
        base = await asyncio.to_thread(source_folder, ft.spec)
    except Exception as exc:  # a missing/broken source package must fail the job, clearly
        raise ApiError(503, "finetune_failed", f"the source weights of {ft.spec.name!r} could not "
                       f"be obtained: {exc}", {"model": ft.spec.name}) from exc
    threads = svc.settings.intra_op_threads or (os.cpu_count() or 1)
    out = work / "encoder"
    train_hi = lo + 0.8 * (hi - lo)

    def on_line(line: str) -> None:
        m = _STEP.search(line)
        if m and int(m.group(2)) > 0:
            progress(lo + (train_hi - lo) * int(m.group(1)) / int(m.group(2)))
        elif "export:" in line:
            progress(train_hi)

    summary = await run_child(child_command(ft, base, examples, out, seed, threads),
                              svc.settings.finetune_timeout_s, threads, on_line)
    progress(hi)
    meta = json.loads((out / "meta.json").read_text())
    meta["setfit"] = summary | meta.get("setfit", {})
    return out, meta


# ---------------------------------------------------------------------------- loading
def load_encoder(svc: Any, base_model: str, directory: Path, precision: str) -> Any:
    """An OnnxEncoder over a fine-tuned encoder folder (onnxruntime; no torch)."""
    from models.encoder import OnnxEncoder

    meta = json.loads((directory / "meta.json").read_text())
    spec = EncoderSpec(name=f"{base_model}+setfit", description="SetFit fine-tuned encoder",
                       source="local", pooling=str(meta.get("pooling", "mean")),
                       normalize=bool(meta.get("normalize", True)), max_length=int(meta["max_length"]),
                       dim=int(meta["dim"]), precision=precision)
    s = svc.settings
    return OnnxEncoder(BuiltEncoder(spec=spec, directory=directory, meta=meta), precision=precision,
                       intra_op_threads=s.intra_op_threads, inter_op_threads=s.inter_op_threads,
                       max_batch_tokens=s.batch_max_tokens, allow_spinning=s.ort_allow_spinning)
