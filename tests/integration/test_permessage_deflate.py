"""permessage-deflate (RFC 7692, issue 16 item 4) through the real binary:
off by default, negotiated when enabled and offered (server_no_context_takeover
and client_no_context_takeover answered), large messages round-trip, fan-out
to many compressed and plain subscribers is exact, frames under the threshold
go uncompressed, a compression bomb closes with 1009 and RSV1 without the
extension with 1002. websockets 10.4 is the client (compression="deflate");
raw sockets check the bits on the wire."""
import asyncio
import json
import os
import struct
import zlib

import pytest
import websockets

from phx import PhxClient, ok
from rawws import client_frame, http_upgrade

ON = {"--permessage-deflate": "true"}
ANSWER = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"


def big_text(n: int, seed: int = 0) -> str:
    words = ["agent", "query", "memory", "result", "thought", "token", "room", "lobby", str(seed)]
    out, i, size = [], 0, 0
    while size < n:
        w = words[(i * 7 + seed) % len(words)] + str(i % 97)
        out.append(w)
        size += len(w) + 1
        i += 1
    return " ".join(out)[:n]


def extension_header(ws) -> str:
    return ws.response_headers.get("Sec-WebSocket-Extensions", "")


class RawFrames:
    """Server frames from a raw socket with their first header byte (FIN,
    RSV1..3, opcode) and payload, inflating RSV1 ones like a client would."""

    def __init__(self, sock, buf=b""):
        self.sock, self.buf = sock, buf

    def next(self, timeout=5.0):
        self.sock.settimeout(timeout)
        while True:
            if len(self.buf) >= 2:
                n, off = self.buf[1] & 0x7F, 2
                if n == 126 and len(self.buf) >= 4:
                    n, off = struct.unpack("!H", self.buf[2:4])[0], 4
                elif n == 127 and len(self.buf) >= 10:
                    n, off = struct.unpack("!Q", self.buf[2:10])[0], 10
                if n < 126 or off > 2:
                    if len(self.buf) >= off + n:
                        b0, payload = self.buf[0], self.buf[off:off + n]
                        self.buf = self.buf[off + n:]
                        text = payload
                        if b0 & 0x40:
                            text = zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")
                        return b0, payload, text
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk

    def until_event(self, event, timeout=5.0):
        while True:
            f = self.next(timeout)
            assert f is not None, f"closed before {event}"
            b0, _, text = f
            if b0 & 0x0F == 1 and json.loads(text)[3] == event:
                return f


def raw_join(s, topic, offer="permessage-deflate; client_max_window_bits"):
    status, hdrs, rest, sock = http_upgrade(s.port, f"/cortex/websocket?vsn=2.0.0&api_key={s.admin_key}",
                                            {"Sec-WebSocket-Extensions": offer} if offer else None)
    assert status == 101
    sock.sendall(client_frame(1, json.dumps(["1", "1", topic, "phx_join", {}]).encode()))
    frames = RawFrames(sock, rest)
    frames.until_event("phx_reply")
    return hdrs, sock, frames


@pytest.mark.asyncio
async def test_off_by_default_even_when_offered(fresh_server):
    s = fresh_server()
    async with websockets.connect(s.ws(), compression="deflate") as ws:
        assert extension_header(ws) == ""
        assert ws.extensions == []


@pytest.mark.asyncio
async def test_negotiated_when_enabled_and_offered_only(fresh_server):
    s = fresh_server(ON)
    async with websockets.connect(s.ws(), compression="deflate") as ws:
        assert extension_header(ws) == ANSWER
        [ext] = ws.extensions
        assert ext.name == "permessage-deflate"
        assert ext.remote_no_context_takeover and ext.local_no_context_takeover
    async with websockets.connect(s.ws(), compression=None) as ws:
        assert extension_header(ws) == ""
    # An offer the server cannot honour is declined, the next one accepted.
    hdrs, sock, _ = raw_join(s, "room:x", "permessage-deflate; server_max_window_bits=9, permessage-deflate")
    assert hdrs["sec-websocket-extensions"] == ANSWER
    sock.close()
    hdrs, sock, _ = raw_join(s, "room:x", "permessage-deflate; server_max_window_bits=9")
    assert "sec-websocket-extensions" not in hdrs
    sock.close()


@pytest.mark.asyncio
async def test_large_messages_round_trip_both_ways(fresh_server):
    s = fresh_server(ON)
    pub = await PhxClient.connect(s.ws(), compression="deflate")
    sub = await PhxClient.connect(s.ws(), compression="deflate")
    for c in (pub, sub):
        ok(await c.join("room:big"))
    texts = [big_text(n, i) for i, n in enumerate([2000, 60_000, 500_000])]
    for t in texts:
        ok(await pub.request("room:big", "doc", {"text": t}, timeout=10))
    for t in texts:
        f = await sub.push_event("room:big", "doc", timeout=10)
        assert f[4]["text"] == t
    await pub.close()
    await sub.close()


@pytest.mark.asyncio
async def test_fan_out_to_many_compressed_and_plain_subscribers_is_exact(fresh_server):
    s = fresh_server(ON)
    zipped = [await PhxClient.connect(s.ws(), compression="deflate") for _ in range(40)]
    plain = [await PhxClient.connect(s.ws(), compression=None) for _ in range(10)]
    subs = zipped + plain
    await asyncio.gather(*[c.join("room:wide") for c in subs])
    pub = await PhxClient.connect(s.ws(), compression="deflate")
    ok(await pub.join("room:wide"))
    sent = [big_text(3000 + 100 * i, i) for i in range(30)]
    for i, t in enumerate(sent):
        await pub.send("room:wide", "note", {"i": i, "text": t})

    async def collect(c):
        return [await c.push_event("room:wide", "note", timeout=15) for _ in sent]

    for got in await asyncio.gather(*[collect(c) for c in subs]):
        assert [f[4]["i"] for f in got] == list(range(len(sent)))  # none lost, duplicated or reordered
        assert [f[4]["text"] for f in got] == sent
    for c in subs + [pub]:
        await c.close()


def test_frames_under_the_threshold_go_uncompressed(fresh_server):
    s = fresh_server({**ON, "--deflate-threshold-bytes": "1500"})
    _, sock, frames = raw_join(s, "room:t")
    _, psock, pframes = raw_join(s, "room:t", offer=None)
    for i, n in enumerate([200, 1400, 1600, 40_000]):
        psock.sendall(client_frame(1, json.dumps(["1", str(10 + i), "room:t", "m", {"text": big_text(n)}]).encode()))
        b0, wire_bytes, text = frames.until_event("m")
        body = json.loads(text)[4]
        assert body["text"] == big_text(n)
        compressed = bool(b0 & 0x40)
        # The frame's payload (the JSON around the text included) decides.
        assert compressed == (len(text) >= 1500), (n, len(text), compressed)
        if compressed:
            assert len(wire_bytes) < len(text) / 2
        # The publisher did not negotiate: never RSV1 on its frames.
        pb0, _, _ = pframes.until_event("phx_reply")
        assert pb0 & 0x70 == 0
    sock.close()
    psock.close()


@pytest.mark.asyncio
async def test_a_compression_bomb_closes_with_1009(fresh_server):
    s = fresh_server({**ON, "--max-message-bytes": "65536"})
    c = await PhxClient.connect(s.ws(), compression="deflate")
    ok(await c.join("room:bomb"))
    # 4 MiB that compress to a few KiB: the server stops inflating at 64 KiB.
    await c.send_raw(json.dumps(["1", "2", "room:bomb", "m", {"text": "a" * (4 << 20)}]))
    assert await c.wait_closed(5) == 1009
    # The same through a raw socket, a 16 MiB bomb in one 16 KiB frame.
    _, sock, frames = raw_join(s, "room:bomb")
    bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = bomb.compress(b"[" * (16 << 20)) + bomb.flush(zlib.Z_SYNC_FLUSH)
    frame = bytearray(client_frame(1, data[:-4]))
    frame[0] |= 0x40
    sock.sendall(bytes(frame))
    while True:
        f = frames.next(5)
        assert f is not None, "no close frame"
        if f[0] & 0x0F == 8:
            assert struct.unpack("!H", f[1][:2])[0] == 1009
            break
    sock.close()
    # The server is fine: a new client round-trips.
    c2 = await PhxClient.connect(s.ws(), compression="deflate")
    ok(await c2.heartbeat())
    await c2.close()


def test_rsv1_without_negotiation_closes_with_1002(fresh_server):
    for flags in ({}, ON):  # off, and on but not offered by this client
        s = fresh_server(flags)
        _, sock, frames = raw_join(s, "room:r", offer=None)
        c = zlib.compressobj(6, zlib.DEFLATED, -15)
        data = c.compress(b'["1","2","phoenix","heartbeat",{}]') + c.flush(zlib.Z_SYNC_FLUSH)
        frame = bytearray(client_frame(1, data[:-4]))
        frame[0] |= 0x40
        sock.sendall(bytes(frame))
        while True:
            f = frames.next(5)
            assert f is not None, "no close frame"
            if f[0] & 0x0F == 8:
                assert struct.unpack("!H", f[1][:2])[0] == 1002
                break
        sock.close()
        s.stop()
