"""`semsearch ingest`: a JSONL or CSV file into a collection over HTTP, batched and resumable.

Rows
  JSONL: one object per line: "text" (required), "id" (optional), "metadata" (optional object);
         any other top-level field is added to the metadata.
  CSV:   a header row; columns "text" (required) and "id" (optional); every other non-empty cell
         is metadata (integers and decimals become numbers, everything else stays a string).
  A row without an id gets "<file stem>-<line number>", so re-ingesting the same file upserts the
  same documents instead of duplicating them.

Resuming
  After every batch the server acknowledged, the byte offset just past that batch is written to a
  small state file (default: FILE.<collection>.ingest-state.json).  Running the same command again
  continues from there (and picks up lines appended since); `--restart` starts from the top.

Rejected rows
  Rows that cannot be parsed are rejected locally.  When the server refuses a batch as invalid
  (400/413/422), the batch is split in halves until the offending rows are isolated, so every
  rejection is reported with its line number and the server's reason.  Overload (429), 5xx and
  connection errors are retried with backoff; if they persist the run stops with the state saved.
"""
from __future__ import annotations

import csv
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

INVALID_STATUSES = {400, 413, 422}
RETRY_STATUSES = {429, 500, 502, 503, 504}
_INT = re.compile(r"-?(0|[1-9][0-9]{0,17})")
_FLOAT = re.compile(r"-?(0|[1-9][0-9]*)\.[0-9]+([eE][-+]?[0-9]+)?")


class IngestError(RuntimeError):
    """The run cannot continue (server unreachable, collection missing, bad file)."""


@dataclass
class Row:
    line: int                      # 1-based line number where the row starts
    end_offset: int                # byte offset just past the row
    doc: dict[str, Any] | None     # None when rejected locally
    error: str = ""


@dataclass
class Rejection:
    line: int
    reason: str


@dataclass
class IngestReport:
    accepted: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    skipped_bytes: int = 0          # resumed past this offset
    batches: int = 0


# --------------------------------------------------------------------------- reading

class _LineSource:
    """Binary lines decoded as UTF-8, tracking the byte offset and line number."""

    def __init__(self, fh: IO[bytes], start_offset: int, start_line: int) -> None:
        self.fh = fh
        self.offset = start_offset
        self.line = start_line      # number of the last line read
        fh.seek(start_offset)

    def __iter__(self) -> Iterator[str]:
        for raw in self.fh:
            self.offset += len(raw)
            self.line += 1
            yield raw.decode("utf-8", errors="replace")


def _coerce(value: str) -> Any:
    if _INT.fullmatch(value):
        return int(value)
    if _FLOAT.fullmatch(value):
        return float(value)
    return value


def _make_doc(obj: Any, line: int, stem: str) -> tuple[dict[str, Any] | None, str]:
    if not isinstance(obj, dict):
        return None, f"expected a JSON object, got {type(obj).__name__}"
    text = obj.get("text")
    if not isinstance(text, str) or not text.strip():
        return None, "missing or empty 'text'"
    doc_id = obj.get("id")
    if doc_id is None or doc_id == "":
        doc_id = f"{stem}-{line}"
    elif isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)):
        return None, f"'id' must be a string or an integer, got {type(doc_id).__name__}"
    metadata = obj.get("metadata", {})
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        return None, f"'metadata' must be an object, got {type(metadata).__name__}"
    extra = {k: v for k, v in obj.items() if k not in ("id", "text", "metadata")}
    return {"id": str(doc_id), "text": text, "metadata": {**extra, **metadata}}, ""


def detect_format(path: Path, explicit: str = "auto") -> str:
    if explicit != "auto":
        return explicit
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return "csv"
    return "jsonl"


def read_rows(fh: IO[bytes], fmt: str, start_offset: int, start_line: int, stem: str,
              delimiter: str = ",") -> Iterator[Row]:
    if fmt == "jsonl":
        src = _LineSource(fh, start_offset, start_line)
        for text in src:
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                yield Row(src.line, src.offset, None, f"invalid JSON: {exc.msg} (column {exc.colno})")
                continue
            doc, err = _make_doc(obj, src.line, stem)
            yield Row(src.line, src.offset, doc, err)
        return
    # CSV: the header is always the first row of the file, wherever we resume.
    fh.seek(0)
    header_src = _LineSource(fh, 0, 0)
    header = next(csv.reader(header_src, delimiter=delimiter), None)
    if not header:
        raise IngestError("the CSV file has no header row")
    header = [h.strip() for h in header]
    if "text" not in header:
        raise IngestError(f"the CSV header has no 'text' column (columns: {', '.join(header)})")
    if start_offset < header_src.offset:
        start_offset, start_line = header_src.offset, header_src.line
    src = _LineSource(fh, start_offset, start_line)
    reader = csv.reader(src, delimiter=delimiter)
    while True:
        first_line = src.line + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield Row(first_line, src.offset, None, f"invalid CSV: {exc}")
            continue
        if not cells or all(not c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            yield Row(first_line, src.offset, None,
                      f"expected {len(header)} columns, got {len(cells)}")
            continue
        obj: dict[str, Any] = {}
        meta: dict[str, Any] = {}
        for name, value in zip(header, cells):
            if name in ("id", "text"):
                obj[name] = value
            elif value != "":
                meta[name] = _coerce(value)
        obj["metadata"] = meta
        doc, err = _make_doc(obj, first_line, stem)
        yield Row(first_line, src.offset, doc, err)


# --------------------------------------------------------------------------- state

def default_state_path(path: Path, collection: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", collection)
    return path.with_name(f"{path.name}.{safe}.ingest-state.json")


def load_state(state_path: Path, path: Path, collection: str) -> dict[str, Any]:
    try:
        state = json.loads(state_path.read_text())
    except (OSError, ValueError):
        return {}
    if state.get("file") != str(path.resolve()) or state.get("collection") != collection:
        return {}
    if int(state.get("offset", 0)) > path.stat().st_size:  # file was replaced by a shorter one
        return {}
    return state


def save_state(state_path: Path, state: dict[str, Any]) -> None:
    tmp = state_path.with_name(state_path.name + ".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, state_path)


# --------------------------------------------------------------------------- progress

class Progress:
    """A progress bar on stderr (redrawn in place on a terminal, a line every few seconds else)."""

    def __init__(self, total_bytes: int, start: int, enabled: bool = True, stream: IO[str] | None = None) -> None:
        self.total = max(1, total_bytes)
        self.start_offset = start
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self.t0 = time.monotonic()
        self.last = 0.0

    def update(self, offset: int, accepted: int, rejected: int, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not final and now - self.last < (0.2 if self.tty else 5.0):
            return
        self.last = now
        frac = min(1.0, offset / self.total)
        width = 30
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        rate = accepted / max(1e-6, now - self.t0)
        msg = (f"[{bar}] {frac * 100:5.1f}%  {accepted} accepted  {rejected} rejected  "
               f"{rate:.0f} docs/s")
        if self.tty:
            self.stream.write("\r" + msg + ("\n" if final else ""))
        else:
            self.stream.write(msg + "\n")
        self.stream.flush()


# --------------------------------------------------------------------------- HTTP

def error_reason(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return f"HTTP {resp.status_code}: {resp.text[:300]}"
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        msg = f"{err.get('type', 'error')}: {err.get('message', '')}"
        details = err.get("details")
        if details:
            msg += f" {json.dumps(details, default=str)[:300]}"
        return msg
    return f"HTTP {resp.status_code}: {json.dumps(body)[:300]}"


class Uploader:
    def __init__(self, client: httpx.Client, collection: str, retries: int = 5,
                 backoff_s: float = 0.5) -> None:
        self.client = client
        self.path = f"/v1/collections/{collection}/documents"
        self.retries = retries
        self.backoff_s = backoff_s

    def _post(self, docs: list[dict[str, Any]]) -> httpx.Response:
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                resp = self.client.post(self.path, json={"documents": docs})
            except httpx.TransportError as exc:
                if attempt == self.retries:
                    raise IngestError(f"server unreachable: {exc}") from exc
            else:
                if resp.status_code not in RETRY_STATUSES or attempt == self.retries:
                    return resp
                retry_after = resp.headers.get("retry-after")
                if retry_after and retry_after.replace(".", "", 1).isdigit():
                    delay = max(delay, float(retry_after))
            time.sleep(min(delay, 30.0))
            delay *= 2
        raise AssertionError("unreachable")

    def upload(self, rows: list[Row]) -> tuple[int, list[Rejection]]:
        """(accepted count, rejections); splits the batch to isolate server-rejected rows."""
        if not rows:
            return 0, []
        resp = self._post([r.doc for r in rows if r.doc is not None])
        if resp.is_success:
            return len(rows), []
        if resp.status_code == 404:
            raise IngestError(f"collection not found ({error_reason(resp)}); create it with --create")
        if resp.status_code in (401, 403):
            raise IngestError(f"not allowed ({error_reason(resp)}); pass --api-key or set SEMSEARCH_API_KEY")
        if resp.status_code not in INVALID_STATUSES:
            raise IngestError(f"upload failed: {error_reason(resp)}")
        if len(rows) == 1:
            return 0, [Rejection(rows[0].line, error_reason(resp))]
        mid = len(rows) // 2
        a_ok, a_rej = self.upload(rows[:mid])
        b_ok, b_rej = self.upload(rows[mid:])
        return a_ok + b_ok, a_rej + b_rej


def ensure_collection(client: httpx.Client, collection: str, model: str | None, index: str,
                      metric: str) -> None:
    body: dict[str, Any] = {"index": {"type": index}, "metric": metric}
    if model:
        body["model"] = model
    resp = client.put(f"/v1/collections/{collection}", json=body)
    if not resp.is_success:
        raise IngestError(f"could not create collection {collection!r}: {error_reason(resp)}")


def ingest_file(path: Path, collection: str, client: httpx.Client, *, batch_size: int = 64,
                max_batch_bytes: int = 4 * 1024 * 1024, fmt: str = "auto", delimiter: str = ",",
                state_path: Path | None = None, restart: bool = False, progress: bool = True,
                retries: int = 5, report_stream: IO[str] | None = None) -> IngestReport:
    out = report_stream or sys.stderr
    fmt = detect_format(path, fmt)
    if fmt == "csv" and path.suffix.lower() == ".tsv" and delimiter == ",":
        delimiter = "\t"
    state_path = state_path or default_state_path(path, collection)
    state = {} if restart else load_state(state_path, path, collection)
    offset, line = int(state.get("offset", 0)), int(state.get("line", 0))
    report = IngestReport(skipped_bytes=offset)
    if offset:
        print(f"resuming {path.name} at line {line + 1} (byte {offset}); --restart to start over",
              file=out)
    uploader = Uploader(client, collection, retries=retries)
    size = path.stat().st_size
    bar = Progress(size, offset, enabled=progress, stream=out)

    def commit(batch: list[Row], last: Row) -> None:
        nonlocal offset, line
        ok, rej = uploader.upload(batch)
        report.accepted += ok
        report.batches += 1
        for r in rej:
            report.rejected.append(r)
            print(f"rejected line {r.line}: {r.reason}", file=out)
        offset, line = last.end_offset, last.line
        save_state(state_path, {"file": str(path.resolve()), "collection": collection,
                                "offset": offset, "line": line, "format": fmt,
                                "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        bar.update(offset, report.accepted, len(report.rejected))

    with open(path, "rb") as fh:
        batch: list[Row] = []
        batch_bytes = 0
        last: Row | None = None
        for row in read_rows(fh, fmt, offset, line, path.stem, delimiter):
            last = row
            if row.doc is None:
                report.rejected.append(Rejection(row.line, row.error))
                print(f"rejected line {row.line}: {row.error}", file=out)
                if not batch:  # nothing pending: the row is processed, move the mark past it
                    offset, line = row.end_offset, row.line
                continue
            n = len(json.dumps(row.doc, ensure_ascii=False).encode())
            if batch and (len(batch) >= batch_size or batch_bytes + n > max_batch_bytes):
                commit(batch, batch[-1])
                batch, batch_bytes = [], 0
            batch.append(row)
            batch_bytes += n
        if batch:
            commit(batch, last or batch[-1])
        elif last is not None and last.end_offset > offset:
            offset, line = last.end_offset, last.line
            save_state(state_path, {"file": str(path.resolve()), "collection": collection,
                                    "offset": offset, "line": line, "format": fmt,
                                    "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    bar.update(offset, report.accepted, len(report.rejected), final=True)
    return report
