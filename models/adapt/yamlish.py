"""A tiny, tolerant reader for the YAML subset the corpus files use (no PyYAML needed).

It reads scalars (plain, quoted, folded/literal blocks, plain multi-line continuations) of
mappings, and lists of mappings, by indentation.  It never evaluates types: every leaf is a
string.  Anything it does not understand is skipped rather than raised on, because the
corpora are data for training, not configuration.
"""
from __future__ import annotations

import re
from typing import Any

_KEY = re.compile(r"^(\s*)(-\s+)?([A-Za-z0-9_][^:#]*?|'[^']*'|\"[^\"]*\"):(?:\s+(.*))?$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        body = text[1:-1]
        return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), body)
    if len(text) >= 2 and text[0] == text[-1] == "'":
        return text[1:-1].replace("''", "'")
    return text


def _strip_comment(text: str) -> str:
    if text[:1] in ("'", '"'):
        end = text.rfind(text[0])
        return text[: end + 1] if end > 0 else text
    return re.sub(r"\s+#.*$", "", text)


def _scalar(lines: list[str], i: int, first: str, parent_indent: int) -> tuple[str, int]:
    """Value starting with ``first`` on line i-1; consume continuation lines; return (text, next i)."""
    first = first.strip()
    if first[:1] in ("'", '"') and first.find(first[0], 1) > 0:
        first = first[: first.find(first[0], 1) + 1] if first[0] == '"' else _strip_comment(first)
    if first[:1] in (">", "|") and re.fullmatch(r"[>|][-+]?\d*", first):
        folded = first[0] == ">"
        block: list[str] = []
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > parent_indent):
            block.append(lines[i].strip())
            i += 1
        while block and not block[-1]:
            block.pop()
        return (" ".join(b for b in block if b) if folded else "\n".join(block)), i
    if first[:1] in ("'", '"') and not (len(first) >= 2 and first.endswith(first[0])):
        parts = [first]
        while i < len(lines):
            parts.append(lines[i].strip())
            i += 1
            if parts[-1].endswith(first[0]):
                break
        return _unquote(" ".join(parts)), i
    parts = [_strip_comment(first)] if first else []
    # Plain multi-line scalar: more-indented lines that are not keys or list items continue it.
    while i < len(lines) and lines[i].strip() and _indent(lines[i]) > parent_indent \
            and not _KEY.match(lines[i]) and not lines[i].lstrip().startswith("- "):
        if not lines[i].lstrip().startswith("#"):
            parts.append(_strip_comment(lines[i].strip()))
        i += 1
    return _unquote(" ".join(p for p in parts if p)), i


def _block(lines: list[str], i: int, indent: int, list_only: bool = False) -> tuple[Any, int]:
    """Parse the mapping or list whose items sit at exactly ``indent``.

    ``list_only``: a list written at its parent key's indentation ends at the next key.
    """
    mapping: dict[str, Any] = {}
    items: list[Any] = []
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.lstrip().startswith("#"):
            i += 1
            continue
        ind = _indent(line)
        if ind < indent:
            break
        if ind > indent:          # something we did not expect; skip it
            i += 1
            continue
        stripped = line.strip()
        is_item = stripped.startswith("- ") or stripped == "-"
        if list_only and not is_item:
            break
        if is_item:
            rest = stripped[2:] if stripped != "-" else ""
            m = _KEY.match(" " * (ind + 2) + rest) if rest else None
            if m:                 # "- key: value" starts a mapping item
                sub_lines = [" " * (ind + 2) + rest]
                j = i + 1
                while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > ind):
                    sub_lines.append(lines[j])
                    j += 1
                value, _ = _block(sub_lines, 0, ind + 2)
                items.append(value)
                i = j
            else:
                value, i = _scalar(lines, i + 1, rest, ind)
                items.append(value)
            continue
        m = _KEY.match(line)
        if not m:
            i += 1
            continue
        key = _unquote(m.group(3))
        rest = (m.group(4) or "").strip()
        i += 1
        if rest and not rest.startswith("#"):
            mapping[key], i = _scalar(lines, i, rest, ind)
            continue
        # Nested block (or empty value): find the child indentation.
        j = i
        while j < len(lines) and (not lines[j].strip() or lines[j].lstrip().startswith("#")):
            j += 1
        if j < len(lines) and _indent(lines[j]) > ind:
            mapping[key], i = _block(lines, j, _indent(lines[j]))
        elif j < len(lines) and _indent(lines[j]) == ind and lines[j].lstrip().startswith("- "):
            mapping[key], i = _block(lines, j, ind, list_only=True)
        else:
            mapping[key] = None
    return (items if items and not mapping else mapping), i


def parse(text: str, keys: tuple[str, ...] | None = None) -> Any:
    """Parse a YAML document (the subset described above) into dicts, lists and strings.

    ``keys``: only these top-level keys are wanted; other top-level sections (e.g. long
    value tables) are skipped without parsing.
    """
    lines = text.replace("\t", "    ").splitlines()
    if keys is not None:
        kept: list[str] = []
        keep = False
        for line in lines:
            if line and not line[0].isspace() and not line.startswith(("#", "-")):
                keep = line.split(":", 1)[0].strip() in keys
            if keep:
                kept.append(line)
        lines = kept
    value, _ = _block(lines, 0, 0)
    return value


def front_matter(text: str) -> tuple[dict[str, Any], str]:
    """Split a ``---\\nYAML\\n---\\nbody`` file (ScanCode .LICENSE/.RULE) into (header, body)."""
    if text.startswith("---"):
        head, sep, body = text[3:].partition("\n---")
        if sep:
            parsed = parse(head)
            return (parsed if isinstance(parsed, dict) else {}), body.lstrip("-").lstrip("\n")
    return {}, text
