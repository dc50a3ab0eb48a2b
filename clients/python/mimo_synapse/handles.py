"""Handles of running queries and tools."""
from __future__ import annotations

import asyncio
import inspect
import logging
from typing import (TYPE_CHECKING, Any, Callable, Generator, Generic, Optional, TypeVar, Union)

from .errors import ReplyError, RunInterrupted, SynapseError
from .models import JSONObject, Progress, Result, Thought

if TYPE_CHECKING:  # pragma: no cover
    from .client import MimoSynapse

log = logging.getLogger("mimo_synapse")

T = TypeVar("T", Thought, Progress)


class _End:
    """Marks the end of a handle's stream."""


_END = _End()


def _quiet(fut: "asyncio.Future[Any]") -> None:
    """Marks a future's exception as retrieved (no 'never retrieved' warning)."""
    if not fut.cancelled():
        fut.exception()


class RunHandle(Generic[T]):
    """A query or tool in flight.

    * ``async for item in handle`` yields the run's stream (thoughts of a
      query, progress of a tool) in order and stops when the terminal push
      arrives: normally after ``result`` or ``interrupted`` (which this client
      asked for); by raising the same exception as :meth:`result` after an
      ``error`` terminal, a refused start or a lost connection.
    * ``await handle.result()`` returns the :class:`Result` or raises
      :class:`RunError` / :class:`RunInterrupted` / :class:`DisconnectedError`
      (or :class:`ReplyError` if the server refused to start the run).
    * ``await handle`` waits until the server accepted the run and returns the
      handle (raises :class:`ReplyError` if it was refused).
    * ``await handle.interrupt(reason)`` stops it.
    """

    kind: str = "run"

    def __init__(self, client: "MimoSynapse", ref: str) -> None:
        loop = asyncio.get_running_loop()
        self._client = client
        self.ref: str = ref
        self.status: str = "pending"  # pending -> running -> success | error | interrupted
        self._queue: "asyncio.Queue[Union[T, _End]]" = asyncio.Queue()
        self._accepted: "asyncio.Future[JSONObject]" = loop.create_future()
        self._done: "asyncio.Future[Result]" = loop.create_future()
        self._accepted.add_done_callback(_quiet)
        self._done.add_done_callback(_quiet)
        self._exhausted = False
        self._starter: Optional["asyncio.Task[None]"] = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} ref={self.ref} status={self.status}>"

    # -- state fed by the client --------------------------------------------
    def _set_accepted(self, response: JSONObject) -> None:
        if not self._accepted.done():
            self._accepted.set_result(response)
        if self.status == "pending":
            self.status = "running"

    def _push(self, item: T) -> None:
        if not self._done.done():
            self._queue.put_nowait(item)

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

    async def accepted(self) -> "RunHandle[T]":
        """Waits for the server's ok reply (the run exists); raises
        :class:`ReplyError` if it was refused."""
        await asyncio.shield(self._accepted)
        return self

    def __await__(self) -> Generator[Any, None, "RunHandle[T]"]:
        return self.accepted().__await__()

    def __aiter__(self) -> "RunHandle[T]":
        return self

    async def __anext__(self) -> T:
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

    async def result(self, timeout: Optional[float] = None) -> Result:
        """The terminal result; raises the run's error. ``timeout`` (seconds)
        bounds the wait (then :class:`asyncio.TimeoutError`; the run goes on)."""
        if timeout is None:
            return await asyncio.shield(self._done)
        return await asyncio.wait_for(asyncio.shield(self._done), timeout)

    async def interrupt(self, reason: Optional[str] = None) -> None:
        """Asks the server to stop the run. A run that already ended is left
        alone. The handle then ends with :class:`RunInterrupted`."""
        if self.done:
            return
        await asyncio.wait([self._accepted, self._done], return_when=asyncio.FIRST_COMPLETED)
        if self.done:
            return
        try:
            await self._client.interrupt(self.ref, reason)
        except ReplyError as e:
            if e.reason == "not_found" and self.done:
                return  # it finished just before the interrupt reached the server
            raise


class QueryHandle(RunHandle[Thought]):
    """A running query; iterates :class:`Thought` objects in ``seq`` order."""

    kind = "query"

    def __init__(self, client: "MimoSynapse", ref: str) -> None:
        super().__init__(client, ref)
        self._last_seq = 0

    def _thought(self, thought: Thought) -> None:
        if thought.seq and thought.seq <= self._last_seq:
            log.debug("dropping thought seq %s of %s: not after %s", thought.seq, self.ref, self._last_seq)
            return
        self._last_seq = thought.seq or self._last_seq
        self._push(thought)


ProgressCallback = Callable[[Progress], Any]


class ToolHandle(RunHandle[Progress]):
    """A running tool; iterates :class:`Progress` objects. ``on_progress``
    (sync, or a coroutine function run as a task) sees each one as it arrives."""

    kind = "tool"

    def __init__(self, client: "MimoSynapse", ref: str, on_progress: Optional[ProgressCallback] = None) -> None:
        super().__init__(client, ref)
        self._on_progress = on_progress

    def _progress(self, progress: Progress) -> None:
        if self._on_progress is not None and not self.done:
            try:
                r = self._on_progress(progress)
                if inspect.isawaitable(r):
                    self._client._spawn(r, f"on_progress {self.ref}")
            except Exception:  # noqa: BLE001 - an application callback
                log.exception("on_progress callback for %s raised", self.ref)
        self._push(progress)


__all__ = ["RunHandle", "QueryHandle", "ToolHandle", "ProgressCallback"]
