"""The Synapse client: one WebSocket speaking Phoenix Channels V2, the agent's
``cortex:<agent_id>`` channel for queries and tools, and pub/sub topics with
gap-free recovery across reconnects."""
from __future__ import annotations

import asyncio
import copy
import inspect
import itertools
import json
import logging
import secrets
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import (Any, Awaitable, Callable, Dict, List, Mapping, Optional, Set, Tuple, Union)
from urllib.parse import quote

from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.legacy.client import WebSocketClientProtocol
from websockets.legacy.client import connect as ws_connect

from ._util import MaybeAwaitable, call_maybe_async, full_jitter, http_base, jwt_claims, websocket_url
from .errors import (AuthenticationError, ClientClosedError, ConnectError, DisconnectedError,
                     RateLimitedError, ReplyError, RequestTimeout, RunError, RunInterrupted, SynapseError)
from .handles import AttachedRun, ProgressCallback, QueryHandle, RunHandle, ToolHandle
from .models import JSONObject, Message, Progress, Result, RunInfo, Snapshot, Thought, Token, ToolInfo
from .presence import PresenceState, sync_diff, sync_state

log = logging.getLogger("mimo_synapse")

TokenProvider = Callable[[], MaybeAwaitable[str]]
MessageCallback = Callable[[Message], Any]
PresenceCallback = Callable[[PresenceState], Any]
TraceCallback = Callable[[str, List[Any]], Any]
ConnectCallback = Callable[[], Any]
DisconnectCallback = Callable[[Optional[int]], Any]

PHOENIX = "phoenix"


class _Auto:
    pass


_AUTO = _Auto()


class _NotSent(DisconnectedError):
    """The connection changed before the frame went out: safe to retry."""


def _quiet(fut: "asyncio.Future[Any]") -> None:
    if not fut.cancelled():
        fut.exception()


# --------------------------------------------------------------------------
# Handshake: websockets 10 drops the body of a refused upgrade; the server puts
# its {"error": CODE, "reason": TEXT} there, so read it.
class _HandshakeRejected(InvalidHandshake):
    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        super().__init__(f"server refused the WebSocket upgrade: HTTP {status}")


class _Protocol(WebSocketClientProtocol):
    async def read_http_response(self) -> Tuple[int, Any]:
        status, headers = await super().read_http_response()
        if status != 101:
            body = b""
            try:
                length = int(headers.get("Content-Length") or 0)
                if 0 < length <= 65536:
                    body = await asyncio.wait_for(self.reader.readexactly(length), 5)
            except (ValueError, asyncio.IncompleteReadError, asyncio.TimeoutError, OSError):
                pass
            raise _HandshakeRejected(status, headers, body)
        return status, headers


# --------------------------------------------------------------------------
class ChannelHooks:
    """What a channel kind built on a client's connection (the agent worker's
    ``agent:<id>``) is told: every push on its topic, each new connection
    (after the socket opened; join from here) and each lost one. All run on
    the event loop, in the reader, in stream order."""

    def on_push(self, join_ref: Optional[str], event: str, payload: JSONObject) -> None:
        raise NotImplementedError

    def on_connected(self, conn_id: int) -> None:
        raise NotImplementedError

    def on_lost(self) -> None:
        raise NotImplementedError


@dataclass
class _Pending:
    future: "asyncio.Future[JSONObject]"
    conn_id: int
    on_reply: Optional[Callable[[JSONObject], None]]


class _PresenceChange:
    def __init__(self, state: PresenceState) -> None:
        self.state = state


class _Sub:
    """Client-side state of one pub/sub topic (one server join per topic)."""

    def __init__(self, topic: str, meta: Optional[JSONObject], presence: bool) -> None:
        self.topic = topic
        self.meta = meta
        self.presence = presence
        self.listeners: Dict[int, MessageCallback] = {}
        self.presence_listeners: Dict[int, PresenceCallback] = {}
        self.epoch: Optional[str] = None
        self.last_offset = 0
        # Offsets of this client's own publishes not yet passed by last_offset:
        # the server does not deliver them to us live, but replays them on
        # recover, so they count as seen.
        self.own: Set[int] = set()
        self.join_ref: Optional[str] = None
        self.joined_conn: Optional[int] = None
        self.joined_evt = asyncio.Event()
        self.first_join: "asyncio.Future[JSONObject]" = asyncio.get_running_loop().create_future()
        self.first_join.add_done_callback(_quiet)
        self.resyncing = False
        self.error: Optional[SynapseError] = None
        self.presence_state: PresenceState = {}
        self.presence_ready = asyncio.Event()
        self.queue: "asyncio.Queue[Union[Message, _PresenceChange]]" = asyncio.Queue()
        self.worker: Optional["asyncio.Task[None]"] = None
        self.last_join: JSONObject = {}
        self.stats: Dict[str, int] = {"delivered": 0, "duplicates": 0, "missed": 0, "joins": 0,
                                      "recovered": 0, "not_recovered": 0, "resyncs": 0, "own": 0}

    def advance(self, offset: int) -> None:
        """``offset`` was seen: move past it and past any own publishes that follow."""
        self.last_offset = offset
        while self.last_offset + 1 in self.own:
            self.last_offset += 1
        if self.own:
            self.own = {o for o in self.own if o > self.last_offset}

    def reset_epoch(self, epoch: Optional[str], offset: int) -> None:
        self.epoch = epoch
        self.last_offset = offset
        self.own.clear()

    def published(self, offset: int) -> None:
        """This client published ``offset`` (it will not be pushed to us live)."""
        if offset <= self.last_offset:
            return
        self.own.add(offset)
        if offset == self.last_offset + 1:
            self.advance(self.last_offset)

    @property
    def has_listeners(self) -> bool:
        return bool(self.listeners or self.presence_listeners)

    def join_payload(self, resync: bool) -> JSONObject:
        p: JSONObject = {}
        if self.meta is not None:
            p["meta"] = self.meta
        if self.presence:
            p["presence"] = True
        if self.epoch is not None:
            p["recover"] = {"offset": 0 if resync else self.last_offset, "epoch": self.epoch}
        return p


class Subscription:
    """Returned by :meth:`MimoSynapse.subscribe`. Call it (``await unsub()``)
    to unsubscribe; it also exposes the topic's recovery state."""

    def __init__(self, client: "MimoSynapse", sub: _Sub, token: int) -> None:
        self._client = client
        self._sub = sub
        self._token = token

    @property
    def topic(self) -> str:
        return self._sub.topic

    @property
    def offset(self) -> int:
        """The last offset delivered (or the topic's offset at join)."""
        return self._sub.last_offset

    @property
    def epoch(self) -> Optional[str]:
        return self._sub.epoch

    @property
    def joined(self) -> bool:
        return self._sub.joined_conn is not None and self._sub.joined_conn == self._client._conn_id

    @property
    def join_response(self) -> JSONObject:
        """The response of the latest join (``offset``, ``epoch``, ``recovered``)."""
        return dict(self._sub.last_join)

    @property
    def stats(self) -> Dict[str, int]:
        """Counters: delivered, duplicates (dropped), missed (offset gaps),
        joins, recovered / not_recovered rejoins, resyncs (epoch changes)."""
        return dict(self._sub.stats)

    @property
    def error(self) -> Optional[SynapseError]:
        """Set when a rejoin was refused by the server."""
        return self._sub.error

    async def __call__(self) -> None:
        await self._client._unsubscribe(self._sub, self._token)

    unsubscribe = __call__


# --------------------------------------------------------------------------
class MimoSynapse:
    """Asyncio client of a Synapse gateway.

    Exactly one credential: ``api_key=``, ``token=`` (a JWT; refreshed with
    ``refresh {}`` before it expires) or ``get_token=`` (a function, plain or
    async, returning a fresh JWT; called at every connect and when the server
    warns that the token expires).

    ``agent_id`` selects the ``cortex:<agent_id>`` channel; by default it is
    the token's ``sub``, or the API key's agent (found through
    ``POST /api/token``).
    """

    def __init__(self, url: str, *, api_key: Optional[str] = None, token: Optional[str] = None,
                 get_token: Optional[TokenProvider] = None, agent_id: Optional[str] = None,
                 heartbeat_interval: float = 30.0, heartbeat_timeout: Optional[float] = None,
                 request_timeout: float = 10.0, connect_timeout: float = 10.0,
                 reconnect: bool = True, backoff_base: float = 0.2, backoff_max: float = 30.0,
                 stable_after: float = 5.0, max_message_size: Optional[int] = 64 * 1024 * 1024,
                 resume_runs: bool = True, resume_timeout: Optional[float] = 60.0,
                 on_connect: Optional[ConnectCallback] = None,
                 on_disconnect: Optional[DisconnectCallback] = None,
                 trace: Optional[TraceCallback] = None) -> None:
        if sum(x is not None for x in (api_key, token, get_token)) != 1:
            raise ValueError("pass exactly one of api_key=, token= or get_token=")
        if heartbeat_interval <= 0 or request_timeout <= 0 or connect_timeout <= 0:
            raise ValueError("intervals and timeouts must be positive")
        if resume_timeout is not None and resume_timeout <= 0:
            raise ValueError("resume_timeout must be positive (or None: wait as long as it takes)")
        self.url = websocket_url(url)
        self.http_url = http_base(self.url)
        self._api_key = api_key
        self._token = token
        self._get_token = get_token
        self._agent_id = agent_id
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout if heartbeat_timeout is not None else heartbeat_interval
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        self.reconnect = reconnect
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.stable_after = stable_after
        self.max_message_size = max_message_size
        self.resume_runs = resume_runs
        self.resume_timeout = resume_timeout
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._trace = trace

        self._ws: Optional[WebSocketClientProtocol] = None
        self._conn_id = 0
        self.connection_count = 0
        self.token_refreshes = 0
        self.last_close_code: Optional[int] = None
        self.last_error: Optional[SynapseError] = None
        self.session: Optional[str] = None
        self._opened_at = 0.0
        self._attempt = 0
        self._connected = asyncio.Event()
        self._close_evt = asyncio.Event()
        self._connect_lock = asyncio.Lock()
        self._closed = False
        self._fatal: Optional[SynapseError] = None
        self._main_task: Optional["asyncio.Task[None]"] = None
        self._pending: Dict[str, _Pending] = {}
        # Runs this client follows: the ones it started, by ref (from the
        # moment the start frame goes out), and every accepted or attached
        # one by run_id. Events are routed by run_id (refs are per
        # connection on the server and may collide across devices).
        self._runs: Dict[str, RunHandle[Any]] = {}
        self._by_id: Dict[str, RunHandle[Any]] = {}
        self._resume_task: Optional["asyncio.Task[None]"] = None
        self._resume_conn = 0
        # Other channel kinds built on this connection (the agent worker's
        # agent:<id>), by topic: told of every connection and every loss.
        self._channels: Dict[str, ChannelHooks] = {}
        self._subs: Dict[str, _Sub] = {}
        self._join_refs: Dict[str, str] = {}
        self._refs = itertools.count(1)
        self._listener_ids = itertools.count(1)
        self._run_prefix = "py" + secrets.token_hex(3)
        self._run_refs = itertools.count(1)
        self._cortex_topic: Optional[str] = None
        self._cortex_conn: Optional[int] = None
        self._cortex_task: Optional["asyncio.Task[None]"] = None
        self._cortex_task_conn = 0
        self._refresh_task: Optional["asyncio.Task[None]"] = None
        self._hb_task: Optional["asyncio.Task[None]"] = None
        self._tasks: Set["asyncio.Task[Any]"] = set()

    # ------------------------------------------------------------------ state
    @property
    def connected(self) -> bool:
        """True while a WebSocket is open."""
        return self._ws is not None and not self._closed

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def error(self) -> Optional[SynapseError]:
        """The fatal error the client gave up on (e.g. revoked credentials)."""
        return self._fatal

    @property
    def agent_id(self) -> Optional[str]:
        return self._agent_id

    @property
    def token(self) -> Optional[str]:
        """The JWT the client currently holds (None for API keys)."""
        return self._token

    async def __aenter__(self) -> "MimoSynapse":
        return await self.connect()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # ------------------------------------------------------------- lifecycle
    async def connect(self) -> "MimoSynapse":
        """Opens the connection; raises :class:`ConnectError` /
        :class:`AuthenticationError` if the first attempt fails. After that the
        client reconnects by itself."""
        async with self._connect_lock:
            if self._closed:
                raise self._fatal or ClientClosedError()
            if self._main_task is not None:
                await self.wait_connected(self.connect_timeout)
                return self
            ws = await self._establish()
            self._main_task = asyncio.get_running_loop().create_task(self._run(ws), name="mimo-synapse")
            return self

    async def wait_connected(self, timeout: Optional[float] = None) -> None:
        """Waits until a connection is open (raises :class:`RequestTimeout`)."""
        loop = asyncio.get_running_loop()
        await self._wait_connected(loop.time() + (self.connect_timeout if timeout is None else timeout))

    async def close(self) -> None:
        """Closes the connection and stops reconnecting. Runs still going end
        with :class:`ClientClosedError`."""
        if self._closed and self._main_task is None and not self._tasks:
            return
        self._closed = True
        self._close_evt.set()
        self._connected.set()  # wakes waiters, who see _closed
        ws = self._ws
        if ws is not None:
            try:
                await asyncio.wait_for(ws.close(1000), 3)
            except (asyncio.TimeoutError, OSError, ConnectionClosed):
                self._abort(ws)
        task, self._main_task = self._main_task, None
        if task is not None and not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), 5)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001
                task.cancel()
        if ws is not None and self._ws is ws:  # never read: clean up here
            self._connection_lost(ws, ws.close_code)
        for sub in list(self._subs.values()):
            if not sub.first_join.done():
                sub.first_join.set_exception(ClientClosedError())
            if sub.worker is not None:
                sub.worker.cancel()
        for run in self._handles():
            self._forget(run)
            run._fail(ClientClosedError(ref=run.ref))
        current = asyncio.current_task()
        stopping = [t for t in self._tasks if t is not current]
        for t in stopping:
            t.cancel()
        if stopping:
            await asyncio.wait(stopping, timeout=5)

    # ---------------------------------------------------------- connections
    async def _credential(self) -> str:
        if self._get_token is not None:
            try:
                token = await call_maybe_async(self._get_token)
            except Exception as e:  # noqa: BLE001 - the application's provider
                raise ConnectError("token_provider_failed", f"get_token raised {e!r}") from e
            if not isinstance(token, str) or not token:
                raise ConnectError("token_provider_failed", "get_token returned no token")
            self._token = token
            return token
        if self._token is not None:
            return self._token
        assert self._api_key is not None
        return self._api_key

    async def _open(self, credential: str) -> WebSocketClientProtocol:
        try:
            ws = await ws_connect(
                self.url, extra_headers={"Authorization": f"Bearer {credential}"},
                open_timeout=self.connect_timeout, ping_interval=None, ping_timeout=None,
                close_timeout=2, max_size=self.max_message_size, max_queue=1024,
                create_protocol=_Protocol)
        except _HandshakeRejected as e:
            raise self._rejection(e) from None
        except (OSError, asyncio.TimeoutError, InvalidHandshake, ConnectionClosed, EOFError) as e:
            raise ConnectError("connect_failed", f"{type(e).__name__}: {e}".rstrip(": ")) from e
        return ws  # type: ignore[no-any-return]

    @staticmethod
    def _rejection(e: _HandshakeRejected) -> ConnectError:
        code: Optional[str] = None
        text: Optional[str] = None
        try:
            body = json.loads(e.body.decode("utf-8")) if e.body else None
            if isinstance(body, dict):
                code = body.get("error") if isinstance(body.get("error"), str) else None
                text = body.get("reason") if isinstance(body.get("reason"), str) else None
        except (ValueError, UnicodeDecodeError):
            pass
        retry: Optional[float] = None
        try:
            if e.headers.get("Retry-After") is not None:
                retry = float(e.headers.get("Retry-After"))
        except (TypeError, ValueError):
            pass
        if e.status in (401, 403):
            return AuthenticationError(code or ("unauthorized" if e.status == 401 else "forbidden"), text,
                                       status=e.status, retry_after_s=retry)
        return ConnectError(code or f"http_{e.status}", text, status=e.status, retry_after_s=retry)

    def _is_fatal(self, e: ConnectError) -> bool:
        if e.status == 400:
            return True
        if isinstance(e, AuthenticationError):
            # A token provider can cure expired or unknown tokens; nothing else can.
            return not (self._get_token is not None and e.status == 401)
        return False

    def _fatal_close(self, code: Optional[int]) -> Optional[SynapseError]:
        if code == 4003:
            return AuthenticationError("credentials_revoked", "the server closed the connection: credentials revoked",
                                       close_code=code)
        if code == 4001 and self._get_token is None:
            return AuthenticationError("token_expired", "the token expired and could not be refreshed",
                                       close_code=code)
        return None

    async def _establish(self) -> WebSocketClientProtocol:
        credential = await self._credential()
        ws = await self._open(credential)
        if self._closed:
            await ws.close()
            raise ClientClosedError()
        self._ws = ws
        self._conn_id += 1
        self.connection_count += 1
        self._opened_at = time.monotonic()
        conn_id = self._conn_id
        self._connected.set()
        self._hb_task = self._spawn(self._heartbeat(ws, conn_id), "heartbeat")
        for sub in list(self._subs.values()):
            self._spawn(self._join_sub(sub, conn_id), f"join {sub.topic}")
        if any(h._needs_resume for h in self._handles()):
            self._kick_resume()
        for hooks in list(self._channels.values()):
            hooks.on_connected(conn_id)
        log.info("connected to %s (connection %d)", self.url.split("?")[0], self.connection_count)
        if self._on_connect is not None:
            self._callback(self._on_connect)
        return ws

    async def _run(self, ws: WebSocketClientProtocol) -> None:
        current: Optional[WebSocketClientProtocol] = ws
        try:
            while current is not None:
                code = await self._read(current)
                lived = time.monotonic() - self._opened_at
                self._connection_lost(current, code)
                if self._closed:
                    return
                fatal = self._fatal_close(code)
                if fatal is None and not self.reconnect:
                    fatal = ConnectError("disconnected", "the connection closed and reconnect is off", close_code=code)
                if fatal is not None:
                    self._give_up(fatal)
                    return
                if lived >= self.stable_after:
                    self._attempt = 0
                current = await self._reconnect_loop()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - a bug of ours; do not die silently
            log.exception("the connection loop failed")
            self._give_up(SynapseError("internal", f"connection loop failed: {e!r}"))

    async def _read(self, ws: WebSocketClientProtocol) -> Optional[int]:
        try:
            async for raw in ws:
                if isinstance(raw, str):
                    self._on_text(raw)
                else:
                    log.warning("ignoring a binary frame of %d bytes", len(raw))
        except ConnectionClosed:
            pass
        except Exception as e:  # noqa: BLE001 - a transport error ends this connection
            log.warning("connection failed: %r", e)
            self._abort(ws)
        return ws.close_code

    async def _reconnect_loop(self) -> Optional[WebSocketClientProtocol]:
        retry_after: Optional[float] = None
        while not self._closed:
            delay = full_jitter(self._attempt, self.backoff_base, self.backoff_max)
            if retry_after is not None:
                delay = max(delay, min(retry_after, self.backoff_max))
            self._attempt += 1
            log.info("reconnecting in %.2fs (attempt %d)", delay, self._attempt)
            if await self._sleep(delay):
                return None
            try:
                return await self._establish()
            except ClientClosedError:
                return None
            except ConnectError as e:
                self.last_error = e
                if self._is_fatal(e):
                    self._give_up(e)
                    return None
                retry_after = e.retry_after_s
                log.info("reconnect failed: %s", e)
        return None

    async def _sleep(self, delay: float) -> bool:
        """Sleeps; True if the client was closed meanwhile."""
        try:
            await asyncio.wait_for(self._close_evt.wait(), delay)
            return True
        except asyncio.TimeoutError:
            return self._closed

    def _connection_lost(self, ws: WebSocketClientProtocol, code: Optional[int]) -> None:
        if self._ws is not ws:
            return
        self._ws = None
        if not self._closed:
            self._connected.clear()
        self.last_close_code = code
        if self._hb_task is not None:
            self._hb_task.cancel()
            self._hb_task = None
        closing = self._closed

        def err(ref: Optional[str] = None) -> SynapseError:
            if closing:
                return ClientClosedError(ref=ref)
            return DisconnectedError(f"the connection was lost (close code {code})", ref=ref)

        self._runs_lost(self._conn_id, closing, err)
        for hooks in list(self._channels.values()):
            try:
                hooks.on_lost()
            except Exception:  # noqa: BLE001
                log.exception("channel hook raised")
        pending, self._pending = self._pending, {}
        for p in pending.values():
            if not p.future.done():
                p.future.set_exception(err())
        self._cortex_conn = None
        self._join_refs.clear()
        for sub in self._subs.values():
            sub.joined_conn = None
            sub.join_ref = None
            sub.joined_evt.clear()
            sub.resyncing = False
            sub.presence_ready.clear()
        log.info("disconnected (close code %s)", code)
        if not closing and self._on_disconnect is not None:
            self._callback(self._on_disconnect, code)

    def _give_up(self, exc: SynapseError) -> None:
        log.error("giving up: %s", exc)
        ws = self._ws
        if ws is not None:
            self._abort(ws)
            self._connection_lost(ws, ws.close_code)
        self._fatal = exc
        self.last_error = exc
        self._closed = True
        self._close_evt.set()
        self._connected.set()
        for run in self._handles():
            self._forget(run)
            run._fail(DisconnectedError(f"the connection was lost and the client gave up: {exc}", ref=run.ref))
        for sub in self._subs.values():
            if not sub.first_join.done():
                sub.first_join.set_exception(exc)
        if self._on_disconnect is not None:
            self._callback(self._on_disconnect, self.last_close_code)

    @staticmethod
    def _abort(ws: WebSocketClientProtocol) -> None:
        transport = getattr(ws, "transport", None)
        if transport is not None:
            transport.abort()

    async def _heartbeat(self, ws: WebSocketClientProtocol, conn_id: int) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            if self._ws is not ws:
                return
            try:
                await self._request(PHOENIX, "heartbeat", {}, conn_id=conn_id, join_ref=None,
                                    timeout=self.heartbeat_timeout)
            except RequestTimeout:
                log.warning("no heartbeat reply within %.1fs; dropping the connection", self.heartbeat_timeout)
                self._abort(ws)
                return
            except SynapseError:
                return

    async def _wait_connected(self, deadline: float) -> int:
        loop = asyncio.get_running_loop()
        while True:
            if self._closed:
                raise self._fatal or ClientClosedError()
            if self._ws is not None:
                return self._conn_id
            if self._main_task is None:
                raise ConnectError("not_connected", "call connect() first")
            left = deadline - loop.time()
            if left <= 0:
                raise RequestTimeout("not connected to the server")
            try:
                await asyncio.wait_for(self._connected.wait(), left)
            except asyncio.TimeoutError:
                raise RequestTimeout("not connected to the server") from None

    # ----------------------------------------------------------------- frames
    def _next_ref(self) -> str:
        return str(next(self._refs))

    async def _request(self, topic: str, event: str, payload: JSONObject, *, timeout: Optional[float] = None,
                       conn_id: Optional[int] = None, ref: Optional[str] = None,
                       join_ref: Union[str, None, _Auto] = _AUTO,
                       on_send: Optional[Callable[[], None]] = None,
                       on_sent: Optional[Callable[[int], None]] = None,
                       on_reply: Optional[Callable[[JSONObject], None]] = None) -> JSONObject:
        """Sends one frame and waits for its phx_reply; returns the ok
        response or raises :class:`ReplyError`. ``on_reply`` runs in the reader,
        in stream order, before anything that follows the reply; ``on_sent``
        (with the connection id) once the frame was handed to the socket."""
        loop = asyncio.get_running_loop()
        limit = self.request_timeout if timeout is None else timeout
        deadline = loop.time() + limit
        cid = await self._wait_connected(deadline)
        if conn_id is not None and cid != conn_id:
            raise _NotSent("the connection changed")
        ws = self._ws
        assert ws is not None
        ref = ref or self._next_ref()
        jr = self._join_refs.get(topic) if isinstance(join_ref, _Auto) else join_ref
        frame = [jr, ref, topic, event, payload]
        text = json.dumps(frame, separators=(",", ":"))
        fut: "asyncio.Future[JSONObject]" = loop.create_future()
        fut.add_done_callback(_quiet)
        entry = _Pending(fut, cid, on_reply)
        self._pending[ref] = entry
        if on_send is not None:
            on_send()
        if self._trace is not None:
            self._call_trace("send", frame)
        try:
            try:
                await ws.send(text)
            except ConnectionClosed:
                self._connection_lost(ws, ws.close_code)
                raise _NotSent("the connection closed before the frame was sent") from None
            if on_sent is not None:
                on_sent(cid)
            try:
                reply = await asyncio.wait_for(asyncio.shield(fut), max(deadline - loop.time(), 0.001))
            except asyncio.TimeoutError:
                raise RequestTimeout(f"no reply to {event} on {topic} within {limit:g}s") from None
        finally:
            if self._pending.get(ref) is entry:
                del self._pending[ref]
        response = reply.get("response")
        response = response if isinstance(response, dict) else {}
        if reply.get("status") == "ok":
            return response
        raise ReplyError.from_response(response)

    async def _post(self, topic: str, event: str, payload: JSONObject, *, conn_id: int,
                    join_ref: Union[str, None, _Auto] = _AUTO) -> "asyncio.Future[JSONObject]":
        """Sends one frame with a ref on connection ``conn_id`` and returns
        the future of its reply (the raw ``{"status", "response"}``) without
        waiting for it: frames a task posts go out in order, and the socket's
        drain is the only wait (streams are not slowed by round trips). The
        future fails with DisconnectedError if the connection is lost first."""
        ws = self._ws
        if ws is None or self._conn_id != conn_id or self._closed:
            raise _NotSent("the connection changed")
        loop = asyncio.get_running_loop()
        ref = self._next_ref()
        jr = self._join_refs.get(topic) if isinstance(join_ref, _Auto) else join_ref
        frame = [jr, ref, topic, event, payload]
        text = json.dumps(frame, separators=(",", ":"))
        fut: "asyncio.Future[JSONObject]" = loop.create_future()
        fut.add_done_callback(_quiet)
        entry = _Pending(fut, conn_id, None)
        self._pending[ref] = entry

        def drop(_: "asyncio.Future[JSONObject]") -> None:
            if self._pending.get(ref) is entry:
                del self._pending[ref]

        fut.add_done_callback(drop)
        if self._trace is not None:
            self._call_trace("send", frame)
        try:
            await ws.send(text)
        except ConnectionClosed:
            drop(fut)
            self._connection_lost(ws, ws.close_code)
            raise _NotSent("the connection closed before the frame was sent") from None
        return fut

    def _call_trace(self, direction: str, frame: List[Any]) -> None:
        assert self._trace is not None
        try:
            self._trace(direction, frame)
        except Exception:  # noqa: BLE001
            log.exception("trace callback raised")

    def _on_text(self, raw: str) -> None:
        try:
            frame = json.loads(raw)
        except ValueError:
            log.warning("ignoring a frame that is not JSON: %.200s", raw)
            return
        if not (isinstance(frame, list) and len(frame) == 5 and isinstance(frame[2], str)
                and isinstance(frame[3], str)):
            log.warning("ignoring a frame that is not [join_ref, ref, topic, event, payload]: %.200s", raw)
            return
        if self._trace is not None:
            self._call_trace("recv", frame)
        try:
            self._on_frame(frame)
        except Exception:  # noqa: BLE001 - one bad frame must not end the connection
            log.exception("failed to handle frame %.200s", raw)

    def _on_frame(self, frame: List[Any]) -> None:
        join_ref, ref, topic, event, payload = frame
        if not isinstance(payload, dict):
            payload = {}
        if event == "phx_reply" and ref is not None:
            entry = self._pending.get(ref)
            if entry is None:
                log.debug("reply to unknown ref %s", ref)
                return
            if entry.on_reply is not None:
                try:
                    entry.on_reply(payload)
                except Exception:  # noqa: BLE001
                    log.exception("reply handler for ref %s raised", ref)
            if not entry.future.done():
                entry.future.set_result(payload)
            return
        if topic == PHOENIX:
            self._on_phoenix(event, payload)
        elif topic == self._cortex_topic:
            self._on_cortex(join_ref, event, payload)
        elif topic in self._channels:
            self._channels[topic].on_push(join_ref, event, payload)
        else:
            sub = self._subs.get(topic)
            if sub is not None:
                self._on_sub(sub, join_ref, event, payload)

    def _on_phoenix(self, event: str, payload: JSONObject) -> None:
        if event == "token_expiring":
            log.info("token expires in %s ms; refreshing", payload.get("expires_in_ms"))
            if self._refresh_task is None or self._refresh_task.done():
                self._refresh_task = self._spawn(self._refresh_token(self._conn_id), "token refresh")
        elif event == "phx_error":
            log.warning("the server reported an error: %s", payload)

    def _on_cortex(self, join_ref: Optional[str], event: str, payload: JSONObject) -> None:
        if event in ("phx_close", "phx_error"):
            if join_ref is not None and join_ref == self._join_refs.get(self._cortex_topic or ""):
                log.warning("the server closed the cortex channel (%s)", event)
                self._join_refs.pop(self._cortex_topic or "", None)
                self._cortex_conn = None
                if self.resume_runs and not self._closed:
                    # The runs go on without the channel (the server only
                    # stopped following them): rejoin and re-attach them.
                    for run in self._handles():
                        if run.run_id is not None or run._start_conn == self._conn_id:
                            self._mark_resume(run)
                    self._kick_resume(delay=1.0)
                else:
                    for run in self._handles():
                        self._forget(run)
                        run._fail(RunError("channel_closed", "the server closed the cortex channel", ref=run.ref))
            return
        run = self._route(payload)
        if run is None:
            return
        if event == "thought":
            run._thought(Thought.from_payload(payload))
        elif event == "token":
            run._token(Token.from_payload(payload))
        elif event == "progress":
            run._progress(Progress.from_payload(payload))
        elif event == "snapshot":
            run._snapshot(Snapshot.from_payload(payload))
        elif event in ("result", "error", "interrupted"):
            seq = payload.get("seq")
            if isinstance(seq, int) and not isinstance(seq, bool) and not run._fresh(seq):
                return  # a duplicate of a terminal already handled
            self._forget(run)
            if event == "result":
                run._finish(Result.from_payload(payload))
            elif event == "error":
                run._fail(RunError.from_response(payload, ref=run.ref))
            else:
                run._fail(RunInterrupted.from_response(payload, ref=run.ref))

    def _route(self, payload: JSONObject) -> Optional[RunHandle[Any]]:
        """The handle a run push belongs to: by ``run_id``; by ``ref`` only for
        a run started here whose run id is not known (a server without run ids)."""
        run_id, ref = payload.get("run_id"), payload.get("ref")
        if isinstance(run_id, str):
            run = self._by_id.get(run_id)
            if run is not None:
                return run
        if isinstance(ref, str):
            run = self._runs.get(ref)
            if run is not None and (run.run_id is None or not isinstance(run_id, str)):
                return run
        return None

    # ------------------------------------------------------------ run resume
    def _handles(self) -> List[RunHandle[Any]]:
        seen: Dict[int, RunHandle[Any]] = {}
        for h in list(self._runs.values()) + list(self._by_id.values()):
            seen[id(h)] = h
        return list(seen.values())

    def _bind(self, handle: RunHandle[Any], run_id: str) -> None:
        handle.run_id = run_id
        self._by_id[run_id] = handle

    def _forget(self, handle: RunHandle[Any]) -> None:
        if self._runs.get(handle.ref) is handle:
            del self._runs[handle.ref]
        if handle.run_id is not None and self._by_id.get(handle.run_id) is handle:
            del self._by_id[handle.run_id]
        handle._needs_resume = False

    def _mark_resume(self, handle: RunHandle[Any]) -> None:
        """``handle`` lost its connection: re-attach it on the next one, or
        fail it once ``resume_timeout`` has passed without that."""
        if handle.done:
            self._forget(handle)
            return
        handle._needs_resume = True
        if handle._resume_deadline is None and self.resume_timeout is not None:
            loop = asyncio.get_running_loop()
            handle._resume_deadline = loop.time() + self.resume_timeout
            self._spawn(self._expire_resume(handle, handle._resume_deadline), f"resume deadline {handle.ref}")

    async def _expire_resume(self, handle: RunHandle[Any], deadline: float) -> None:
        loop = asyncio.get_running_loop()
        if await self._sleep(max(deadline - loop.time(), 0.0)):
            return
        if handle._needs_resume and not handle.done and handle._resume_deadline == deadline:
            self._forget(handle)
            handle._fail(DisconnectedError(
                f"the connection was lost and the run could not be re-attached within {self.resume_timeout:g}s",
                ref=handle.ref))

    def _runs_lost(self, conn_id: int, closing: bool, err: Callable[[Optional[str]], SynapseError]) -> None:
        """Connection ``conn_id`` is gone. Runs keep going on the server
        (protocol section 9 "Runs"), so each run this client follows is
        re-attached on the next connection from the last seq it received;
        only closing the client (or resume_runs=False) ends them here. A
        run whose start frame was never written is not marked: its starter
        sends it again on the next connection."""
        for run in self._handles():
            if closing or not self.resume_runs or run.done:
                self._forget(run)
                run._fail(err(run.ref))
            elif run.run_id is not None or run._start_conn == conn_id:
                self._mark_resume(run)

    def _kick_resume(self, delay: float = 0.0) -> None:
        if self._ws is None or self._closed:
            return
        conn = self._conn_id
        task = self._resume_task
        if task is not None and not task.done() and self._resume_conn == conn:
            return  # that pass rescans until nothing is left
        self._resume_conn = conn
        self._resume_task = self._spawn(self._resume(conn, delay), "resume runs")

    async def _resume(self, conn_id: int, delay: float = 0.0) -> None:
        """Re-attaches, on connection ``conn_id``, every run marked by a lost
        connection (or a closed cortex channel).

        Contract: a run whose start was confirmed (it has a run_id) is
        attached with ``after_seq`` = the last seq its handle received, so the
        server sends exactly the events it missed, then live ones; the
        handle drops anything at or below last_seq, so the application sees
        each event once, in order. A run whose start frame went out but
        whose reply was lost is looked up by its ref in ``runs {}`` (SDK refs
        are unique per client) and attached from 0; if the server has no such
        run it never started, and the handle fails with DisconnectedError
        (it is not re-sent: it might have run). ``unknown_run`` (the server
        restarted, or the run expired) fails the handle with
        DisconnectedError too. Rate limits, timeouts and `unavailable` (a
        cluster node that cannot read Redis) are retried on this
        connection until the handle's resume deadline; a new connection
        starts its own pass. Runs on the event loop; the reader applies each
        attach reply before the backlog that follows it."""
        loop = asyncio.get_running_loop()
        if delay > 0 and await self._sleep(delay):
            return
        while True:
            if self._closed or self._ws is None or self._conn_id != conn_id:
                return
            todo = [h for h in self._handles() if h._needs_resume and not h.done]
            if not todo:
                return
            pause = 0.0
            try:
                await self._ensure_cortex(loop.time() + self.request_timeout)
                topic = self._cortex_topic
                assert topic is not None
                unconfirmed = [h for h in todo if h.run_id is None]
                if unconfirmed:
                    resp = await self._request(topic, "runs", {}, conn_id=conn_id)
                    items = resp.get("runs")
                    listed = [RunInfo.from_payload(r) for r in items if isinstance(r, dict)] \
                        if isinstance(items, list) else []
                    for h in unconfirmed:
                        match = next((r for r in listed if r.ref == h.ref and r.kind == h.kind), None)
                        if match is None:
                            self._forget(h)
                            h._fail(DisconnectedError(
                                "the connection was lost before the server confirmed the run, and the server "
                                "has no run under its ref: it never started", ref=h.ref))
                            continue
                        self._bind(h, match.run_id)
                        h._set_accepted({"ref": h.ref, "run_id": match.run_id})
                delays = await asyncio.gather(*(self._reattach(h, conn_id, topic) for h in todo
                                                if not h.done and h.run_id is not None))
                pause = max([d for d in delays if d is not None] or [0.0])
            except (DisconnectedError, ClientClosedError):
                return  # the next connection resumes them
            except RateLimitedError as e:
                pause = (e.retry_after_ms or 1000) / 1000.0
            except RequestTimeout:
                pause = 0.5
            except ReplyError as e:  # the cortex join (or runs) refused: nothing to attach to
                for h in todo:
                    self._forget(h)
                    h._fail(e)
                return
            if pause > 0 and await self._sleep(pause):
                return

    async def _reattach(self, handle: RunHandle[Any], conn_id: int, topic: str) -> Optional[float]:
        """One attach of ``handle`` from its last seq; returns a delay to wait
        before trying again when it should be retried, else None."""
        assert handle.run_id is not None
        fresh = handle.last_seq > 0 or handle._accepted.done()
        after = handle.last_seq if fresh else handle._attach_after
        payload: JSONObject = {"run_id": handle.run_id}
        if after is not None:
            payload["after_seq"] = after

        def on_reply(reply: JSONObject) -> None:
            if reply.get("status") != "ok" or self._conn_id != conn_id or handle.done:
                return
            resp = reply.get("response")
            resp = resp if isinstance(resp, dict) else {}
            handle._needs_resume = False
            handle._resume_deadline = None
            handle._start_conn = conn_id
            if handle._accepted.done():
                handle.resumes += 1
            if resp.get("truncated") is True:
                handle.truncated = True
                log.warning("run %s: events after seq %d are gone from the server's log; a snapshot stands in",
                            handle.run_id, handle.last_seq)
            if isinstance(resp.get("ref"), str) and not handle.ref:
                handle.ref = resp["ref"]
            handle._set_accepted(resp)

        try:
            await self._request(topic, "attach", payload, conn_id=conn_id, on_reply=on_reply)
            log.info("run %s re-attached after seq %s", handle.run_id, after)
            return None
        except RateLimitedError as e:
            return (e.retry_after_ms or 1000) / 1000.0
        except RequestTimeout:
            return 0.5
        except ReplyError as e:
            if e.reason in ("unavailable", "overloaded"):
                return (e.retry_after_ms or 1000) / 1000.0  # a cluster node that cannot read Redis now
            self._forget(handle)
            if e.reason == "unknown_run":
                handle._fail(DisconnectedError(
                    f"the connection was lost and the server no longer has run {handle.run_id} (unknown_run: it "
                    "restarted, or the run expired)", ref=handle.ref))
            else:
                handle._fail(e)
            return None
        except (DisconnectedError, ClientClosedError):
            return None

    def _on_sub(self, sub: _Sub, join_ref: Optional[str], event: str, payload: JSONObject) -> None:
        if event in ("phx_close", "phx_error"):
            if join_ref is not None and join_ref == sub.join_ref:
                log.warning("the server closed %s (%s); rejoining", sub.topic, event)
                if self._join_refs.get(sub.topic) == join_ref:
                    del self._join_refs[sub.topic]
                sub.join_ref = None
                sub.joined_conn = None
                sub.joined_evt.clear()
                if self._ws is not None:
                    self._spawn(self._join_sub(sub, self._conn_id, delay=1.0), f"rejoin {sub.topic}")
            return
        if event == "presence_state":
            sub.presence_state = sync_state(payload)
            sub.presence_ready.set()
            if sub.presence_listeners:
                sub.queue.put_nowait(_PresenceChange(copy.deepcopy(sub.presence_state)))
            return
        if event == "presence_diff":
            sync_diff(sub.presence_state, payload)
            if sub.presence_listeners:
                sub.queue.put_nowait(_PresenceChange(copy.deepcopy(sub.presence_state)))
            return
        if event == "phx_gap":
            # A cluster node could not deliver offsets from..to of `epoch`
            # (docs/protocol.md section 9); "to": null: the epoch ended there.
            lo, hi = payload.get("from"), payload.get("to")
            if payload.get("epoch") == sub.epoch and isinstance(lo, int) and not isinstance(lo, bool):
                log.warning("%s: the server reports offsets %d..%s of epoch %s lost", sub.topic, lo,
                            "end" if hi is None else hi, sub.epoch)
                if isinstance(hi, int) and not isinstance(hi, bool) and hi > sub.last_offset:
                    sub.stats["missed"] += sum(1 for o in range(max(lo, sub.last_offset + 1), hi + 1)
                                               if o not in sub.own)
                    sub.advance(hi)
            return
        if sub.resyncing:
            return  # the resync join recovers it, in order
        meta = payload.get("_meta")
        if isinstance(meta, dict):
            offset, epoch = meta.get("offset"), meta.get("epoch")
            if isinstance(offset, int) and not isinstance(offset, bool):
                if isinstance(epoch, str) and epoch != sub.epoch:
                    if sub.epoch is not None:
                        log.info("%s: history epoch changed to %s", sub.topic, epoch)
                    sub.reset_epoch(epoch, 0)
                elif offset <= sub.last_offset:
                    sub.stats["duplicates"] += 1
                    return
                elif offset in sub.own:
                    sub.stats["own"] += 1  # our own publish, replayed by a recover
                    sub.advance(offset)
                    return
                elif offset > sub.last_offset + 1:
                    sub.stats["missed"] += sum(1 for o in range(sub.last_offset + 1, offset) if o not in sub.own)
                sub.advance(offset)
        sub.stats["delivered"] += 1
        if sub.listeners:
            sub.queue.put_nowait(Message.from_push(sub.topic, event, payload))

    # ------------------------------------------------------------- callbacks
    def _spawn(self, aw: Awaitable[Any], name: str = "task") -> "asyncio.Task[Any]":
        task: "asyncio.Task[Any]" = asyncio.ensure_future(aw)
        self._tasks.add(task)

        def done(t: "asyncio.Task[Any]") -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("background %s failed: %r", name, t.exception())

        task.add_done_callback(done)
        return task

    def _callback(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            r = fn(*args)
            if inspect.isawaitable(r):
                self._spawn(r, "callback")
        except Exception:  # noqa: BLE001 - the application's callback
            log.exception("callback %r raised", fn)

    async def _dispatch(self, sub: _Sub) -> None:
        """Delivers a topic's messages to its callbacks, one at a time, in order."""
        while True:
            item = await sub.queue.get()
            if isinstance(item, Message):
                for cb in list(sub.listeners.values()):
                    try:
                        await call_maybe_async(cb, item)
                    except Exception:  # noqa: BLE001
                        log.exception("subscription callback for %s raised", sub.topic)
            else:
                for pcb in list(sub.presence_listeners.values()):
                    try:
                        await call_maybe_async(pcb, item.state)
                    except Exception:  # noqa: BLE001
                        log.exception("presence callback for %s raised", sub.topic)

    # ---------------------------------------------------------------- tokens
    async def _refresh_token(self, conn_id: int) -> None:
        try:
            if self._get_token is not None:
                token = await call_maybe_async(self._get_token)
                if not isinstance(token, str) or not token:
                    raise SynapseError("token_provider_failed", "get_token returned no token")
                await self._request(PHOENIX, "refresh", {"token": token}, conn_id=conn_id, join_ref=None)
                self._token = token
            elif self._token is not None:
                resp = await self._request(PHOENIX, "refresh", {}, conn_id=conn_id, join_ref=None)
                if isinstance(resp.get("token"), str):
                    self._token = resp["token"]
            else:
                return
            self.token_refreshes += 1
            log.info("token refreshed")
        except (DisconnectedError, ClientClosedError):
            pass
        except Exception as e:  # noqa: BLE001
            log.warning("token refresh failed: %s; the next connection uses a fresh token", e)

    # ----------------------------------------------------------------- agent
    async def _http(self, method: str, path: str, body: Optional[JSONObject] = None,
                    bearer: Optional[str] = None) -> Tuple[int, Any]:
        def call() -> Tuple[int, Any]:
            data = None if body is None else json.dumps(body).encode()
            req = urllib.request.Request(self.http_url + path, data=data, method=method)
            if data is not None:
                req.add_header("Content-Type", "application/json")
            if bearer:
                req.add_header("Authorization", f"Bearer {bearer}")
            try:
                with urllib.request.urlopen(req, timeout=self.request_timeout) as r:
                    status, raw = r.status, r.read()
            except urllib.error.HTTPError as e:
                status, raw = e.code, e.read()
            try:
                return status, json.loads(raw.decode("utf-8"))
            except (ValueError, UnicodeDecodeError):
                return status, raw.decode("utf-8", "replace")

        try:
            return await asyncio.to_thread(call)
        except OSError as e:
            raise ConnectError("http_failed", f"{method} {path}: {e}") from e

    @staticmethod
    def _http_error(status: int, body: Any) -> SynapseError:
        if isinstance(body, dict):
            return ReplyError(str(body.get("error") or f"http_{status}"),
                              body.get("reason") if isinstance(body.get("reason"), str) else None,
                              response=body)
        return ReplyError(f"http_{status}", str(body)[:200])

    async def _resolve_agent_id(self) -> str:
        if self._agent_id:
            return self._agent_id
        sub: Any = None
        if self._token is not None:
            sub = jwt_claims(self._token).get("sub")
        elif self._api_key is not None:
            status, body = await self._http("POST", "/api/token", {}, bearer=self._api_key)
            if status != 200 or not isinstance(body, dict) or not isinstance(body.get("token"), str):
                raise self._http_error(status, body)
            sub = jwt_claims(body["token"]).get("sub")
        if not isinstance(sub, str) or not sub:
            raise SynapseError("unknown_agent", "could not tell the agent id; pass agent_id=")
        self._agent_id = sub
        return sub

    # ---------------------------------------------------------------- cortex
    async def _join_cortex(self, conn_id: int) -> None:
        agent = await self._resolve_agent_id()
        topic = f"cortex:{agent}"
        self._cortex_topic = topic
        join_ref = self._next_ref()

        def on_send() -> None:
            self._join_refs[topic] = join_ref

        def on_reply(reply: JSONObject) -> None:
            if reply.get("status") == "ok" and self._conn_id == conn_id:
                self._cortex_conn = conn_id
                resp = reply.get("response")
                if isinstance(resp, dict) and isinstance(resp.get("session"), str):
                    self.session = resp["session"]

        await self._request(topic, "phx_join", {}, ref=join_ref, join_ref=join_ref, conn_id=conn_id,
                            on_send=on_send, on_reply=on_reply)

    async def _ensure_cortex(self, deadline: float) -> int:
        loop = asyncio.get_running_loop()
        while True:
            conn_id = await self._wait_connected(deadline)
            if self._cortex_conn == conn_id:
                return conn_id
            task = self._cortex_task
            if task is None or task.done() or self._cortex_task_conn != conn_id:
                task = self._spawn(self._join_cortex(conn_id), "cortex join")
                self._cortex_task, self._cortex_task_conn = task, conn_id
            try:
                await asyncio.wait_for(asyncio.shield(task), max(deadline - loop.time(), 0.001))
            except _NotSent:
                continue
            except asyncio.TimeoutError:
                raise RequestTimeout("the cortex channel join did not complete") from None
            except DisconnectedError:
                if loop.time() >= deadline:
                    raise
                continue

    async def _cortex_request(self, event: str, payload: JSONObject, *, timeout: Optional[float] = None,
                              on_send: Optional[Callable[[], None]] = None,
                              on_sent: Optional[Callable[[int], None]] = None,
                              on_reply: Optional[Callable[[JSONObject], None]] = None,
                              retry_ok: Optional[Callable[[], bool]] = None) -> JSONObject:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.request_timeout if timeout is None else timeout)
        while True:
            conn_id = await self._ensure_cortex(deadline)
            assert self._cortex_topic is not None
            try:
                return await self._request(self._cortex_topic, event, payload, conn_id=conn_id,
                                           timeout=max(deadline - loop.time(), 0.001),
                                           on_send=on_send, on_sent=on_sent, on_reply=on_reply)
            except _NotSent:
                if retry_ok is not None and not retry_ok():
                    raise
                continue

    def _new_run_ref(self) -> str:
        return f"{self._run_prefix}-{next(self._run_refs)}"

    async def _start_run(self, handle: RunHandle[Any], event: str, payload: JSONObject) -> None:
        ref = handle.ref
        try:
            if ref in self._runs:
                raise ReplyError("duplicate_ref", "a run with this ref is running on this client", ref=ref)

            def on_send() -> None:
                self._runs[ref] = handle

            def on_sent(conn_id: int) -> None:
                handle._start_conn = conn_id

            def on_reply(reply: JSONObject) -> None:
                if reply.get("status") == "ok":
                    resp = reply.get("response")
                    resp = resp if isinstance(resp, dict) else {}
                    if isinstance(resp.get("run_id"), str):
                        self._bind(handle, resp["run_id"])
                    handle._set_accepted(resp)
                elif self._runs.get(ref) is handle:
                    del self._runs[ref]

            await self._cortex_request(event, payload, on_send=on_send, on_sent=on_sent, on_reply=on_reply,
                                       retry_ok=lambda: not handle.done)
        except DisconnectedError as e:
            self._lost_start(handle, e)
        except SynapseError as e:
            self._forget(handle)
            if e.ref is None:
                e.ref = ref
            handle._fail(e)
        except Exception as e:  # noqa: BLE001 - e.g. a payload json cannot encode
            self._forget(handle)
            handle._fail(SynapseError("invalid_payload", f"{type(e).__name__}: {e}", ref=ref))

    def _lost_start(self, handle: RunHandle[Any], e: DisconnectedError) -> None:
        """The start (or attach) frame of ``handle`` went out and its reply
        was lost with the connection: the resume pass finds out what became of it."""
        if handle.done:
            return
        if self.resume_runs and not self._closed and handle._start_conn is not None \
                and not isinstance(e, _NotSent):
            self._mark_resume(handle)
            self._kick_resume()
            return
        self._forget(handle)
        if e.ref is None:
            e.ref = handle.ref
        handle._fail(e)

    async def _start_attach(self, handle: AttachedRun, payload: JSONObject) -> None:
        def on_sent(conn_id: int) -> None:
            handle._start_conn = conn_id

        def on_reply(reply: JSONObject) -> None:
            if reply.get("status") != "ok":
                return
            resp = reply.get("response")
            resp = resp if isinstance(resp, dict) else {}
            if isinstance(resp.get("ref"), str):
                handle.ref = resp["ref"]
            if resp.get("truncated") is True:
                handle.truncated = True
            handle._set_accepted(resp)

        try:
            await self._cortex_request("attach", payload, on_sent=on_sent, on_reply=on_reply,
                                       retry_ok=lambda: not handle.done)
        except DisconnectedError as e:
            self._lost_start(handle, e)
        except SynapseError as e:
            self._forget(handle)
            handle._fail(e)

    # ------------------------------------------------------------ public API
    def query(self, q: str, limit: Optional[int] = None, timeout_ms: Optional[int] = None, *,
              ref: Optional[str] = None) -> QueryHandle:
        """Starts a query; returns its handle at once (iterate it for thoughts,
        ``await handle.result()`` for the result)."""
        if not isinstance(q, str):
            raise TypeError("q must be a string")
        handle = QueryHandle(self, ref or self._new_run_ref())
        payload: JSONObject = {"q": q, "ref": handle.ref}
        if limit is not None:
            payload["limit"] = limit
        if timeout_ms is not None:
            payload["timeout_ms"] = timeout_ms
        handle._starter = self._spawn(self._start_run(handle, "query", payload), f"query {handle.ref}")
        return handle

    def tool(self, name: str, args: Optional[Mapping[str, Any]] = None,
             on_progress: Optional[ProgressCallback] = None, *, timeout_ms: Optional[int] = None,
             ref: Optional[str] = None) -> ToolHandle:
        """Starts a tool; returns its handle at once (iterate it for progress,
        ``await handle.result()`` for the result)."""
        if not isinstance(name, str):
            raise TypeError("name must be a string")
        handle = ToolHandle(self, ref or self._new_run_ref(), on_progress)
        payload: JSONObject = {"tool": name, "args": dict(args or {}), "ref": handle.ref}
        if timeout_ms is not None:
            payload["timeout_ms"] = timeout_ms
        handle._starter = self._spawn(self._start_run(handle, "tool", payload), f"tool {handle.ref}")
        return handle

    async def interrupt(self, ref: Optional[str] = None, reason: Optional[str] = None, *,
                        run_id: Optional[str] = None) -> JSONObject:
        """Interrupts the run ``ref`` (among the runs this connection follows)
        or ``run_id`` (any run of this agent, from any device); raises
        :class:`ReplyError` ``not_found`` if nothing runs under it. The reply
        carries ``ref`` and ``run_id``; the run's terminal ``interrupted``
        reaches every client following it."""
        if (ref is None) == (run_id is None):
            raise ValueError("pass ref or run_id")
        payload: JSONObject = {"ref": ref} if ref is not None else {"run_id": run_id}
        if reason is not None:
            payload["reason"] = reason
        return await self._cortex_request("interrupt", payload)

    def attach(self, run_id: str, after_seq: Optional[int] = None) -> AttachedRun:
        """Follows the run ``run_id`` of this agent (one started by another
        device, or by an earlier process of this one); returns its handle at
        once. With ``after_seq`` the handle gets exactly the events after it,
        then the live ones. Without it (a late device) the first item is a
        :class:`Snapshot`, the run so far in compacted form (all token deltas
        folded into ``text``, the thoughts, the last progress), then the
        events after the snapshot's seq; ``handle.text`` starts from the
        snapshot's text. ``after_seq=0`` replays the whole log instead. An
        ended run still kept gives its events (or snapshot) and its terminal.
        Refused with :class:`ReplyError` ``unknown_run`` (unknown or expired)
        or ``forbidden`` (another agent's or tenant's run). The handle is
        resumed across reconnects like the runs this client starts. A run
        this client already follows returns its existing handle."""
        if not isinstance(run_id, str) or not run_id:
            raise TypeError("run_id must be a non-empty string")
        if after_seq is not None and (not isinstance(after_seq, int) or isinstance(after_seq, bool) or after_seq < 0):
            raise ValueError("after_seq must be a non-negative integer")
        existing = self._by_id.get(run_id)
        if existing is not None and not existing.done:
            return existing  # type: ignore[return-value]
        handle = AttachedRun(self, "")
        handle._attach_after = after_seq
        self._bind(handle, run_id)  # the backlog right after the reply routes by run_id
        payload: JSONObject = {"run_id": run_id}
        if after_seq is not None:
            payload["after_seq"] = after_seq
        handle._starter = self._spawn(self._start_attach(handle, payload), f"attach {run_id}")
        return handle

    async def runs(self) -> List[RunInfo]:
        """This agent's active and recent runs on the server (newest first):
        ``RunInfo(run_id, ref, kind, status, started_at, ended_at, last_seq,
        attached, tool)``."""
        resp = await self._cortex_request("runs", {})
        items = resp.get("runs")
        return [RunInfo.from_payload(r) for r in items if isinstance(r, dict)] if isinstance(items, list) else []

    async def tools(self) -> List[ToolInfo]:
        """The server's tools."""
        resp = await self._cortex_request("tools", {})
        items = resp.get("tools")
        return [ToolInfo.from_payload(t) for t in items if isinstance(t, dict)] if isinstance(items, list) else []

    async def ping(self) -> int:
        """Round trip on the cortex channel; returns the server's clock (unix ms)."""
        resp = await self._cortex_request("ping", {})
        pong = resp.get("pong")
        return pong if isinstance(pong, int) else 0

    # --------------------------------------------------------------- pub/sub
    @staticmethod
    def _check_topic(topic: str) -> None:
        if not isinstance(topic, str) or ":" not in topic:
            raise ValueError(f"pub/sub topics are namespace:name, got {topic!r}")
        if topic == PHOENIX or topic.startswith("cortex:"):
            raise ValueError(f"{topic!r} is not a pub/sub topic")

    def _get_sub(self, topic: str, meta: Optional[JSONObject], presence: bool) -> Tuple[_Sub, bool]:
        sub = self._subs.get(topic)
        if sub is not None:
            return sub, False
        sub = _Sub(topic, meta, presence)
        self._subs[topic] = sub
        if self._ws is not None:
            self._spawn(self._join_sub(sub, self._conn_id), f"join {topic}")
        return sub, True

    def _drop_sub(self, sub: _Sub) -> None:
        if self._subs.get(sub.topic) is sub:
            del self._subs[sub.topic]
        if sub.worker is not None:
            sub.worker.cancel()
            sub.worker = None

    def _apply_join_reply(self, sub: _Sub, join_ref: str, conn_id: int, recover_sent: bool, resync: bool,
                          reply: JSONObject) -> None:
        """Runs in the reader, before any push that follows the reply."""
        if self._subs.get(sub.topic) is not sub or sub.join_ref != join_ref or self._conn_id != conn_id:
            return
        if reply.get("status") != "ok":
            sub.join_ref = None
            if self._join_refs.get(sub.topic) == join_ref:
                del self._join_refs[sub.topic]
            return
        resp = reply.get("response")
        resp = resp if isinstance(resp, dict) else {}
        sub.last_join = dict(resp)
        sub.stats["joins"] += 1
        epoch = resp.get("epoch") if isinstance(resp.get("epoch"), str) else None
        offset = resp.get("offset")
        offset = offset if isinstance(offset, int) and not isinstance(offset, bool) else None
        sub.joined_conn = conn_id
        sub.joined_evt.set()
        sub.error = None
        if resync:
            sub.resyncing = False
            sub.stats["recovered" if resp.get("recovered") is True else "not_recovered"] += 1
        elif not recover_sent:
            # First join: the topic's latest offset is where this subscriber starts.
            if sub.epoch is None or sub.epoch != epoch:
                sub.reset_epoch(epoch, offset or 0)
            elif offset is not None and offset > sub.last_offset:
                sub.advance(offset)
        elif resp.get("recovered") is True:
            sub.stats["recovered"] += 1  # the missed messages follow this reply
        elif epoch is not None and epoch == sub.epoch:
            sub.stats["not_recovered"] += 1
            log.warning("%s: messages after offset %d are no longer in the server's history; some are lost",
                        sub.topic, sub.last_offset)
        else:
            # The topic's history was lost (server restart): a new epoch. Fetch
            # what the new epoch already holds with a second join from offset 0.
            sub.stats["not_recovered"] += 1
            log.info("%s: new history epoch %s (was %s)", sub.topic, epoch, sub.epoch)
            sub.reset_epoch(epoch, 0)
            if offset and epoch is not None:
                sub.resyncing = True
                sub.stats["resyncs"] += 1
                self._spawn(self._join_sub(sub, conn_id, resync=True), f"resync {sub.topic}")
        if not sub.first_join.done():
            sub.first_join.set_result(dict(resp))

    async def _join_once(self, sub: _Sub, conn_id: int, resync: bool = False) -> JSONObject:
        payload = sub.join_payload(resync)
        recover_sent = "recover" in payload
        join_ref = self._next_ref()

        def on_send() -> None:
            sub.join_ref = join_ref
            self._join_refs[sub.topic] = join_ref

        def on_reply(reply: JSONObject) -> None:
            self._apply_join_reply(sub, join_ref, conn_id, recover_sent, resync, reply)

        return await self._request(sub.topic, "phx_join", payload, ref=join_ref, join_ref=join_ref,
                                   conn_id=conn_id, on_send=on_send, on_reply=on_reply)

    async def _join_sub(self, sub: _Sub, conn_id: int, resync: bool = False, delay: float = 0.0) -> None:
        """Joins (or rejoins) a topic on connection ``conn_id``, retrying
        rate limits and timeouts while that connection lasts."""
        attempt = 0
        while True:
            if delay > 0 and await self._sleep(delay):
                return
            if self._subs.get(sub.topic) is not sub or self._conn_id != conn_id or self._ws is None:
                if resync:
                    sub.resyncing = False
                return
            try:
                await self._join_once(sub, conn_id, resync)
                return
            except RateLimitedError as e:
                delay = (e.retry_after_ms or 1000) / 1000.0
            except RequestTimeout:
                delay = full_jitter(attempt, 1.0, 10.0)
                attempt += 1
            except ReplyError as e:
                sub.error = e
                if resync:
                    sub.resyncing = False
                log.warning("joining %s failed: %s", sub.topic, e)
                if not sub.first_join.done():
                    sub.first_join.set_exception(e)
                return
            except (DisconnectedError, ClientClosedError):
                return  # the next connection joins it again
            except SynapseError as e:
                if not sub.first_join.done():
                    sub.first_join.set_exception(e)
                return

    def _call_deadline(self, loop: asyncio.AbstractEventLoop, timeout: Optional[float]) -> float:
        """Checks the client can take a call now and returns its deadline."""
        if self._closed:
            raise self._fatal or ClientClosedError()
        if self._main_task is None:
            raise ConnectError("not_connected", "call connect() first")
        return loop.time() + (self.request_timeout if timeout is None else timeout)

    async def subscribe(self, topic: str, callback: MessageCallback, meta: Optional[JSONObject] = None,
                        presence: bool = False, *, on_presence: Optional[PresenceCallback] = None,
                        timeout: Optional[float] = None) -> Subscription:
        """Joins ``topic`` and calls ``callback(message)`` (plain or async) for
        every message other members publish, in order, exactly once, across
        reconnects. ``meta`` is this member's presence meta; ``presence=True``
        tracks the topic's presence (see :meth:`presence`; ``on_presence(state)``
        sees each change). Returns an async callable that unsubscribes.

        Several subscriptions to one topic share one join; the first one's
        ``meta``/``presence`` are used (a later ``presence=True`` or new
        ``meta`` rejoins the topic, losing nothing)."""
        self._check_topic(topic)
        if not callable(callback):
            raise TypeError("callback must be callable")
        if meta is not None and not isinstance(meta, dict):
            raise TypeError("meta must be a dict")
        loop = asyncio.get_running_loop()
        deadline = self._call_deadline(loop, timeout)
        sub, created = self._get_sub(topic, meta, presence)
        token = next(self._listener_ids)
        sub.listeners[token] = callback
        if on_presence is not None:
            sub.presence_listeners[token] = on_presence
        if sub.worker is None:
            sub.worker = self._spawn(self._dispatch(sub), f"dispatch {topic}")
        try:
            await asyncio.wait_for(asyncio.shield(sub.first_join), max(deadline - loop.time(), 0.001))
            changed = False
            if presence and not sub.presence:
                sub.presence, changed = True, True
            if meta is not None and meta != sub.meta and not created:
                sub.meta, changed = meta, True
            if changed:
                while True:
                    conn_id = await self._wait_connected(deadline)
                    try:
                        await self._join_once(sub, conn_id)
                        break
                    except _NotSent:
                        continue
        except BaseException as e:
            sub.listeners.pop(token, None)
            sub.presence_listeners.pop(token, None)
            if not sub.has_listeners and (created or sub.first_join.done() and sub.first_join.exception()):
                self._drop_sub(sub)
            if isinstance(e, asyncio.TimeoutError):
                raise RequestTimeout(f"joining {topic} did not complete") from None
            raise
        return Subscription(self, sub, token)

    async def _unsubscribe(self, sub: _Sub, token: int) -> None:
        removed = sub.listeners.pop(token, None) is not None
        sub.presence_listeners.pop(token, None)
        if not removed or sub.has_listeners or self._subs.get(sub.topic) is not sub:
            return
        self._drop_sub(sub)
        while not sub.queue.empty():
            sub.queue.get_nowait()
        join_ref, sub.join_ref = sub.join_ref, None
        if join_ref is None or self._ws is None or self._closed:
            return
        try:
            await self._request(sub.topic, "phx_leave", {}, join_ref=join_ref, conn_id=self._conn_id)
        except SynapseError as e:
            log.debug("leaving %s: %s", sub.topic, e)
        finally:
            if self._join_refs.get(sub.topic) == join_ref:
                del self._join_refs[sub.topic]

    async def publish(self, topic: str, event: str, payload: Optional[Mapping[str, Any]] = None, *,
                      timeout: Optional[float] = None) -> int:
        """Publishes ``event`` with ``payload`` to ``topic``; returns its offset
        (0 when a cluster node without Redis delivered it to its own members
        only: such messages arrive with ``offset`` None). A topic this client
        has not subscribed to is joined first (and stays joined, without a
        callback, until :meth:`close`)."""
        self._check_topic(topic)
        if not isinstance(event, str) or not event:
            raise ValueError("event must be a non-empty string")
        body: JSONObject = dict(payload or {})
        loop = asyncio.get_running_loop()
        deadline = self._call_deadline(loop, timeout)
        while True:
            sub, created = self._get_sub(topic, None, False)
            conn_id = await self._wait_joined(sub, deadline, drop_on_error=created)

            def on_reply(reply: JSONObject, sub: _Sub = sub) -> None:
                resp = reply.get("response")
                off = resp.get("offset") if isinstance(resp, dict) else None
                if reply.get("status") == "ok" and isinstance(off, int) and self._subs.get(topic) is sub:
                    sub.published(off)

            try:
                resp = await self._request(topic, event, body, conn_id=conn_id,
                                           timeout=max(deadline - loop.time(), 0.001), on_reply=on_reply)
            except _NotSent:
                continue
            offset = resp.get("offset")
            return offset if isinstance(offset, int) else -1

    async def _wait_joined(self, sub: _Sub, deadline: float, drop_on_error: bool) -> int:
        loop = asyncio.get_running_loop()
        while True:
            if sub.first_join.done() and sub.first_join.exception() is not None:
                exc = sub.first_join.exception()
                if drop_on_error and not sub.has_listeners:
                    self._drop_sub(sub)
                assert isinstance(exc, BaseException)
                raise exc
            if sub.error is not None and sub.joined_conn is None:
                raise sub.error
            conn_id = await self._wait_connected(deadline)
            if sub.joined_conn == conn_id:
                return conn_id
            left = deadline - loop.time()
            if left <= 0:
                raise RequestTimeout(f"{sub.topic} is not joined")
            waiter = asyncio.ensure_future(sub.joined_evt.wait())
            watched: List["asyncio.Future[Any]"] = [waiter]
            if not sub.first_join.done():
                watched.append(sub.first_join)
            try:
                await asyncio.wait(watched, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()

    async def presence(self, topic: str, *, timeout: Optional[float] = None) -> PresenceState:
        """The topic's presence, ``{agent_id: {"metas": [...]}}``: tracked live
        when subscribed with ``presence=True``, else fetched with
        ``GET /api/presence/<topic>`` (API keys only). The server coalesces
        presence changes (``presence_interval``, 100 ms by default), so a change
        shows up here that much later."""
        self._check_topic(topic)
        sub = self._subs.get(topic)
        if sub is not None and sub.presence:
            try:
                await asyncio.wait_for(sub.presence_ready.wait(),
                                       self.request_timeout if timeout is None else timeout)
                return copy.deepcopy(sub.presence_state)
            except asyncio.TimeoutError:
                if self._api_key is None:
                    raise RequestTimeout(f"no presence state for {topic}") from None
        if self._api_key is None:
            raise SynapseError("presence_unavailable",
                               "subscribe with presence=True to track presence (the HTTP API needs an API key)")
        status, body = await self._http("GET", "/api/presence/" + quote(topic, safe=":@"), bearer=self._api_key)
        if status != 200 or not isinstance(body, dict):
            raise self._http_error(status, body)
        state = body.get("presence")
        return sync_state(state) if isinstance(state, dict) else {}


__all__ = ["MimoSynapse", "Subscription", "ChannelHooks", "TokenProvider", "MessageCallback", "PresenceCallback"]
