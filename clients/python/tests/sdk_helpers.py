"""Helpers for the SDK tests: polling waits, a TCP proxy that can sever,
refuse or black-hole connections, a frame recorder."""
from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable, List, Optional, Set, Tuple

from mimo_synapse import MimoSynapse


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


class TcpProxy:
    """127.0.0.1 TCP proxy in front of the server.

    * ``sever()`` aborts every open connection (both sides, RST);
    * ``accepting = False`` aborts new connections at once (the server looks down);
    * ``blackhole = True`` silently drops bytes in both directions;
    * ``hold_down = True`` drops server -> client bytes only.
    ``requests`` keeps the start of each client's upgrade request."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.accepting = True
        self.blackhole = False
        self.hold_down = False
        self.port = 0
        self.accepted = 0
        self.requests: List[bytes] = []
        self._conns: Set[Tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
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
        pair = (cw, uw)
        self._conns.add(pair)
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
                    if self.blackhole or (self.hold_down and not upstream):
                        continue
                    w.write(data)
                    await w.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                cw.transport.abort()
                uw.transport.abort()

        try:
            await asyncio.gather(pipe(cr, uw, True), pipe(ur, cw, False))
        finally:
            self._conns.discard(pair)

    def sever(self) -> int:
        n = 0
        for cw, uw in list(self._conns):
            cw.transport.abort()
            uw.transport.abort()
            n += 1
        return n

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
