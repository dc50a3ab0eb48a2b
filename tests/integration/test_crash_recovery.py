"""crash_recovery: a channel that crashes ends alone (phx_error on that topic,
rejoin works, other topics never notice); memories survive a server restart,
including a kill -9."""
import asyncio
import signal

import pytest

from phx import PhxClient, error, ok
from synapse_server import SynapseServer
from test_query import TOPIC, run_to_end, store


@pytest.mark.asyncio
async def test_channel_crash_is_isolated(server):
    c = await PhxClient.connect(server.ws())
    ok(await c.join(TOPIC))
    ok(await c.join("room:bystander"))
    other = await PhxClient.connect(server.ws())
    ok(await other.join("room:bystander"))
    cortex_join_ref = c.join_refs[TOPIC]

    r = await c.request(TOPIC, "tool", {"tool": "debug.crash", "args": {}})
    assert r["status"] == "error" and r["response"]["reason"] == "internal"
    crash = await c.expect(lambda f: f[3] == "phx_error" and f[2] == TOPIC, what="phx_error")
    assert crash[0] == cortex_join_ref and crash[1] == cortex_join_ref

    # The crashed topic is gone until rejoined...
    error(await c.request(TOPIC, "ping", {}), "unmatched_topic")
    # ... the other topic on the same socket never noticed ...
    ok(await other.request("room:bystander", "hello", {"n": 1}))
    got = await c.push_event("room:bystander", "hello")
    assert got[4]["n"] == 1
    ok(await c.request("room:bystander", "reply", {}))
    # ... and a rejoin works.
    ok(await c.join(TOPIC))
    assert ok(await c.request(TOPIC, "ping", {}))["pong"] > 0
    assert server.metrics()["synapse_channel_crashes_total"] >= 1
    await c.close()
    await other.close()


@pytest.mark.asyncio
async def test_debug_crash_is_off_by_default(fresh_server):
    s = fresh_server()
    c = await PhxClient.connect(s.ws())
    ok(await c.join(TOPIC))
    error(await c.request(TOPIC, "tool", {"tool": "debug.crash", "args": {}}), "unknown_tool")
    tools = ok(await c.request(TOPIC, "tools", {}))["tools"]
    assert "debug.crash" not in {t["name"] for t in tools}
    await c.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
async def test_memories_survive_restart(fresh_server, sig):
    s = fresh_server()
    c = await PhxClient.connect(s.ws())
    ok(await c.join(TOPIC))
    mid = await store(c, "the launch code is pineapple")
    await c.close()
    s.stop(sig)
    s.restart()
    c = await PhxClient.connect(s.ws())
    ok(await c.join(TOPIC))
    ref = ok(await c.request(TOPIC, "query", {"q": "launch code"}))["ref"]
    result = (await run_to_end(c, ref))[-1]
    assert [r["id"] for r in result[4]["data"]["results"]] == [mid]
    await c.close()


@pytest.mark.asyncio
async def test_keys_and_secret_survive_restart(fresh_server):
    s = fresh_server()
    token = s.token(agent_id="admin", ttl_s=600)
    s.stop(signal.SIGKILL)
    s.restart()
    c = await PhxClient.connect(s.ws(token=token))  # same jwt.secret
    assert ok(await c.heartbeat()) == {}
    await c.close()
