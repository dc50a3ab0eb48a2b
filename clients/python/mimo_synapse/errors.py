"""Typed exceptions. Every one carries the server's stable ``reason`` code and,
when the server sent them, its human ``message``, field ``errors`` and
``retry_after_ms``."""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Type


class SynapseError(Exception):
    """Base class of every error raised by the SDK."""

    def __init__(self, reason: str, message: Optional[str] = None, *,
                 errors: Optional[List[Dict[str, Any]]] = None,
                 retry_after_ms: Optional[int] = None,
                 ref: Optional[str] = None,
                 response: Optional[Mapping[str, Any]] = None) -> None:
        self.reason: str = reason
        self.message: Optional[str] = message
        self.errors: List[Dict[str, Any]] = list(errors or [])
        self.retry_after_ms: Optional[int] = retry_after_ms
        self.ref: Optional[str] = ref
        self.response: Dict[str, Any] = dict(response or {})
        super().__init__(self._describe())

    def _describe(self) -> str:
        text = self.reason
        if self.message:
            text += f": {self.message}"
        if self.errors:
            text += " (" + "; ".join(f"{e.get('field')}: {e.get('message')}" for e in self.errors) + ")"
        if self.ref:
            text += f" [ref {self.ref}]"
        return text

    @classmethod
    def from_response(cls, response: Mapping[str, Any], ref: Optional[str] = None) -> "SynapseError":
        """Builds the most specific error for a server error payload."""
        reason = str(response.get("reason") or "unknown_error")
        klass: Type[SynapseError] = cls
        if cls is ReplyError and reason == "rate_limited":
            klass = RateLimitedError
        raw_errors = response.get("errors")
        errors = [dict(e) for e in raw_errors if isinstance(e, Mapping)] if isinstance(raw_errors, list) else None
        retry = response.get("retry_after_ms")
        message = response.get("message")
        return klass(reason, message if isinstance(message, str) else None, errors=errors,
                     retry_after_ms=retry if isinstance(retry, int) else None,
                     ref=ref if ref is not None else (response.get("ref") if isinstance(response.get("ref"), str) else None),
                     response=response)


class ConnectError(SynapseError):
    """The WebSocket could not be opened, or the server closed it for good.

    ``status`` is the HTTP status of a refused upgrade, ``close_code`` the
    WebSocket close code, ``retry_after_s`` the ``Retry-After`` header."""

    def __init__(self, reason: str, message: Optional[str] = None, *, status: Optional[int] = None,
                 close_code: Optional[int] = None, retry_after_s: Optional[float] = None) -> None:
        self.status = status
        self.close_code = close_code
        self.retry_after_s = retry_after_s
        # Retry-After also as retry_after_ms, like every other SynapseError.
        super().__init__(reason, message,
                         retry_after_ms=None if retry_after_s is None else round(retry_after_s * 1000))

    def _describe(self) -> str:
        text = super()._describe()
        if self.status is not None:
            text += f" (HTTP {self.status})"
        if self.close_code is not None:
            text += f" (close code {self.close_code})"
        return text


class AuthenticationError(ConnectError):
    """401/403 at connect (``unauthorized``, ``token_expired``,
    ``forbidden_origin``), or a close for revoked/expired credentials."""


class ReplyError(SynapseError):
    """The server answered a request with an error reply (``invalid_payload``,
    ``unknown_tool``, ``invalid_args``, ``forbidden``, ``not_found``...)."""


class RateLimitedError(ReplyError):
    """``rate_limited``; ``retry_after_ms`` says when to try again."""


class RunError(SynapseError):
    """A query or tool ended with a terminal ``error`` push (``timeout``,
    ``tool_error``, ``internal``)."""


class RunInterrupted(RunError):
    """A query or tool ended with ``interrupted``; ``reason`` is the reason
    given to the interrupt."""


class DisconnectedError(SynapseError):
    """The connection dropped while a request, query or tool was in flight.
    ``reason`` is always ``disconnected``."""

    def __init__(self, message: Optional[str] = None, *, ref: Optional[str] = None) -> None:
        super().__init__("disconnected", message or "the connection to the server was lost", ref=ref)


class RequestTimeout(SynapseError, TimeoutError):
    """No reply (or no connection) within the request timeout. ``reason`` is
    ``timeout``."""

    def __init__(self, message: Optional[str] = None, *, ref: Optional[str] = None) -> None:
        SynapseError.__init__(self, "timeout", message or "no reply in time", ref=ref)


class ClientClosedError(SynapseError):
    """The client was closed (``close()``) or gave up after a fatal error."""

    def __init__(self, message: Optional[str] = None, *, ref: Optional[str] = None) -> None:
        super().__init__("closed", message or "the client is closed", ref=ref)


__all__ = [
    "SynapseError", "ConnectError", "AuthenticationError", "ReplyError", "RateLimitedError",
    "RunError", "RunInterrupted", "DisconnectedError", "RequestTimeout", "ClientClosedError",
]
