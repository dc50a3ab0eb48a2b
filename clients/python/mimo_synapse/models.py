"""Plain data objects handed to the application."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

JSONObject = Dict[str, Any]


def _num(v: Any) -> Optional[float]:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _int(v: Any) -> Optional[int]:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _str(v: Any) -> Optional[str]:
    return v if isinstance(v, str) else None


@dataclass(frozen=True)
class Thought:
    """One ``thought`` push of a run: ``seq`` is its place in the run's log
    (for the built-in engine's queries, whose events are all thoughts, 1, 2, 3...)."""
    ref: str
    seq: int
    type: str
    content: str
    ts: Optional[int]
    data: JSONObject = field(repr=False)  # the whole ``thought`` object (type, content and extras)
    run_id: Optional[str] = None

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> "Thought":
        t = payload.get("thought")
        thought: JSONObject = dict(t) if isinstance(t, Mapping) else {}
        return cls(ref=str(payload.get("ref")), seq=_int(payload.get("seq")) or 0,
                   type=str(thought.get("type", "")), content=str(thought.get("content", "")),
                   ts=_int(payload.get("ts")), data=thought, run_id=_str(payload.get("run_id")))


@dataclass(frozen=True)
class Progress:
    """One ``progress`` push of a run."""
    ref: str
    progress: float
    total: Optional[float]
    message: Optional[str]
    raw: JSONObject = field(repr=False)
    seq: int = 0
    run_id: Optional[str] = None

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> "Progress":
        msg = payload.get("message")
        return cls(ref=str(payload.get("ref")), progress=_num(payload.get("progress")) or 0.0,
                   total=_num(payload.get("total")), message=msg if isinstance(msg, str) else None,
                   raw=dict(payload), seq=_int(payload.get("seq")) or 0, run_id=_str(payload.get("run_id")))


@dataclass(frozen=True)
class Token:
    """One ``token`` push: a text delta of the run's answer (``handle.text``
    holds every delta so far, concatenated)."""
    ref: str
    seq: int
    delta: str
    run_id: Optional[str] = None

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> "Token":
        return cls(ref=str(payload.get("ref")), seq=_int(payload.get("seq")) or 0,
                   delta=str(payload.get("delta", "")), run_id=_str(payload.get("run_id")))


@dataclass(frozen=True)
class Snapshot:
    """The compacted state of a run, sent first to an attach without
    ``after_seq`` (and after a resume the server could not serve exactly:
    ``truncated``): every token delta up to ``seq`` folded into ``text``,
    the run's thoughts (their ``thought`` objects), its last progress.
    Events after ``seq`` follow it."""
    run_id: str
    ref: str
    seq: int
    status: str
    text: str
    thoughts: List[JSONObject]
    progress: Optional[JSONObject]
    raw: JSONObject = field(repr=False)

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> "Snapshot":
        thoughts = payload.get("thoughts")
        prog = payload.get("progress")
        return cls(run_id=str(payload.get("run_id")), ref=str(payload.get("ref")),
                   seq=_int(payload.get("seq")) or 0, status=str(payload.get("status", "")),
                   text=str(payload.get("text", "")),
                   thoughts=[dict(t) for t in thoughts if isinstance(t, Mapping)] if isinstance(thoughts, list) else [],
                   progress=dict(prog) if isinstance(prog, Mapping) else None, raw=dict(payload))


@dataclass(frozen=True)
class RunInfo:
    """One entry of :meth:`MimoSynapse.runs`: a run of this agent on the
    server (running, or ended and still kept)."""
    run_id: str
    ref: str
    kind: str
    status: str
    started_at: Optional[int]
    ended_at: Optional[int]
    last_seq: int
    attached: int
    tool: Optional[str]
    raw: JSONObject = field(repr=False)

    @property
    def running(self) -> bool:
        return self.status == "running"

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> "RunInfo":
        return cls(run_id=str(payload.get("run_id")), ref=str(payload.get("ref")),
                   kind=str(payload.get("kind", "")), status=str(payload.get("status", "")),
                   started_at=_int(payload.get("started_at")), ended_at=_int(payload.get("ended_at")),
                   last_seq=_int(payload.get("last_seq")) or 0, attached=_int(payload.get("attached")) or 0,
                   tool=_str(payload.get("tool")), raw=dict(payload))


@dataclass(frozen=True)
class Result:
    """The ``result`` terminal of a successful query or tool."""
    ref: str
    status: str
    data: Any
    latency_ms: Optional[int]
    raw: JSONObject = field(repr=False)
    seq: int = 0
    run_id: Optional[str] = None

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> "Result":
        return cls(ref=str(payload.get("ref")), status=str(payload.get("status", "success")),
                   data=payload.get("data"), latency_ms=_int(payload.get("latency_ms")), raw=dict(payload),
                   seq=_int(payload.get("seq")) or 0, run_id=_str(payload.get("run_id")))


@dataclass(frozen=True)
class Message:
    """A pub/sub delivery. ``payload`` is the publisher's object without the
    server's ``_meta``; ``offset``, ``epoch``, ``sender`` (``_meta.from``) and
    ``ts`` come from ``_meta``."""
    topic: str
    event: str
    payload: JSONObject
    offset: Optional[int]
    epoch: Optional[str]
    sender: Optional[str]
    ts: Optional[int]

    @classmethod
    def from_push(cls, topic: str, event: str, payload: Mapping[str, Any]) -> "Message":
        meta = payload.get("_meta")
        m: Mapping[str, Any] = meta if isinstance(meta, Mapping) else {}
        body = {k: v for k, v in payload.items() if k != "_meta"}
        epoch, sender = m.get("epoch"), m.get("from")
        return cls(topic=topic, event=event, payload=body, offset=_int(m.get("offset")),
                   epoch=epoch if isinstance(epoch, str) else None,
                   sender=sender if isinstance(sender, str) else None, ts=_int(m.get("ts")))


@dataclass(frozen=True)
class ToolInfo:
    """One entry of the ``tools`` reply. ``provider`` is ``builtin`` or
    ``mcp:<server>``; ``available`` is false while an MCP server restarts."""
    name: str
    description: str
    input_schema: JSONObject
    provider: str = ""
    available: bool = True

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> "ToolInfo":
        schema = payload.get("input_schema")
        return cls(name=str(payload.get("name")), description=str(payload.get("description", "")),
                   input_schema=dict(schema) if isinstance(schema, Mapping) else {},
                   provider=str(payload.get("provider", "")), available=payload.get("available") is not False)


__all__ = ["Thought", "Progress", "Token", "Snapshot", "RunInfo", "Result", "Message", "ToolInfo", "JSONObject"]
