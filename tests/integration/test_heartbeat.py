"""heartbeat: heartbeat replies; a silent client is closed with 4000 after the
idle timeout, one that keeps sending heartbeats stays."""
import asyncio
import time

import pytest

from phx import PhxClient, ok


@pytest.mark.asyncio
async def test_heartbeat_replies_ok_with_empty_response(server):
    c = await PhxClient.connect(server.ws())
    for _ in range(3):
        assert ok(await c.heartbeat()) == {}
    await c.close()


@pytest.mark.asyncio
async def test_heartbeat_reply_echoes_ref_and_topic(server):
    c = await PhxClient.connect(server.ws())
    await c.send("phoenix", "heartbeat", {}, ref="hb-77", join_ref=None)
    f = await c.expect(lambda f: f[3] == "phx_reply")
    assert f[0] is None and f[1] == "hb-77" and f[2] == "phoenix"
    assert f[4] == {"status": "ok", "response": {}}
    await c.close()


@pytest.mark.asyncio
async def test_silent_client_is_closed_with_4000(fresh_server):
    s = fresh_server({"--idle-timeout-ms": "1000"})
    c = await PhxClient.connect(s.ws())
    started = time.monotonic()
    code = await c.wait_closed(timeout=5)
    elapsed = time.monotonic() - started
    assert code == 4000
    assert 0.9 <= elapsed < 2.5, elapsed


@pytest.mark.asyncio
async def test_client_sending_heartbeats_stays_open(fresh_server):
    s = fresh_server({"--idle-timeout-ms": "1000"})
    quiet = await PhxClient.connect(s.ws())
    busy = await PhxClient.connect(s.ws())
    for _ in range(8):  # 2.4 s, more than twice the idle timeout
        assert ok(await busy.heartbeat()) == {}
        await asyncio.sleep(0.3)
    assert await quiet.wait_closed(timeout=1) == 4000
    assert ok(await busy.heartbeat()) == {}
    await busy.close()


@pytest.mark.asyncio
async def test_websocket_ping_frames_count_as_activity(fresh_server):
    s = fresh_server({"--idle-timeout-ms": "1000"})
    c = await PhxClient.connect(s.ws())
    for _ in range(6):
        pong = await c.ws.ping()
        await asyncio.wait_for(pong, 2)
        await asyncio.sleep(0.3)
    assert ok(await c.heartbeat()) == {}
    await c.close()
