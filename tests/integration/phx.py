"""A small Phoenix Channels V2 client for tests: raw frames over a real
WebSocket (python3-websockets), with helpers to wait for replies and pushes.
Frames that arrive while a test waits for something else are kept, in order,
so nothing is lost between expectations."""
from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any, Callable, Optional

import websockets

Frame = list  # [join_ref, ref, topic, event, payload]


class PhxClient:
    def __init__(self, ws):
        self.ws = ws
        self._refs = itertools.count(1)
        self.join_refs: dict[str, str] = {}
        self.buffer: list[Frame] = []
        self.close_code: Optional[int] = None

    @classmethod
    async def connect(cls, url: str, **kw) -> "PhxClient":
        kw.setdefault("ping_interval", None)
        kw.setdefault("max_size", None)
        # Tests often leave replies unread; an unbounded client queue keeps
        # the socket reading so the server never sees a stalled peer.
        kw.setdefault("max_queue", None)
        kw.setdefault("open_timeout", 10)
        ws = await websockets.connect(url, **kw)
        return cls(ws)

    def next_ref(self) -> str:
        return str(next(self._refs))

    async def send_raw(self, data) -> None:
        await self.ws.send(data)

    async def send(self, topic: str, event: str, payload: Any = None, ref: Optional[str] = "auto",
                   join_ref: Optional[str] = "auto") -> Optional[str]:
        if ref == "auto":
            ref = self.next_ref()
        if join_ref == "auto":
            join_ref = self.join_refs.get(topic)
        await self.ws.send(json.dumps([join_ref, ref, topic, event, {} if payload is None else payload]))
        return ref

    async def _next(self, timeout: float) -> Frame:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        return json.loads(raw)

    async def expect(self, pred: Callable[[Frame], bool], timeout: float = 5.0, what: str = "frame") -> Frame:
        """The first frame (buffered or new) matching `pred`; others stay buffered."""
        for i, f in enumerate(self.buffer):
            if pred(f):
                return self.buffer.pop(i)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what}; buffered: {self.buffer[-5:]}")
            try:
                f = await self._next(left)
            except asyncio.TimeoutError:
                raise AssertionError(f"timed out waiting for {what}; buffered: {self.buffer[-5:]}") from None
            if pred(f):
                return f
            self.buffer.append(f)

    async def reply(self, ref: str, timeout: float = 5.0) -> dict:
        """The phx_reply payload {status, response} for `ref`."""
        f = await self.expect(lambda f: f[3] == "phx_reply" and f[1] == ref, timeout, f"reply to ref {ref}")
        return f[4]

    async def request(self, topic: str, event: str, payload: Any = None, timeout: float = 5.0) -> dict:
        ref = await self.send(topic, event, payload)
        return await self.reply(ref, timeout)

    async def join(self, topic: str, payload: Any = None, timeout: float = 5.0) -> dict:
        ref = self.next_ref()
        self.join_refs[topic] = ref
        await self.send(topic, "phx_join", payload, ref=ref, join_ref=ref)
        return await self.reply(ref, timeout)

    async def push_event(self, topic: str, event: str, timeout: float = 5.0, pred=None) -> Frame:
        """A server push (ref null) of `event` on `topic`."""
        return await self.expect(lambda f: f[2] == topic and f[3] == event and f[1] is None and (pred is None or pred(f)),
                                 timeout, f"{event} on {topic}")

    async def heartbeat(self) -> dict:
        return await self.request("phoenix", "heartbeat", {})

    async def drain(self, quiet: float = 0.2) -> list[Frame]:
        """Everything that arrives until `quiet` seconds pass with nothing."""
        out, self.buffer = self.buffer, []
        while True:
            try:
                out.append(await self._next(quiet))
            except asyncio.TimeoutError:
                return out

    async def wait_closed(self, timeout: float = 5.0) -> int:
        """Reads until the server closes; returns the close code."""
        try:
            while True:
                self.buffer.append(await self._next(timeout))
        except websockets.ConnectionClosed as e:
            self.close_code = e.rcvd.code if e.rcvd else 1006
            return self.close_code

    async def close(self) -> None:
        await self.ws.close()


def ok(reply: dict) -> dict:
    assert reply["status"] == "ok", reply
    return reply["response"]


def error(reply: dict, reason: str) -> dict:
    assert reply["status"] == "error", reply
    assert reply["response"]["reason"] == reason, reply
    return reply["response"]
