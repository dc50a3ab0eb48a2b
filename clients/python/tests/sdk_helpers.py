"""Helpers for the SDK tests: polling waits, a TCP proxy that can sever,
refuse or black-hole connections, a frame recorder."""
from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any, Awaitable, Callable, List, Optional, Set, Tuple

from mimo_synapse import MimoSynapse

REPO = Path(__file__).resolve().parents[3]


def unique(prefix: str) -> str:
    """A name no other test (or earlier run against the same server) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def eventually(pred: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02,
                     what: str = "condition") -> Any:
    """Polls ``pred`` until it is truthy; fails the test after ``timeout`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        v = pred()
        if v:
            return v
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


class Recorder:
    """A ``trace=`` callback keeping every frame with a timestamp."""

    def __init__(self) -> None:
        self.frames: List[Tuple[float, str, list]] = []

    def __call__(self, direction: str, frame: list) -> None:
        self.frames.append((time.monotonic(), direction, frame))

    def received(self, pred: Callable[[list], bool] = lambda f: True) -> List[list]:
        return [f for _, d, f in self.frames if d == "recv" and pred(f)]

    def index(self, pred: Callable[[list], bool]) -> int:
        for i, (_, d, f) in enumerate(self.frames):
            if d == "recv" and pred(f):
                return i
        raise AssertionError("no such frame")


class _Link:
    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream = upstream
        self.blackhole = False
        self.hold_down = False

    def abort(self) -> None:
        self.client.transport.abort()
        self.upstream.transport.abort()


class TcpProxy:
    """127.0.0.1 TCP proxy in front of the server.

    * ``sever()`` aborts every open connection (both sides, RST);
    * ``accepting = False`` aborts new connections at once (the server looks down);
    * ``blackhole_open()`` silently drops all bytes of the connections open now;
    * ``hold_down_open()`` drops their server -> client bytes only.
    New connections are never affected by the last two.
    ``requests`` keeps the start of each client's upgrade request."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.accepting = True
        self.port = 0
        self.accepted = 0
        self.requests: List[bytes] = []
        self._links: Set[_Link] = set()
        self._server: Optional[asyncio.base_events.Server] = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/cortex/websocket"

    async def start(self) -> "TcpProxy":
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        if not self.accepting:
            cw.transport.abort()
            return
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            cw.transport.abort()
            return
        link = _Link(cw, uw)
        self._links.add(link)
        self.accepted += 1
        head = bytearray()
        self.requests.append(b"")
        slot = len(self.requests) - 1

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter, upstream: bool) -> None:
            try:
                while True:
                    data = await r.read(65536)
                    if not data:
                        break
                    if upstream and b"\r\n\r\n" not in head and len(head) < 16384:
                        head.extend(data)
                        self.requests[slot] = bytes(head)
                    if link.blackhole or (link.hold_down and not upstream):
                        continue
                    w.write(data)
                    await w.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                link.abort()

        try:
            await asyncio.gather(pipe(cr, uw, True), pipe(ur, cw, False))
        finally:
            self._links.discard(link)

    def sever(self) -> int:
        links = list(self._links)
        for link in links:
            link.abort()
        return len(links)

    def blackhole_open(self) -> int:
        for link in self._links:
            link.blackhole = True
        return len(self._links)

    def hold_down_open(self) -> int:
        for link in self._links:
            link.hold_down = True
        return len(self._links)

    async def close(self) -> None:
        self.accepting = False
        self.sever()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def bearer_of(self, index: int) -> Optional[str]:
        """The Authorization bearer of the index-th upgrade request."""
        for line in self.requests[index].split(b"\r\n"):
            if line.lower().startswith(b"authorization: bearer "):
                return line.split(b" ", 2)[2].decode()
        return None


async def connected(client: MimoSynapse, count: int, timeout: float = 10.0) -> float:
    """Waits until the client opened its ``count``-th connection; returns the
    seconds it took."""
    start = time.monotonic()
    await eventually(lambda: client.connection_count >= count and client.connected, timeout,
                     what=f"connection #{count}")
    return time.monotonic() - start


async def gather_bounded(*aws: Awaitable[Any], timeout: float = 30.0) -> List[Any]:
    return list(await asyncio.wait_for(asyncio.gather(*aws), timeout))
