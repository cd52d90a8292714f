"""SetFit-style contrastive fine-tuning of a sentence encoder on a classifier's examples
(build extra: torch + sentence-transformers).  Run as a child process by the service:

    python -m models.setfit --base ST_FOLDER --examples EXAMPLES.json --out DIR \
        [--seed 0] [--pairs-per-example 20] [--epochs 1] [--learning-rate 2e-5] \
        [--batch-size 16] [--max-seq-length 128] [--threads N] [--precision int8|fp32|both] \
        [--pooling mean|cls] [--normalize|--no-normalize] [--max-length N]

``EXAMPLES.json`` is a list of ``{"text": ..., "label": ...}`` (every label needs >= 2 examples).

The recipe (Tunstall et al. 2022, "Efficient Few-Shot Learning Without Prompts"): for every
example, ``pairs_per_example / 2`` positive pairs (another example of the same label, target
cosine 1) and as many negative pairs (an example of another label -- the label drawn uniformly
among the other labels, so every label is an equally frequent negative -- target cosine 0);
the encoder is fine-tuned with CosineSimilarityLoss (MSE between the pair's cosine and its
target), AdamW, 10 % linear warm-up then linear decay.  Pairs, their order and torch are seeded
from ``--seed``; a plain loop (no Trainer, no dataloader workers) keeps runs reproducible.

The fine-tuned model is exported with the build's own ``models.export.export_onnx`` /
``quantize_int8`` (pooling and L2 normalisation inside the graph, same opset), checked against
the torch model (fp32 ONNX vs sentence-transformers, minimum cosine), and written to ``--out``
in the layout ``models.registry.BuiltEncoder`` / ``models.encoder.OnnxEncoder`` load:
``model.<precision>.onnx``, ``tokenizer.json``, ``meta.json`` (with a ``setfit`` section:
pairs, steps, losses, seconds) and ``.complete``.  Progress goes to stderr as ``[setfit] ...``
lines (``step I/N`` while training); the last stdout line is the ``setfit`` section as JSON.
Exit status 0 on success, 2 for bad arguments or examples, 1 for any other failure.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

# torch's OpenMP threads spin while waiting by default; on a shared 2-core machine that takes CPU
# from the service.  Must be set before torch is imported (as models/adapt does).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")   # keep stderr to progress lines

FIDELITY_MIN_COSINE = 0.9999     # same bar as the domain adaptation's export check
Pair = tuple[str, str, float]    # text a, text b, target cosine (1 = same label, 0 = different)


def _log(msg: str) -> None:
    print(f"[setfit] {msg}", file=sys.stderr, flush=True)


class SetFitError(ValueError):
    """Bad examples or options (exit status 2)."""


# ---------------------------------------------------------------------------- pairs
def make_pairs(texts: Sequence[str], labels: Sequence[str], pairs_per_example: int,
               seed: int) -> list[Pair]:
    """Contrastive pairs, deterministic from ``seed``: per example ``pairs_per_example // 2``
    positives (same label, never the example itself) and as many negatives (other labels)."""
    if len(texts) != len(labels):
        raise SetFitError("texts and labels differ in length")
    if pairs_per_example < 2 or pairs_per_example % 2:
        raise SetFitError("pairs_per_example must be an even number >= 2")
    by_label: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        by_label.setdefault(lab, []).append(i)
    if len(by_label) < 2:
        raise SetFitError("fine-tuning needs at least 2 labels")
    small = [lab for lab, idx in by_label.items() if len(idx) < 2]
    if small:
        raise SetFitError(f"label {small[0]!r} has fewer than 2 examples")
    names = sorted(by_label)
    rng = random.Random(seed)
    pairs: list[Pair] = []
    for i, (text, lab) in enumerate(zip(texts, labels)):
        same = [j for j in by_label[lab] if j != i]
        others = [n for n in names if n != lab]
        for _ in range(pairs_per_example // 2):
            pairs.append((text, texts[rng.choice(same)], 1.0))
            pairs.append((text, texts[rng.choice(by_label[rng.choice(others)])], 0.0))
    rng.shuffle(pairs)
    return pairs


# ---------------------------------------------------------------------------- training
def seed_everything(seed: int, threads: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, threads))


def load_model(folder: Path, pooling: str, normalize: bool):  # type: ignore[no-untyped-def]
    """The encoder as sentence-transformers loads it; a plain Hugging Face folder (an imported
    checkpoint) gets the registry's pooling (+ normalisation), as its ONNX export has."""
    import logging

    from sentence_transformers import SentenceTransformer

    logging.getLogger("sentence_transformers").setLevel(logging.WARNING)
    try:
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    if (folder / "modules.json").exists():
        return SentenceTransformer(str(folder), device="cpu")
    try:
        from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    except ImportError:  # older sentence-transformers
        from sentence_transformers.models import Normalize, Pooling, Transformer  # type: ignore[no-redef]
    tr = Transformer(str(folder))
    modules = [tr, Pooling(tr.get_embedding_dimension(), pooling)] + ([Normalize()] if normalize else [])
    return SentenceTransformer(modules=modules, device="cpu")


def finetune(model, pairs: Sequence[Pair], *, epochs: int, batch_size: int, lr: float,  # type: ignore[no-untyped-def]
             seed: int, warmup_ratio: float = 0.1,
             progress: Callable[[str], None] = _log) -> dict[str, Any]:
    """Fine-tune ``model`` in place with CosineSimilarityLoss; returns training figures."""
    import torch

    try:
        from sentence_transformers.sentence_transformer.losses import CosineSimilarityLoss
    except ImportError:  # older sentence-transformers
        from sentence_transformers.losses import CosineSimilarityLoss  # type: ignore[no-redef]

    rng = random.Random(seed + 1)
    batches: list[list[Pair]] = []
    for _ in range(epochs):
        order = list(pairs)
        rng.shuffle(order)
        batches += [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    loss_fn = CosineSimilarityLoss(model)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    total = len(batches)
    warm = max(1, int(total * warmup_ratio))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm)))
    model.train()
    t0, c0 = time.time(), time.process_time()
    losses: list[float] = []
    every = max(1, total // 10)
    tokenize = getattr(model, "preprocess", None) or model.tokenize   # renamed in ST 6
    for step, batch in enumerate(batches, 1):
        fa = tokenize([p[0] for p in batch])
        fb = tokenize([p[1] for p in batch])
        target = torch.tensor([p[2] for p in batch], dtype=torch.float32)
        loss = loss_fn([fa, fb], target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if step % every == 0 or step == total:
            el = time.time() - t0
            recent = losses[-every:]
            progress(f"step {step}/{total} loss {sum(recent) / len(recent):.4f} "
                     f"{el:.0f}s elapsed, ~{el / step * (total - step):.0f}s left")
    model.eval()
    head, tail = losses[:every], losses[-every:]
    return {"steps": total, "pairs_seen": sum(len(b) for b in batches),
            "loss_first": round(sum(head) / len(head), 5) if head else None,
            "loss_last": round(sum(tail) / len(tail), 5) if tail else None,
            "train_seconds": round(time.time() - t0, 1),
            "train_cpu_seconds": round(time.process_time() - c0, 1)}


# ---------------------------------------------------------------------------- export
def export(model, work: Path, out: Path, *, pooling: str, normalize: bool, max_length: int,  # type: ignore[no-untyped-def]
           precision: str, check_texts: Sequence[str],
           progress: Callable[[str], None] = _log) -> dict[str, Any]:
    """Save ``model``, export it with models/export.py and write a loadable encoder into ``out``."""
    import numpy as np

    from .build import weights_sha256
    from .encoder import OnnxEncoder
    from .export import export_onnx, quantize_int8
    from .registry import BUILD_SETTINGS, ONNX_OPSET, BuiltEncoder, EncoderSpec
    from .sources import sha256_file

    t0 = time.time()
    st_folder = work / "st"
    model.max_seq_length = max_length
    model.save(str(st_folder))
    progress(f"export: ONNX opset {ONNX_OPSET}")
    onnx_dir = work / "onnx"
    facts = export_onnx(st_folder, onnx_dir, pooling, normalize, max_length, ONNX_OPSET)
    variants = ["fp32", "int8"] if precision == "both" else [precision]
    if "int8" in variants:
        progress("export: quantizing int8")
        quantize_int8(onnx_dir / "model.fp32.onnx", onnx_dir / "model.int8.onnx")

    spec = EncoderSpec(name="setfit", description="SetFit fine-tuned encoder", source="local",
                       pooling=pooling, normalize=normalize, max_length=facts["max_length"],
                       dim=facts["dim"])
    files = {p: {"path": f"model.{p}.onnx", "sha256": ""} for p in ("fp32", "int8")
             if (onnx_dir / f"model.{p}.onnx").exists()}
    scratch = BuiltEncoder(spec=spec, directory=onnx_dir, meta={
        "dim": facts["dim"], "max_length": facts["max_length"], "pad_token_id": facts["pad_token_id"],
        "inputs": facts["inputs"], "files": files})
    # Fidelity: ONNX graph + tokenizer.json must reproduce the fine-tuned torch model.
    sample = list(dict.fromkeys(check_texts))[:64]
    ref = model.encode(sample, convert_to_numpy=True, normalize_embeddings=True, batch_size=32)
    vec = {p: OnnxEncoder(scratch, p, intra_op_threads=1).encode(sample).vectors for p in files}
    unit = {p: v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12) for p, v in vec.items()}
    fidelity = {p: round(float((ref * u).sum(1).min()), 6) for p, u in unit.items()}
    progress("export: min cosine to the torch model " +
             ", ".join(f"{p} {c:.6f}" for p, c in fidelity.items()))
    if fidelity["fp32"] < FIDELITY_MIN_COSINE:
        raise RuntimeError(f"the ONNX export drifted from the fine-tuned model "
                           f"(min cosine {fidelity['fp32']:.6f} < {FIDELITY_MIN_COSINE})")

    out.mkdir(parents=True, exist_ok=True)
    meta_files: dict[str, Any] = {}
    for p in variants:
        name = f"model.{p}.onnx"
        shutil.move(str(onnx_dir / name), str(out / name))
        meta_files[p] = {"path": name, "sha256": sha256_file(out / name), "bytes": (out / name).stat().st_size}
    shutil.copyfile(onnx_dir / "tokenizer.json", out / "tokenizer.json")
    meta_files["tokenizer"] = {"path": "tokenizer.json", "sha256": sha256_file(out / "tokenizer.json")}
    return {"dim": facts["dim"], "max_length": facts["max_length"], "pooling": pooling,
            "normalize": normalize, "inputs": facts["inputs"], "pad_token_id": facts["pad_token_id"],
            "model_type": facts["model_type"], "opset": ONNX_OPSET, "build_settings": BUILD_SETTINGS,
            "weights_sha256": weights_sha256(st_folder), "files": meta_files,
            "fidelity_min_cosine": fidelity, "export_seconds": round(time.time() - t0, 1)}


# ---------------------------------------------------------------------------- command line
def read_examples(path: Path) -> tuple[list[str], list[str]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SetFitError(f"cannot read examples from {path}: {exc}") from exc
    if not isinstance(data, list) or not all(
            isinstance(e, dict) and isinstance(e.get("text"), str) and isinstance(e.get("label"), str)
            for e in data):
        raise SetFitError("examples must be a JSON list of {\"text\": str, \"label\": str}")
    return [e["text"] for e in data], [e["label"] for e in data]


def _positive_int(lo: int, hi: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        n = int(value)
        if not lo <= n <= hi:
            raise argparse.ArgumentTypeError(f"must be between {lo} and {hi}")
        return n
    return parse


def _lr(value: str) -> float:
    x = float(value)
    if not 0 < x <= 1e-2:
        raise argparse.ArgumentTypeError("must be in (0, 0.01]")
    return x


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m models.setfit", description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, required=True, help="sentence-transformers (or HF) folder")
    ap.add_argument("--examples", type=Path, required=True, help='JSON list of {"text", "label"}')
    ap.add_argument("--out", type=Path, required=True, help="output folder (must not exist)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pairs-per-example", type=_positive_int(2, 1000), default=20)
    ap.add_argument("--epochs", type=_positive_int(1, 100), default=1)
    ap.add_argument("--learning-rate", type=_lr, default=2e-5)
    ap.add_argument("--batch-size", type=_positive_int(2, 512), default=16)
    ap.add_argument("--max-seq-length", type=_positive_int(8, 8192), default=128,
                    help="tokens per text while training (the export keeps --max-length)")
    ap.add_argument("--threads", type=_positive_int(1, 1024), default=os.cpu_count() or 1)
    ap.add_argument("--precision", choices=["int8", "fp32", "both"], default="int8")
    ap.add_argument("--pooling", choices=["mean", "cls"], default=None, help="default: the folder's")
    ap.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                    help="default: the folder's")
    ap.add_argument("--max-length", type=_positive_int(8, 8192), default=None,
                    help="max tokens of the exported encoder (default: the folder's)")
    args = ap.parse_args(argv)
    if args.pairs_per_example % 2:
        ap.error("--pairs-per-example must be even (half positive, half negative pairs)")
    return args


def run(args: argparse.Namespace, progress: Callable[[str], None] = _log) -> dict[str, Any]:
    from .export import read_st_config

    t0 = time.time()
    if args.out.exists():
        raise SetFitError(f"{args.out} already exists")
    if not args.base.is_dir():
        raise SetFitError(f"base folder {args.base} does not exist")
    texts, labels = read_examples(args.examples)
    cfg = read_st_config(args.base)
    pooling = args.pooling or cfg["pooling"]
    normalize = cfg["normalize"] if args.normalize is None else args.normalize
    max_length = args.max_length or cfg["max_length"]
    pairs = make_pairs(texts, labels, args.pairs_per_example, args.seed)
    positives = sum(1 for p in pairs if p[2] == 1.0)
    progress(f"pairs {len(pairs)} ({positives} positive, {len(pairs) - positives} negative) from "
             f"{len(texts)} examples, {len(set(labels))} labels; seed {args.seed}")
    seed_everything(args.seed, args.threads)
    progress(f"loading {args.base} ({args.threads} threads)")
    model = load_model(args.base, pooling, normalize)
    train_len = model.max_seq_length = min(args.max_seq_length, max_length)
    progress(f"training: {args.epochs} epoch(s), batch {args.batch_size}, lr {args.learning_rate}, "
             f"max_seq_length {train_len}")
    trained = finetune(model, pairs, epochs=args.epochs, batch_size=args.batch_size,
                       lr=args.learning_rate, seed=args.seed, progress=progress)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".setfit-work-", dir=args.out.parent))
    staging = work / "out"
    try:
        facts = export(model, work, staging, pooling=pooling, normalize=normalize,
                       max_length=max_length, precision=args.precision, check_texts=texts,
                       progress=progress)
        setfit = {"recipe": "setfit-cosine-similarity-loss", "base_folder": str(args.base),
                  "examples": len(texts), "labels": len(set(labels)), "pairs": len(pairs),
                  "positive_pairs": positives, "negative_pairs": len(pairs) - positives,
                  "pairs_per_example": args.pairs_per_example, "epochs": args.epochs,
                  "batch_size": args.batch_size, "learning_rate": args.learning_rate,
                  "max_seq_length": train_len, "seed": args.seed,
                  "threads": args.threads, **trained,
                  "export_seconds": facts.pop("export_seconds"),
                  "fidelity_min_cosine": facts.pop("fidelity_min_cosine")}
        setfit["seconds"] = round(time.time() - t0, 1)
        meta = {"name": "setfit", **facts, "setfit": setfit,
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "host": {"python": platform.python_version(), "machine": platform.machine()}}
        (staging / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        (staging / ".complete").write_text("ok\n")
        os.replace(staging, args.out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    progress(f"done in {time.time() - t0:.1f}s -> {args.out}")
    return setfit


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        summary = run(args)
    except SetFitError as exc:
        _log(f"error: {exc}")
        return 2
    except Exception as exc:  # noqa: BLE001 - the parent reads the stderr tail
        import traceback
        traceback.print_exc(file=sys.stderr)
        _log(f"error: {type(exc).__name__}: {exc}")
        return 1
    print(json.dumps(summary, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
