"""error_handling: every row of protocol section 2's bad-input table, the
close codes it names, and rate limiting. The connection stays up after each
answered error, and a well-behaved request still works afterwards."""
import asyncio
import json
import time

import pytest

from phx import PhxClient, error, ok
from rawws import client_frame, http_upgrade, read_frames


async def malformed(c: PhxClient):
    f = await c.push_event("phoenix", "phx_error")
    assert f[0] is None and f[4]["reason"] == "malformed_frame" and f[4]["message"]
    return f


@pytest.mark.asyncio
@pytest.mark.parametrize("raw", [
    "not json",
    "{\"a\":1}",
    "[]",
    "[\"1\",\"1\",\"room:a\",\"e\"]",
    "[\"1\",\"1\",\"room:a\",\"e\",{},\"extra\"]",
    "[1,\"1\",\"room:a\",\"e\",{}]",
    "[\"1\",{},\"room:a\",\"e\",{}]",
    "[\"1\",\"1\",7,\"e\",{}]",
    "[\"1\",\"1\",\"room:a\",false,{}]",
    "[\"1\",\"1\",\"room:a\",\"e\",[1,2]]",
    "[\"1\",\"1\",\"room:a\",\"e\",null]",
])
async def test_malformed_frames_get_phx_error_and_connection_stays(server, raw):
    c = await PhxClient.connect(server.ws())
    await c.send_raw(raw)
    await malformed(c)
    assert ok(await c.heartbeat()) == {}
    await c.close()


@pytest.mark.asyncio
async def test_binary_frame_is_malformed(server):
    c = await PhxClient.connect(server.ws())
    await c.send_raw(b'["1","1","phoenix","heartbeat",{}]')
    await malformed(c)
    assert ok(await c.heartbeat()) == {}
    await c.close()


def test_invalid_utf8_text_closes_1007_after_answering_what_came_before(server):
    """RFC 6455 section 8.1: invalid UTF-8 in a text message fails the
    connection with 1007. The frame before it is still answered, ahead of
    the close frame, and nothing after it is."""
    status, _, rest, sock = http_upgrade(server.port, f"/cortex/websocket?api_key={server.admin_key}")
    sock.sendall(client_frame(1, b'["1","1","phoenix","heartbeat",{}]') +
                 client_frame(1, b'["1","2","room:x","e",{"s":"\xc3\x28"}]') +
                 client_frame(1, b'["3","3","phoenix","heartbeat",{}]'))
    frames, code = read_frames(sock, rest, timeout=5, until_close=True)
    texts = [json.loads(p) for op, p in frames if op == 1]
    assert code == 1007
    assert [t[1] for t in texts] == ["1"] and texts[0][4]["status"] == "ok"
    sock.close()


def test_frames_before_a_client_close_are_answered_before_the_close_completes(server):
    status, _, rest, sock = http_upgrade(server.port, f"/cortex/websocket?api_key={server.admin_key}")
    sock.sendall(client_frame(1, b'["1","1","room:beforeclose","phx_join",{}]') +
                 client_frame(1, b'["1","2","room:beforeclose","e",{"n":1}]') +
                 client_frame(1, b'[null,"3","phoenix","heartbeat",{}]') +
                 client_frame(8, b"\x03\xe8bye"))
    frames, code = read_frames(sock, rest, timeout=5, until_close=True)
    refs = [json.loads(p)[1] for op, p in frames if op == 1]
    assert refs == ["1", "2", "3"], frames
    assert code == 1000
    sock.close()


def test_a_close_code_outside_the_registered_ranges_answers_1002(server):
    for bad in (1004, 1005, 1006, 1015, 2000, 999, 5000):
        status, _, rest, sock = http_upgrade(server.port, f"/cortex/websocket?api_key={server.admin_key}")
        sock.sendall(client_frame(8, bad.to_bytes(2, "big")))
        _, code = read_frames(sock, rest, timeout=5, until_close=True)
        assert code == 1002, bad
        sock.close()


@pytest.mark.asyncio
async def test_json_depth_limit_is_64(server):
    c = await PhxClient.connect(server.ws())
    # The frame array is depth 1, the payload object depth 2.
    deep_ok = {"v": json.loads("[" * 62 + "]" * 62)}
    deep_bad = {"v": json.loads("[" * 63 + "]" * 63)}
    ok(await c.join("room:depth"))
    assert ok(await c.request("room:depth", "deep", deep_ok))["offset"] == 1
    await c.send_raw(json.dumps([None, "9", "room:depth", "deep", deep_bad]))
    await malformed(c)
    await c.close()


@pytest.mark.asyncio
async def test_more_than_ten_malformed_in_a_minute_closes_1008(server):
    c = await PhxClient.connect(server.ws())
    for _ in range(10):
        await c.send_raw("nope")
        await malformed(c)
    assert ok(await c.heartbeat()) == {}
    await c.send_raw("nope")  # the 11th
    assert await c.wait_closed(5) == 1008


@pytest.mark.asyncio
async def test_message_over_1_mib_closes_1009(server):
    c = await PhxClient.connect(server.ws())
    ok(await c.join("room:big"))
    # Exactly at the limit is fine...
    body = json.dumps([None, "1", "room:big", "e", {"p": ""}])
    fill = (1 << 20) - len(body)
    await c.send_raw(json.dumps([None, "1", "room:big", "e", {"p": "x" * fill}]))
    assert (await c.reply("1", timeout=10))["status"] == "ok"
    # ... one byte more is not.
    await c.send_raw(json.dumps([None, "2", "room:big", "e", {"p": "x" * (fill + 1)}]))
    assert await c.wait_closed(10) == 1009


def test_oversized_message_refused_from_its_header_alone(server):
    """The 1009 comes before the payload is sent: the server never buffers it."""
    status, _, rest, sock = http_upgrade(server.port, f"/cortex/websocket?api_key={server.admin_key}")
    assert status == 101
    rss_before = server.rss_kib()
    sock.sendall(client_frame(1, b"", length=1 << 30)[:14])  # a header claiming 1 GiB
    frames, code = read_frames(sock, rest, timeout=3)
    assert code == 1009
    assert server.rss_kib() - rss_before < 10_000
    sock.close()


@pytest.mark.asyncio
async def test_unknown_event_and_invalid_payload_and_invalid_topic(server):
    c = await PhxClient.connect(server.ws())
    ok(await c.join("cortex:admin"))
    error(await c.request("cortex:admin", "fly", {}), "unknown_event")
    error(await c.request("phoenix", "fly", {}), "unknown_event")
    r = error(await c.request("cortex:admin", "query", {}), "invalid_payload")
    assert r["errors"][0]["field"] == "q"
    r = error(await c.request("cortex:admin", "query", {"q": 42}), "invalid_payload")
    assert r["errors"][0]["field"] == "q"
    for bad in ["room lobby", "noseparator", "room:", ":x", "room:" + "a" * 300, "room:<script>"]:
        error(await c.join(bad), "invalid_topic")
    assert ok(await c.heartbeat()) == {}
    await c.close()
    plain = await PhxClient.connect(server.ws(key=server.create_key("plain-agent")))
    error(await plain.join("cortex:someone-else"), "forbidden")
    await plain.close()


@pytest.mark.asyncio
async def test_rate_limit_refuses_then_recovers(fresh_server):
    s = fresh_server({"--messages-per-min": "60", "--message-burst": "5"}, relaxed=False)
    c = await PhxClient.connect(s.ws())
    ok(await c.join("room:rl"))  # joins count: 4 left
    results = [await c.request("room:rl", "m", {"i": i}) for i in range(6)]
    assert [r["status"] for r in results[:4]] == ["ok"] * 4
    limited = [r for r in results[4:] if r["status"] == "error"]
    assert limited and all(r["response"]["reason"] == "rate_limited" for r in limited)
    retry = limited[0]["response"]["retry_after_ms"]
    assert 0 < retry <= 1000
    # Heartbeats are exempt.
    for _ in range(30):
        assert (await c.heartbeat())["status"] == "ok"
    await asyncio.sleep(retry / 1000 + 0.05)
    assert ok(await c.request("room:rl", "m", {"i": 99}))["offset"] == 5
    assert s.metrics()['synapse_rate_limited_total{bucket="messages"}'] >= len(limited)
    await c.close()


@pytest.mark.asyncio
async def test_rate_limited_message_is_not_processed(fresh_server):
    s = fresh_server({"--messages-per-min": "60", "--message-burst": "2"}, relaxed=False)
    pub = await PhxClient.connect(s.ws())
    sub = await PhxClient.connect(s.ws(key=s.create_key("sub", "--unlimited")))
    ok(await sub.join("room:np"))
    ok(await pub.join("room:np"))
    assert (await pub.request("room:np", "m", {"i": 1}))["status"] == "ok"
    assert (await pub.request("room:np", "m", {"i": 2}))["response"]["reason"] == "rate_limited"
    got = [f for f in await sub.drain(0.5) if f[3] == "m"]
    assert [f[4]["i"] for f in got] == [1]
    await pub.close()
    await sub.close()


@pytest.mark.asyncio
async def test_per_key_rate_override(fresh_server):
    s = fresh_server({"--messages-per-min": "60", "--message-burst": "20"}, relaxed=False)
    key = s.create_key("tight", "--msgs-per-min", "60", "--burst", "2")
    c = await PhxClient.connect(s.ws(key=key))
    ok(await c.join("room:o"))
    ok(await c.request("room:o", "m", {}))
    error(await c.request("room:o", "m", {}), "rate_limited")
    await c.close()
    free = await PhxClient.connect(s.ws(key=s.create_key("free", "--unlimited")))
    ok(await free.join("room:o"))
    for i in range(40):
        ok(await free.request("room:o", "m", {"i": i}))
    await free.close()
