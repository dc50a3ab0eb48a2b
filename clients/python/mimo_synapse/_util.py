"""Small helpers: URLs, JWT claims, backoff, calling sync-or-async callbacks."""
from __future__ import annotations

import base64
import inspect
import json
import random
from typing import Any, Awaitable, Callable, Dict, Optional, TypeVar, Union
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

T = TypeVar("T")
MaybeAwaitable = Union[T, Awaitable[T]]


def websocket_url(url: str) -> str:
    """Normalises a server address into the WebSocket endpoint with ``vsn=2.0.0``.

    ``ws://host:4000`` and ``http://host:4000`` become
    ``ws://host:4000/cortex/websocket?vsn=2.0.0``; a path not ending in
    ``/websocket`` gets it appended (the Phoenix convention: ``/cortex`` ->
    ``/cortex/websocket``)."""
    parts = urlsplit(url)
    scheme = {"ws": "ws", "wss": "wss", "http": "ws", "https": "wss"}.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise ValueError(f"not a ws://, wss://, http:// or https:// URL: {url!r}")
    path = parts.path
    if path in ("", "/"):
        path = "/cortex/websocket"
    elif not path.rstrip("/").endswith("/websocket"):
        path = path.rstrip("/") + "/websocket"
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
             if k not in ("vsn", "token", "api_key")]
    query.insert(0, ("vsn", "2.0.0"))
    return urlunsplit((scheme, parts.netloc, path, urlencode(query), ""))


def http_base(ws_url: str) -> str:
    """``ws://host:port/...`` -> ``http://host:port``."""
    parts = urlsplit(ws_url)
    scheme = "https" if parts.scheme == "wss" else "http"
    return urlunsplit((scheme, parts.netloc, "", "", ""))


def jwt_claims(token: str) -> Dict[str, Any]:
    """The (unverified) claims of a JWT, or ``{}`` if it is not one."""
    try:
        body = token.split(".")[1]
        body += "=" * (-len(body) % 4)
        claims = json.loads(base64.urlsafe_b64decode(body.encode()))
        return claims if isinstance(claims, dict) else {}
    except (IndexError, ValueError, UnicodeDecodeError):
        return {}


def full_jitter(attempt: int, base: float, cap: float, rng: Optional[random.Random] = None) -> float:
    """Exponential backoff with full jitter: uniform(0, min(cap, base * 2**attempt))."""
    ceiling = min(cap, base * (2 ** min(attempt, 62)))
    return (rng or random).uniform(0.0, ceiling)


async def call_maybe_async(fn: Callable[..., MaybeAwaitable[T]], *args: Any) -> T:
    """Calls ``fn`` and awaits the result when it is awaitable."""
    result = fn(*args)
    if inspect.isawaitable(result):
        return await result  # type: ignore[no-any-return]
    return result  # type: ignore[return-value]
