"""API keys and scopes.

Keys come from ``API_KEYS`` (``"k1:read,k2:write"``) and/or ``API_KEYS_FILE`` (one ``key:scope``
per line; blank lines and ``#`` comments ignored).  Two scopes, ordered: ``read`` < ``write``
(a write key may read).  No key configured = auth off (the default for ``make run`` on
127.0.0.1).  A request presents its key as ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``.

Routes declare what they need with ``Depends(require_scope("read"|"write"))``; the dependency is
built from FastAPI's security classes, so the OpenAPI document lists the two security schemes.
Health, readiness, metrics and the OpenAPI/docs pages carry no such dependency: they are open.

Secrets hygiene: the presented key is compared with ``hmac.compare_digest`` against the SHA-256
of *every* configured key (no early exit, equal-length inputs), so the time taken does not say
which key or how much of it matched.  Keys are never logged and never echoed in an error.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from fastapi import Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from .errors import ApiError

log = logging.getLogger("semsearch.auth")

SCOPES = ("read", "write")
_RANK = {s: i for i, s in enumerate(SCOPES)}
WEAK_KEY_LENGTH = 16  # shorter keys work but are reported (by entry number) at start-up


class AuthConfigError(ValueError):
    """A malformed key specification (raised at start-up; the key itself is never shown)."""


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


@dataclass(frozen=True)
class KeyRing:
    """The configured keys, held only as (sha256, scope) pairs."""

    entries: tuple[tuple[bytes, str], ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.entries)

    def scope_of(self, presented: str) -> str | None:
        """The scope of ``presented`` or None.  Constant time in the number of keys."""
        probe = _digest(presented)
        found: str | None = None
        for digest, scope in self.entries:
            if hmac.compare_digest(probe, digest) and found is None:
                found = scope
        return found

    def __repr__(self) -> str:  # never print digests either
        return f"KeyRing(keys={len(self.entries)})"


def parse_key_spec(spec: str, source: str = "API_KEYS", *, sep: str = ",") -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for n, raw in enumerate(spec.split(sep), 1):
        item = raw.split("#", 1)[0].strip() if sep == "\n" else raw.strip()
        if not item:
            continue
        key, colon, scope = item.rpartition(":")
        key, scope = key.strip(), scope.strip().lower()
        where = f"{source} entry {n}" if sep == "," else f"{source} line {n}"
        if not colon or not key:
            raise AuthConfigError(f"{where}: expected KEY:SCOPE")
        if scope not in _RANK:
            raise AuthConfigError(f"{where}: unknown scope {scope!r} (use read or write)")
        if any(c.isspace() or not c.isprintable() for c in key):
            raise AuthConfigError(f"{where}: a key cannot contain whitespace or control characters")
        if len(key) < WEAK_KEY_LENGTH:
            log.warning("%s: the key is shorter than %d characters; use a long random key "
                        "(e.g. `openssl rand -hex 32`)", where, WEAK_KEY_LENGTH)
        out.append((key, scope))
    return out


def load_keyring(api_keys: str = "", api_keys_file: Path | None = None) -> KeyRing:
    pairs = parse_key_spec(api_keys or "", "API_KEYS")
    if api_keys_file:
        try:
            text = Path(api_keys_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise AuthConfigError(f"API_KEYS_FILE cannot be read: {exc.strerror}") from None
        pairs += parse_key_spec(text, "API_KEYS_FILE", sep="\n")
    best: dict[bytes, str] = {}
    for key, scope in pairs:  # the same key listed twice: the higher scope wins
        d = _digest(key)
        if d not in best or _RANK[scope] > _RANK[best[d]]:
            best[d] = scope
    return KeyRing(tuple(best.items()))


# Declared for OpenAPI (and to read the headers); auto_error=False: we answer 401 ourselves
# in the service's error envelope.
bearer_scheme = HTTPBearer(auto_error=False, scheme_name="bearer",
                           description="Authorization: Bearer <API key>")
api_key_scheme = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="apiKey",
                              description="X-API-Key: <API key>")

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="semsearch"'}


def _keyring(request: Request) -> KeyRing:
    ring = getattr(request.app.state, "keyring", None)
    return ring if isinstance(ring, KeyRing) else KeyRing()


@lru_cache(maxsize=None)
def require_scope(needed: str) -> Callable[..., Any]:
    """A dependency that lets the request through only with a key of scope ``needed`` or
    higher (or when auth is off).  Cached, so every route shares one callable per scope."""
    if needed not in _RANK:
        raise ValueError(f"unknown scope {needed!r}")

    async def dependency(request: Request,
                         bearer: HTTPAuthorizationCredentials | None = Security(bearer_scheme),
                         header_key: str | None = Security(api_key_scheme)) -> str | None:
        ring = _keyring(request)
        if not ring.enabled:
            return None
        presented = bearer.credentials if bearer is not None else header_key
        if not presented:
            raise ApiError(401, "unauthorized", "an API key is required: send "
                           "'Authorization: Bearer KEY' or 'X-API-Key: KEY'", headers=_CHALLENGE)
        scope = ring.scope_of(presented)
        if scope is None:
            raise ApiError(401, "unauthorized", "the API key is not valid", headers=_CHALLENGE)
        if _RANK[scope] < _RANK[needed]:
            raise ApiError(403, "forbidden", f"this API key has the {scope!r} scope; this "
                           f"operation needs {needed!r}", {"scope": scope, "required": needed})
        request.state.auth_scope = scope
        return scope

    dependency.__name__ = f"require_{needed}_scope"
    return dependency
