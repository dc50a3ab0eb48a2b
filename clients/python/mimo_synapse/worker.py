"""AgentWorker: put your own agent behind Synapse (docs/protocol.md section
10, the worker protocol). The worker connects with a worker credential
(``synapse keys create --worker --agent <agent_id>``), joins
``agent:<agent_id>`` with its capacity and tools, and runs one handler per
``run`` push::

    async def answer(run):
        yield Thought("searching memories")
        found = await run.call_tool("memory.search", {"query": run.q})
        for word in summarize(found):
            yield word + " "                      # a token: a text delta

    await AgentWorker(URL, api_key=WORKER_KEY, agent_id="support").serve(answer)

Streaming, cancellation (a client ``interrupt`` or the run's timeout
cancels the handler's task), reconnects and re-registration are the
worker's job, not the handler's."""
from __future__ import annotations

import asyncio
import inspect
import logging
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Dict, List, Mapping, Optional, Set, Union

from .client import ChannelHooks, MimoSynapse, TokenProvider, _NotSent
from .errors import ClientClosedError, DisconnectedError, RateLimitedError, ReplyError, RequestTimeout, SynapseError
from .models import JSONObject

log = logging.getLogger("mimo_synapse.worker")


# ------------------------------------------------------------- yielded items
@dataclass(frozen=True)
class Thought:
    """Yield one to send a ``thought`` (the client sees ``{"type",
    "content", ...extra}``)."""
    content: str
    type: str = "thought"
    extra: Mapping[str, Any] = field(default_factory=dict)

    def payload(self) -> JSONObject:
        return {**dict(self.extra), "type": self.type, "content": self.content}


@dataclass(frozen=True)
class ProgressUpdate:
    """Yield one to send a ``progress`` event."""
    progress: float
    total: Optional[float] = None
    message: Optional[str] = None


@dataclass(frozen=True)
class Final:
    """Yield one (last) to choose the run's ``result`` data. Without it the
    result is ``{"text": <every token yielded, concatenated>}``, or the
    return value of a plain coroutine handler."""
    data: Any


class AgentError(Exception):
    """Raise it in a handler to end the run with ``error {reason, message}``
    (``reason`` matching ``[a-z0-9_]{1,64}``; any other exception ends the run
    with reason ``agent_error`` and its text as the message)."""

    def __init__(self, reason: str, message: Optional[str] = None) -> None:
        self.reason = reason
        self.message = message
        super().__init__(f"{reason}: {message}" if message else reason)


Yielded = Union[str, Thought, ProgressUpdate, Final, Mapping[str, Any]]
Handler = Callable[["AgentRun"], Any]  # an async generator function, or a coroutine function


# ------------------------------------------------------------------- one run
class AgentRun:
    """What a handler is given: the ``run`` push (``run_id``, ``kind``
    ``query``/``tool``, ``q`` and ``limit`` of a query, ``name`` and
    ``args`` of a tool, ``caller`` ``{"tenant", "agent_id"}``,
    ``deadline_ms``) and the calls a handler may make while it runs."""

    def __init__(self, worker: "AgentWorker", conn_id: int, payload: JSONObject) -> None:
        self._worker = worker
        self._conn_id = conn_id
        self.raw: JSONObject = dict(payload)
        self.run_id: str = str(payload.get("run_id"))
        self.kind: str = str(payload.get("kind", "query"))
        q = payload.get("q")
        self.q: Optional[str] = q if isinstance(q, str) else None
        limit = payload.get("limit")
        self.limit: Optional[int] = limit if isinstance(limit, int) and not isinstance(limit, bool) else None
        name = payload.get("name")
        self.name: Optional[str] = name if isinstance(name, str) else None
        args = payload.get("args")
        self.args: JSONObject = dict(args) if isinstance(args, dict) else {}
        caller = payload.get("caller")
        self.caller: JSONObject = dict(caller) if isinstance(caller, dict) else {}
        deadline = payload.get("deadline_ms")
        self.deadline_ms: Optional[int] = deadline if isinstance(deadline, int) else None
        self.text = ""                          # every token sent so far
        self.cancelled = False                  # a cancel push arrived
        self.cancel_reason: Optional[str] = None
        self.task: Optional["asyncio.Task[None]"] = None

    @property
    def agent_id(self) -> Optional[str]:
        """The agent the run is for (``caller.agent_id``)."""
        a = self.caller.get("agent_id")
        return a if isinstance(a, str) else None

    @property
    def tenant(self) -> Optional[str]:
        t = self.caller.get("tenant")
        return t if isinstance(t, str) else None

    def __repr__(self) -> str:
        return f"<AgentRun {self.run_id} {self.kind} {self.q or self.name!r}>"

    # Sending events. Each goes out in order on the worker's connection; its
    # reply is checked in the background (an error reply is logged; a
    # "dropped" reply means the run ended on the server: the handler is
    # cancelled).
    async def token(self, text: str) -> None:
        """Sends a text delta (what ``yield "text"`` does)."""
        if not isinstance(text, str):
            raise TypeError("a token is a string")
        if text:
            self.text += text
            await self._send("token", {"text": text})

    async def thought(self, content: Union[str, Thought, Mapping[str, Any]], type: str = "thought",
                      **extra: Any) -> None:
        """Sends a thought (what ``yield Thought(...)`` does)."""
        if isinstance(content, Thought):
            body: Any = content.payload()
        elif isinstance(content, Mapping):
            body = dict(content)
        else:
            body = {**extra, "type": type, "content": str(content)}
        await self._send("thought", {"thought": body})

    async def progress(self, progress: float, total: Optional[float] = None, message: Optional[str] = None) -> None:
        payload: JSONObject = {"progress": progress}
        if total is not None:
            payload["total"] = total
        if message is not None:
            payload["message"] = message
        await self._send("progress", payload)

    async def call_tool(self, name: str, args: Optional[Mapping[str, Any]] = None, *,
                        timeout: Optional[float] = 300.0) -> Any:
        """Runs a Synapse tool (``memory.search``, ``memory.store``, MCP
        tools, ...) as the run's caller and returns its ``data``; raises
        :class:`ReplyError` (``unknown_tool``, ``invalid_args``, ``tool_error``,
        ``tool_unavailable``, ``unknown_run``)."""
        payload: JSONObject = {"run_id": self.run_id, "name": name, "args": dict(args or {})}
        resp = await self._worker._client._request(self._worker.topic, "call_tool", payload,
                                                   conn_id=self._conn_id, timeout=timeout)
        return resp.get("data")

    async def _send(self, event: str, payload: JSONObject) -> None:
        if self.cancelled:
            raise asyncio.CancelledError()
        await self._worker._post(self, event, {"run_id": self.run_id, **payload})


# -------------------------------------------------------------------- worker
class AgentWorker:
    """Serves an agent: ``await worker.serve(handler)``.

    ``handler(run)`` is called for each run Synapse gives this worker (at
    most ``capacity`` at once), as its own task. It is either an **async
    generator** yielding, in order,

    * ``str``: a token (a text delta of the answer),
    * :class:`Thought` (or a dict ``{"type", "content", ...}``): a thought,
    * :class:`ProgressUpdate`: a progress event,
    * :class:`Final`: the result data (else ``{"text": run.text}``),

    or a **coroutine** whose return value is the result data (it may send
    with ``await run.token(...)`` etc.). Either may ``await
    run.call_tool(name, args)``. When the handler finishes the worker sends
    ``result``; when it raises, ``error`` (:class:`AgentError` for a chosen
    reason). A client ``interrupt``, the run's timeout or the server ending
    the run cancels the handler's task: it sees ``asyncio.CancelledError``
    at its next ``await``/``yield`` (clean up in ``finally``), and nothing
    more is sent for that run.

    Runs of kind ``tool`` (for the tools declared in ``tools``) go to
    ``tool_handlers[name]`` when given, else to ``handler``.

    Links drop: the worker reconnects (backoff as :class:`MimoSynapse`) and
    joins again with the same capacity and tools. Runs it was serving when
    the link dropped are ended by the server (``agent_unavailable``, or given
    to another worker if nothing was streamed yet), so their handlers are
    cancelled here.
    """

    def __init__(self, url: str, *, api_key: Optional[str] = None, token: Optional[str] = None,
                 get_token: Optional[TokenProvider] = None, agent_id: Optional[str] = None,
                 capacity: int = 1, tools: Optional[List[Mapping[str, Any]]] = None,
                 heartbeat_interval: float = 30.0, request_timeout: float = 10.0, connect_timeout: float = 10.0,
                 backoff_base: float = 0.2, backoff_max: float = 30.0,
                 on_registered: Optional[Callable[[JSONObject], Any]] = None,
                 trace: Optional[Callable[[str, List[Any]], Any]] = None) -> None:
        if not isinstance(capacity, int) or isinstance(capacity, bool) or not 1 <= capacity <= 1000:
            raise ValueError("capacity must be an integer from 1 to 1000")
        self.capacity = capacity
        self.tools: List[JSONObject] = [dict(t) for t in (tools or [])]
        for t in self.tools:
            if not isinstance(t.get("name"), str):
                raise ValueError("every tool needs a name")
        self.agent_id = agent_id
        self._client = MimoSynapse(url, api_key=api_key, token=token, get_token=get_token, agent_id=agent_id,
                                   heartbeat_interval=heartbeat_interval, request_timeout=request_timeout,
                                   connect_timeout=connect_timeout, backoff_base=backoff_base,
                                   backoff_max=backoff_max, resume_runs=False, trace=trace,
                                   on_disconnect=self._disconnected)
        self._on_registered = on_registered
        self._handler: Optional[Handler] = None
        self._tool_handlers: Dict[str, Handler] = {}
        self.topic = ""
        self.worker_id: Optional[str] = None
        self.registrations = 0          # successful joins (the first one, then one per reconnect)
        self.stats: Dict[str, int] = {"runs": 0, "results": 0, "errors": 0, "cancelled": 0, "lost": 0}
        self.error: Optional[SynapseError] = None
        self._join_ref: Optional[str] = None
        self._joined_conn: Optional[int] = None
        self._registered = asyncio.Event()
        self._first: "Optional[asyncio.Future[JSONObject]]" = None
        self._runs: Dict[str, AgentRun] = {}
        self._stopped = asyncio.Event()
        self._tasks: Set["asyncio.Task[Any]"] = set()
        self._posted = 0

    # ------------------------------------------------------------ lifecycle
    @property
    def registered(self) -> bool:
        """True while joined to the agent topic on the current connection."""
        return self._joined_conn is not None and self._joined_conn == self._client._conn_id

    @property
    def active(self) -> int:
        """Runs being served now."""
        return len(self._runs)

    @property
    def client(self) -> MimoSynapse:
        """The connection (``connection_count``, ``connected``, ...)."""
        return self._client

    async def start(self, handler: Handler, tool_handlers: Optional[Mapping[str, Handler]] = None) -> "AgentWorker":
        """Connects and joins; returns once registered (raises
        :class:`ReplyError` if the join is refused, e.g. ``forbidden`` for a
        credential that is not a worker's)."""
        if not callable(handler):
            raise TypeError("handler must be callable")
        self._handler = handler
        self._tool_handlers = dict(tool_handlers or {})
        await self._client.connect()
        if self.agent_id is None:
            try:
                self.agent_id = await self._client._resolve_agent_id()
            except SynapseError as e:
                await self._client.close()
                raise SynapseError("unknown_agent", f"could not tell the agent id ({e}); pass agent_id=") from e
        self.topic = f"agent:{self.agent_id}"
        self._first = asyncio.get_running_loop().create_future()
        self._client._channels[self.topic] = _Hooks(self)
        self._spawn(self._join(self._client._conn_id), "worker join")
        try:
            await asyncio.wait_for(asyncio.shield(self._first), self._client.connect_timeout + 10)
        except BaseException:
            await self.close()
            raise
        return self

    async def serve(self, handler: Handler, tool_handlers: Optional[Mapping[str, Handler]] = None) -> None:
        """:meth:`start`, then serves until :meth:`close` (or until the
        worker gives up: revoked credentials, a refused rejoin; then it
        raises that error)."""
        await self.start(handler, tool_handlers)
        await self.wait_closed()

    async def wait_closed(self) -> None:
        await self._stopped.wait()
        if self.error is not None:
            raise self.error

    async def wait_registered(self, timeout: Optional[float] = None) -> None:
        """Waits until the worker is joined on the current connection."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self._client.connect_timeout if timeout is None else timeout)
        while not self.registered:
            left = deadline - loop.time()
            if left <= 0 or self._stopped.is_set():
                raise RequestTimeout("the worker is not registered")
            self._registered.clear()
            try:
                await asyncio.wait_for(self._registered.wait(), min(left, 0.5))
            except asyncio.TimeoutError:
                pass

    async def close(self) -> None:
        """Stops serving: running handlers are cancelled (the server ends
        their runs with ``agent_unavailable``), the connection closes."""
        for run in list(self._runs.values()):
            if run.task is not None:
                run.task.cancel()
        self._client._channels.pop(self.topic, None)
        await self._client.close()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        self._stopped.set()

    async def __aenter__(self) -> "AgentWorker":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def _disconnected(self, code: Optional[int]) -> None:
        if self._client.closed and self._client.error is not None and not self._stopped.is_set():
            # The client gave up (revoked credentials, ...): so does the worker.
            self.error = self._client.error
            self._cancel_all("the client gave up")
            self._stopped.set()
            if self._first is not None and not self._first.done():
                self._first.set_exception(self._client.error)

    # ------------------------------------------------------------- joining
    def _join_payload(self) -> JSONObject:
        p: JSONObject = {"capacity": self.capacity}
        if self.tools:
            p["tools"] = self.tools
        return p

    async def _join(self, conn_id: int) -> None:
        """Joins the agent topic on connection ``conn_id``, retrying rate
        limits and timeouts while that connection lasts. A refusal on the
        first start raises from start(); on a rejoin the worker gives up
        (a refusal does not cure itself)."""
        client = self._client
        attempt = 0
        while client._conn_id == conn_id and client.connected:
            join_ref = client._next_ref()

            def on_send(jr: str = join_ref) -> None:
                self._join_ref = jr
                client._join_refs[self.topic] = jr

            def on_reply(reply: JSONObject, jr: str = join_ref) -> None:
                if reply.get("status") == "ok" and client._conn_id == conn_id and self._join_ref == jr:
                    self._joined_conn = conn_id
                    resp = reply.get("response")
                    resp = resp if isinstance(resp, dict) else {}
                    if isinstance(resp.get("worker_id"), str):
                        self.worker_id = resp["worker_id"]
                    self.registrations += 1
                    self._registered.set()

            try:
                resp = await client._request(self.topic, "phx_join", self._join_payload(), ref=join_ref,
                                             join_ref=join_ref, conn_id=conn_id, on_send=on_send, on_reply=on_reply)
                log.info("worker %s registered on %s (capacity %d)", self.worker_id, self.topic, self.capacity)
                if self._first is not None and not self._first.done():
                    self._first.set_result(resp)
                if self._on_registered is not None:
                    client._callback(self._on_registered, resp)
                return
            except RateLimitedError as e:
                delay = (e.retry_after_ms or 1000) / 1000.0
            except RequestTimeout:
                delay = min(0.2 * 2 ** attempt, 5.0)
                attempt += 1
            except ReplyError as e:
                log.error("joining %s was refused: %s", self.topic, e)
                if self._first is not None and not self._first.done():
                    self._first.set_exception(e)
                else:
                    self.error = e
                    self._spawn(self.close(), "worker close")
                return
            except (DisconnectedError, ClientClosedError):
                return  # the next connection joins again
            if await client._sleep(delay):
                return

    # --------------------------------------------------------- server pushes
    def _on_push(self, join_ref: Optional[str], event: str, payload: JSONObject) -> None:
        if join_ref is not None and self._join_ref is not None and join_ref != self._join_ref:
            return  # a push of an earlier join
        if event == "run":
            self._on_run(payload)
        elif event == "cancel":
            run = self._runs.get(str(payload.get("run_id")))
            if run is not None and not run.cancelled:
                reason = payload.get("reason")
                run.cancelled = True
                run.cancel_reason = reason if isinstance(reason, str) else "cancelled"
                log.info("run %s cancelled (%s)", run.run_id, run.cancel_reason)
                if run.task is not None:
                    run.task.cancel()
        elif event in ("phx_close", "phx_error"):
            if join_ref is not None and join_ref == self._join_ref:
                log.warning("the server closed %s (%s); joining again", self.topic, event)
                self._joined_conn = None
                self._join_ref = None
                self._client._join_refs.pop(self.topic, None)
                self._cancel_all("the agent channel closed")
                conn = self._client._conn_id

                async def rejoin() -> None:
                    if not await self._client._sleep(1.0):
                        await self._join(conn)

                self._spawn(rejoin(), "worker rejoin")

    def _on_run(self, payload: JSONObject) -> None:
        run_id = payload.get("run_id")
        if not isinstance(run_id, str) or run_id in self._runs:
            return
        run = AgentRun(self, self._client._conn_id, payload)
        handler = self._tool_handlers.get(run.name or "") if run.kind == "tool" else None
        handler = handler or self._handler
        assert handler is not None
        self._runs[run_id] = run
        self.stats["runs"] += 1
        run.task = self._spawn(self._serve_one(handler, run), f"run {run_id}")

    def _on_connected(self, conn_id: int) -> None:
        if self.topic:
            self._spawn(self._join(conn_id), "worker rejoin")

    def _on_lost(self) -> None:
        self._joined_conn = None
        self._join_ref = None
        self._cancel_all("the connection was lost")

    def _cancel_all(self, why: str) -> None:
        """The server ends every run of a worker whose link or channel is
        gone: stop their handlers (nothing they send could arrive)."""
        for run in list(self._runs.values()):
            if not run.cancelled:
                run.cancelled = True
                run.cancel_reason = "lost"
                self.stats["lost"] += 1
                log.warning("run %s: %s; stopping its handler", run.run_id, why)
                if run.task is not None:
                    run.task.cancel()

    # ------------------------------------------------------------- running
    async def _post(self, run: AgentRun, event: str, payload: JSONObject) -> "asyncio.Future[JSONObject]":
        # A socket write that need not wait returns without yielding to the
        # event loop: a handler yielding tokens in a tight loop would keep
        # the reader (cancel pushes, replies, heartbeats) from running.
        self._posted += 1
        if self._posted % 32 == 0:
            await asyncio.sleep(0)
        try:
            fut = await self._client._post(self.topic, event, payload, conn_id=run._conn_id)
        except _NotSent:
            run.cancelled = True
            run.cancel_reason = run.cancel_reason or "lost"
            raise asyncio.CancelledError() from None

        def check(f: "asyncio.Future[JSONObject]") -> None:
            if f.cancelled() or f.exception() is not None:
                return
            reply = f.result()
            resp = reply.get("response")
            resp = resp if isinstance(resp, dict) else {}
            if reply.get("status") != "ok":
                log.warning("run %s: the server refused %s: %s", run.run_id, event, resp)
                if resp.get("reason") == "unknown_run":
                    self._stop_run(run, "unknown_run")
            elif resp.get("dropped") is True:
                self._stop_run(run, "ended")  # interrupted or timed out: the cancel push may be racing this

        fut.add_done_callback(check)
        return fut

    def _stop_run(self, run: AgentRun, why: str) -> None:
        if not run.cancelled:
            run.cancelled = True
            run.cancel_reason = why
            if run.task is not None and not run.task.done():
                run.task.cancel()

    async def _emit(self, run: AgentRun, item: Any) -> None:
        if isinstance(item, str):
            await run.token(item)
        elif isinstance(item, Thought):
            await run.thought(item)
        elif isinstance(item, ProgressUpdate):
            await run.progress(item.progress, item.total, item.message)
        elif isinstance(item, Mapping):
            await run.thought(item)
        else:
            raise TypeError(f"a handler yields str, Thought, ProgressUpdate, Final or a thought dict, not "
                            f"{type(item).__name__}")

    async def _serve_one(self, handler: Handler, run: AgentRun) -> None:
        """Runs one handler to its end and sends the run's terminal event
        (result or error), unless the run was cancelled or lost."""
        data: Any = None
        final = False
        try:
            try:
                if inspect.isasyncgenfunction(handler):
                    agen = handler(run)
                    try:
                        async for item in agen:
                            if isinstance(item, Final):
                                data, final = item.data, True
                                continue
                            await self._emit(run, item)
                    finally:
                        await agen.aclose()
                else:
                    out = handler(run)
                    if inspect.isawaitable(out):
                        out = await out
                    data, final = out, out is not None
                if not final:
                    data = {"text": run.text}
                if run.cancelled:
                    raise asyncio.CancelledError()
                fut = await self._post(run, "result", {"run_id": run.run_id, "data": data})
                self.stats["results"] += 1
                await self._wait_reply(fut)
            except asyncio.CancelledError:
                self.stats["cancelled"] += 1
                return
            except AgentError as e:
                await self._fail(run, e.reason, e.message or "")
            except Exception as e:  # noqa: BLE001 - the handler's failure ends its run, not the worker
                log.exception("handler of run %s raised", run.run_id)
                await self._fail(run, "agent_error", f"{type(e).__name__}: {e}")
        finally:
            self._runs.pop(run.run_id, None)

    async def _fail(self, run: AgentRun, reason: str, message: str) -> None:
        if run.cancelled:
            return
        try:
            fut = await self._post(run, "error", {"run_id": run.run_id, "reason": reason, "message": message[:1000]})
            self.stats["errors"] += 1
            await self._wait_reply(fut)
        except asyncio.CancelledError:
            pass

    @staticmethod
    async def _wait_reply(fut: "asyncio.Future[JSONObject]") -> None:
        try:
            await asyncio.wait_for(asyncio.shield(fut), 10)
        except (asyncio.TimeoutError, SynapseError):
            pass

    def _spawn(self, aw: Awaitable[Any], name: str) -> "asyncio.Task[Any]":
        task: "asyncio.Task[Any]" = asyncio.ensure_future(aw)
        self._tasks.add(task)

        def done(t: "asyncio.Task[Any]") -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("worker task %s failed: %r", name, t.exception())

        task.add_done_callback(done)
        return task


class _Hooks(ChannelHooks):
    def __init__(self, worker: AgentWorker) -> None:
        self.worker = worker

    def on_push(self, join_ref: Optional[str], event: str, payload: JSONObject) -> None:
        self.worker._on_push(join_ref, event, payload)

    def on_connected(self, conn_id: int) -> None:
        self.worker._on_connected(conn_id)

    def on_lost(self) -> None:
        self.worker._on_lost()


__all__ = ["AgentWorker", "AgentRun", "AgentError", "Thought", "ProgressUpdate", "Final", "Handler"]
