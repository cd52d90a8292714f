"""Context-based adaptation: contrastive fine-tuning with in-batch negatives (build time, torch).

The loss is MultipleNegativesRankingLoss made symmetric: in a batch of (anchor, positive)
pairs every other positive is a negative for an anchor and vice versa.  Batches never hold
two pairs of the same concept or the same positive text, so no in-batch "negative" is in
fact a positive.  A plain loop (no Trainer, no dataloader workers) keeps it deterministic.
"""
from __future__ import annotations

import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

Pair = tuple[str, str, str, str, str]      # anchor, positive, kind, concept id, concept group


def _log(msg: str) -> None:
    print(f"[adapt] {msg}", file=sys.stderr, flush=True)


def seed_everything(seed: int, threads: int = 2) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _grouped_order(pairs: Sequence[Pair], rng: random.Random, hard_fraction: float) -> list[Pair]:
    """Shuffle, then lay a ``hard_fraction`` of the pairs out group by group (groups in random
    order), so consecutive pairs - and thus batch-mates - are often related concepts (siblings
    in the ontology, one license family, one program): in-batch negatives become hard ones."""
    fresh = list(pairs)
    rng.shuffle(fresh)
    if hard_fraction <= 0:
        return fresh
    cut = int(len(fresh) * hard_fraction)
    hard, easy = fresh[:cut], fresh[cut:]
    groups: dict[str, list[Pair]] = {}
    for p in hard:
        groups.setdefault(p[4], []).append(p)
    keys = list(groups)
    rng.shuffle(keys)
    ordered = [p for k in keys for p in groups[k]]
    # interleave: runs of grouped pairs with random ones, so every batch mixes both
    out: list[Pair] = []
    step = max(1, len(easy) // max(1, len(ordered) // 8 or 1))
    ei = 0
    for i in range(0, len(ordered), 8):
        out.extend(ordered[i:i + 8])
        out.extend(easy[ei:ei + step])
        ei += step
    out.extend(easy[ei:])
    return out


def make_batches(pairs: Sequence[Pair], batch_size: int, steps: int, seed: int,
                 hard_fraction: float = 0.5) -> list[list[Pair]]:
    """``steps`` batches of distinct concepts and distinct positives, cycling through ``pairs``."""
    rng = random.Random(seed)
    batches: list[list[Pair]] = []
    pool: list[Pair] = []
    while len(batches) < steps:
        if len(pool) < batch_size * 4:
            pool.extend(_grouped_order(pairs, rng, hard_fraction))
        batch: list[Pair] = []
        seen_c: set[str] = set()
        seen_p: set[str] = set()
        rest: list[Pair] = []
        for p in pool:
            if len(batch) < batch_size and p[3] not in seen_c and p[1] not in seen_p and p[0] not in seen_p:
                batch.append(p)
                seen_c.add(p[3])
                seen_p.update((p[0], p[1]))
            else:
                rest.append(p)
        pool = rest
        if len(batch) < 2:
            break
        batches.append(batch)
    return batches


@dataclass
class TrainResult:
    steps: int
    pairs_seen: int
    seconds: float
    cpu_seconds: float
    first_loss: float
    last_loss: float


def train_contrastive(model, pairs: Sequence[Pair], *, steps: int, batch_size: int, lr: float,  # type: ignore[no-untyped-def]
                      seed: int, scale: float = 20.0, warmup_ratio: float = 0.1, hard_fraction: float = 0.5,
                      progress: Callable[[str], None] = _log, label: str = "") -> TrainResult:
    """Fine-tune a SentenceTransformer ``model`` in place."""
    import torch
    import torch.nn.functional as F

    seed_everything(seed)
    batches = make_batches(pairs, batch_size, steps, seed, hard_fraction)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    warm = max(1, int(len(batches) * warmup_ratio))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (len(batches) - s) / max(1, len(batches) - warm)))
    model.train()
    t0 = time.time()
    c0 = time.process_time()
    losses: list[float] = []
    every = max(1, len(batches) // 10)
    for step, batch in enumerate(batches, 1):
        anchors = model.tokenize([p[0] for p in batch])
        positives = model.tokenize([p[1] for p in batch])
        a = F.normalize(model(anchors)["sentence_embedding"], dim=-1)
        b = F.normalize(model(positives)["sentence_embedding"], dim=-1)
        sims = a @ b.T * scale
        target = torch.arange(len(batch))
        loss = (F.cross_entropy(sims, target) + F.cross_entropy(sims.T, target)) / 2
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if step % every == 0 or step == len(batches):
            el = time.time() - t0
            recent = losses[-every:]
            progress(f"{label}step {step}/{len(batches)} loss {sum(recent) / len(recent):.4f} "
                     f"{el:.0f}s elapsed, ~{el / step * (len(batches) - step):.0f}s left")
    model.eval()
    head = losses[: max(1, every)]
    tail = losses[-max(1, every):]
    return TrainResult(steps=len(batches), pairs_seen=sum(len(b) for b in batches),
                       seconds=round(time.time() - t0, 1), cpu_seconds=round(time.process_time() - c0, 1),
                       first_loss=round(sum(head) / len(head), 4) if head else math.nan,
                       last_loss=round(sum(tail) / len(tail), 4) if tail else math.nan)


def load_sentence_transformer(folder: Path, max_seq_length: int):  # type: ignore[no-untyped-def]
    import logging

    from sentence_transformers import SentenceTransformer

    logging.getLogger("sentence_transformers").setLevel(logging.WARNING)
    model = SentenceTransformer(str(folder), device="cpu")
    model.max_seq_length = max_seq_length
    return model
