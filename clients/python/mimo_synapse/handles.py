"""Handles of running queries and tools."""
from __future__ import annotations

import asyncio
import inspect
import logging
from typing import (TYPE_CHECKING, Any, AsyncIterator, Callable, Generator, Generic, Optional, TypeVar, Union)

from .errors import ReplyError, RunInterrupted, SynapseError
from .models import JSONObject, Progress, Result, Snapshot, Thought, Token

if TYPE_CHECKING:  # pragma: no cover
    from .client import MimoSynapse

log = logging.getLogger("mimo_synapse")

T = TypeVar("T")

# What iterating a handle yields: the run's events in seq order.
RunEvent = Union[Thought, Token, Progress, Snapshot]


class _End:
    """Marks the end of a handle's stream."""


_END = _End()


def _quiet(fut: "asyncio.Future[Any]") -> None:
    """Marks a future's exception as retrieved (no 'never retrieved' warning)."""
    if not fut.cancelled():
        fut.exception()


class RunHandle(Generic[T]):
    """A run (query or tool) this client follows.

    * ``async for item in handle`` yields the run's stream in ``seq`` order:
      :class:`Thought`, :class:`Token` (text deltas), :class:`Progress`, and
      for an attach without ``after_seq`` a :class:`Snapshot` first. It stops
      when the terminal push arrives: normally after ``result`` or
      ``interrupted``; by raising the same exception as :meth:`result` after
      an ``error`` terminal, a refused start, or a run that could not be
      resumed after a lost connection.
    * ``await handle.result()`` returns the :class:`Result` or raises
      :class:`RunError` / :class:`RunInterrupted` / :class:`DisconnectedError`
      (or :class:`ReplyError` if the server refused to start the run).
    * ``await handle`` waits until the server accepted the run and returns the
      handle (raises :class:`ReplyError` if it was refused).
    * ``await handle.interrupt(reason)`` stops it.

    The stream survives reconnects: after the link drops the client
    re-attaches the run from ``last_seq`` (``attach {run_id, after_seq}``),
    and every event reaches the handle exactly once, in order. ``resumes``
    counts those re-attaches.
    """

    kind: str = "run"

    def __init__(self, client: "MimoSynapse", ref: str) -> None:
        loop = asyncio.get_running_loop()
        self._client = client
        self.ref: str = ref
        self.run_id: Optional[str] = None
        self.status: str = "pending"  # pending -> running -> success | error | interrupted
        self.last_seq: int = 0        # the newest event received (what a re-attach asks after)
        self.text: str = ""           # every token delta so far, concatenated (snapshot text included)
        self.snapshot: Optional[Snapshot] = None  # the latest snapshot received, if any
        self.resumes: int = 0         # re-attaches after lost connections
        self.truncated: bool = False  # a re-attach could not replay exactly (a Snapshot stands for the gap)
        self._queue: "asyncio.Queue[Union[RunEvent, _End]]" = asyncio.Queue()
        self._accepted: "asyncio.Future[JSONObject]" = loop.create_future()
        self._done: "asyncio.Future[Result]" = loop.create_future()
        self._accepted.add_done_callback(_quiet)
        self._done.add_done_callback(_quiet)
        self._exhausted = False
        self._starter: Optional["asyncio.Task[None]"] = None
        # Resume bookkeeping, owned by the client (all on the event loop).
        self._start_conn: Optional[int] = None   # the connection the start frame was written to
        self._needs_resume = False
        self._resume_deadline: Optional[float] = None
        self._attach_after: Optional[int] = 0     # after_seq of a public attach before anything arrived

    def __repr__(self) -> str:
        return f"<{type(self).__name__} ref={self.ref} run_id={self.run_id} status={self.status}>"

    # -- state fed by the client --------------------------------------------
    def _set_accepted(self, response: JSONObject) -> None:
        if not self._accepted.done():
            self._accepted.set_result(response)
        if self.status == "pending":
            self.status = "running"

    def _fresh(self, seq: int) -> bool:
        """True for an event not seen yet (and moves last_seq past it). A
        backlog replayed on re-attach overlaps nothing, but the check makes
        exactly-once hold whatever the server sends."""
        if seq and seq <= self.last_seq:
            log.debug("dropping seq %s of %s: not after %s", seq, self.run_id or self.ref, self.last_seq)
            return False
        if seq:
            self.last_seq = seq
        return True

    def _push(self, item: RunEvent) -> None:
        if not self._done.done():
            self._queue.put_nowait(item)

    def _thought(self, thought: Thought) -> None:
        if self._fresh(thought.seq):
            self._push(thought)

    def _token(self, token: Token) -> None:
        if self._fresh(token.seq):
            self.text += token.delta
            self._push(token)

    def _progress(self, progress: Progress) -> None:
        if self._fresh(progress.seq):
            self._on_progress_item(progress)
            self._push(progress)

    def _on_progress_item(self, progress: Progress) -> None:
        pass

    def _snapshot(self, snap: Snapshot) -> None:
        if snap.seq < self.last_seq:
            return
        self.last_seq = snap.seq
        self.text = snap.text
        self.snapshot = snap
        self._push(snap)

    def _terminal_seq(self, seq: int) -> bool:
        return self._fresh(seq)

    def _finish(self, result: Result) -> None:
        if self._done.done():
            return
        self.status = "success"
        self._set_accepted({"ref": self.ref})
        self._done.set_result(result)
        self._queue.put_nowait(_END)

    def _fail(self, exc: SynapseError) -> None:
        if self._done.done():
            return
        self.status = "interrupted" if isinstance(exc, RunInterrupted) else "error"
        if not self._accepted.done():
            if isinstance(exc, ReplyError):
                self._accepted.set_exception(exc)
            else:
                self._accepted.set_result({"ref": self.ref})
        self._done.set_exception(exc)
        self._queue.put_nowait(_END)

    # -- public ---------------------------------------------------------------
    @property
    def done(self) -> bool:
        """True once the terminal push (or a failure) arrived."""
        return self._done.done()

    @property
    def resuming(self) -> bool:
        """True while the link is down (or the re-attach is on its way)."""
        return self._needs_resume and not self.done

    async def accepted(self) -> "RunHandle[T]":
        """Waits for the server's ok reply (the run exists); raises
        :class:`ReplyError` if it was refused."""
        await asyncio.shield(self._accepted)
        return self

    def __await__(self) -> Generator[Any, None, "RunHandle[T]"]:
        return self.accepted().__await__()

    def __aiter__(self) -> "RunHandle[T]":
        return self

    async def __anext__(self) -> Any:
        if self._exhausted:
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, _End):
            self._exhausted = True
            exc = self._done.exception()
            if exc is not None and not isinstance(exc, RunInterrupted):
                raise exc
            raise StopAsyncIteration
        return item

    async def text_stream(self) -> AsyncIterator[str]:
        """The run's answer as text: a snapshot's text, then each token
        delta. Consumes the handle's stream (iterate one or the other)."""
        async for item in self:
            if isinstance(item, Token):
                yield item.delta
            elif isinstance(item, Snapshot) and item.text:
                yield item.text

    async def result(self, timeout: Optional[float] = None) -> Result:
        """The terminal result; raises the run's error. ``timeout`` (seconds)
        bounds the wait (then :class:`asyncio.TimeoutError`; the run goes on)."""
        if timeout is None:
            return await asyncio.shield(self._done)
        return await asyncio.wait_for(asyncio.shield(self._done), timeout)

    async def interrupt(self, reason: Optional[str] = None) -> None:
        """Asks the server to stop the run (by its ``run_id``, so it works
        while the client is re-attaching too). A run that already ended is
        left alone. The handle then ends with :class:`RunInterrupted`."""
        if self.done:
            return
        await asyncio.wait([self._accepted, self._done], return_when=asyncio.FIRST_COMPLETED)
        if self.done:
            return
        try:
            if self.run_id is not None:
                await self._client.interrupt(reason=reason, run_id=self.run_id)
            else:
                await self._client.interrupt(self.ref, reason)
        except ReplyError as e:
            if e.reason == "not_found":
                return  # it ended just before the interrupt reached the server; its terminal is on its way
            raise


class QueryHandle(RunHandle[Any]):
    """A running query; iterates its events (:class:`Thought` objects for
    the built-in engine; an agent worker may stream :class:`Token` too)."""

    kind = "query"


class AttachedRun(RunHandle[Any]):
    """A run followed through :meth:`MimoSynapse.attach` (typically one
    started by another device). ``ref`` is the run's ref, known once the
    attach is accepted."""

    kind = "attached"


ProgressCallback = Callable[[Progress], Any]


class ToolHandle(RunHandle[Any]):
    """A running tool; iterates its events (:class:`Progress` objects, and
    :class:`Token` for tools that stream text such as ``demo.tokens``).
    ``on_progress`` (sync, or a coroutine function run as a task) sees each
    progress as it arrives."""

    kind = "tool"

    def __init__(self, client: "MimoSynapse", ref: str, on_progress: Optional[ProgressCallback] = None) -> None:
        super().__init__(client, ref)
        self._on_progress = on_progress

    def _on_progress_item(self, progress: Progress) -> None:
        if self._on_progress is not None and not self.done:
            try:
                r = self._on_progress(progress)
                if inspect.isawaitable(r):
                    self._client._spawn(r, f"on_progress {self.ref}")
            except Exception:  # noqa: BLE001 - an application callback
                log.exception("on_progress callback for %s raised", self.ref)


__all__ = ["RunHandle", "QueryHandle", "ToolHandle", "AttachedRun", "RunEvent", "ProgressCallback"]
