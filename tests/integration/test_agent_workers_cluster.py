"""Agent workers across a cluster (issue 12 item 3, the cluster case): a
worker connected to node A serves a client connected to node B through
Redis (cluster/agent_relay.*): the run streams in order with one terminal
event, an interrupt on B reaches the worker on A as `cancel`, and a client
whose agent has no worker anywhere gets agent_unavailable."""
import asyncio
import shutil
import tempfile
import time

import pytest

from phx import PhxClient, ok
from redis_server import RedisServer
from synapse_server import SynapseServer, wait_until
from test_agent_workers import TERMINAL, WorkerProc, client_for, collect, keys_for, no_more


@pytest.fixture(scope="module")
def nodes():
    redis = RedisServer().start()
    data = tempfile.mkdtemp(prefix="synapse-agent-cluster-")
    flags = {"--redis": redis.url(), "--cortex-backend": "workers"}
    a = SynapseServer(data_dir=data, flags=dict(flags, **{"--node-id": "a"})).start()
    b = SynapseServer(data_dir=data, flags=dict(flags, **{"--node-id": "b"})).start()
    b.admin_key = b.admin_key or a.admin_key
    yield a, b
    for n in (a, b):
        n.cleanup()
    redis.cleanup()
    shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def workers():
    made = []

    def start(*args, **kw):
        w = WorkerProc(*args, **kw)
        made.append(w)
        return w

    yield start
    for w in made:
        w.stop()




@pytest.mark.asyncio
async def test_a_worker_on_node_a_serves_a_client_on_node_b(nodes, workers):
    a, b = nodes
    agent, ck, wk = keys_for(a)
    w = workers(a, wk, f"agent:{agent}", name="A", thoughts=1, tokens=20)
    w.joined()
    time.sleep(0.6)  # two announcements of node a
    c = await client_for(b, ck, agent)
    topic = f"cortex:{agent}"
    r = ok(await c.request(topic, "query", {"q": "across nodes"}))
    events = await collect(c, topic, r["run_id"])
    assert [f[3] for f in events] == ["thought"] + ["token"] * 20 + ["result"]
    assert [f[4]["seq"] for f in events] == list(range(1, 23))
    assert "".join(f[4]["delta"] for f in events if f[3] == "token") == "".join(f"w{i} " for i in range(20))
    assert events[-1][4]["data"] == {"answer": "across nodes", "worker": "A"}
    assert await no_more(c, r["run_id"]) == []
    await c.close()


@pytest.mark.asyncio
async def test_an_interrupt_on_node_b_reaches_the_worker_on_node_a(nodes, workers):
    a, b = nodes
    agent, ck, wk = keys_for(a)
    w = workers(a, wk, f"agent:{agent}", mode="hold")
    w.joined()
    time.sleep(0.6)
    c = await client_for(b, ck, agent)
    topic = f"cortex:{agent}"
    r = ok(await c.request(topic, "query", {"q": "stop me"}))
    rid = r["run_id"]
    await c.expect(lambda f: f[3] == "token" and f[4].get("run_id") == rid, 5)
    sent = time.time()
    ok(await c.request(topic, "interrupt", {"run_id": rid}))
    ended = await collect(c, topic, rid)
    assert ended[-1][3] == "interrupted"
    cancel = w.wait("cancel")[0]
    assert cancel["reason"] == "interrupted"
    assert (cancel["t"] - sent) < 0.5
    dropped = w.wait("reply")[0]
    assert dropped["reply"]["response"] == {"dropped": True}
    assert await no_more(c, rid) == []
    await c.close()


@pytest.mark.asyncio
async def test_a_killed_worker_on_node_a_ends_the_run_on_node_b(nodes, workers):
    a, b = nodes
    agent, ck, wk = keys_for(a)
    w = workers(a, wk, f"agent:{agent}", mode="hold")
    w.joined()
    time.sleep(0.6)
    c = await client_for(b, ck, agent)
    topic = f"cortex:{agent}"
    r = ok(await c.request(topic, "query", {"q": "then gone"}))
    await c.expect(lambda f: f[3] == "token" and f[4].get("run_id") == r["run_id"], 5)
    w.kill()
    ev = await collect(c, topic, r["run_id"], timeout=5)
    assert ev[-1][3] == "error" and ev[-1][4]["reason"] == "agent_unavailable"
    await c.close()


@pytest.mark.asyncio
async def test_no_worker_on_any_node_is_agent_unavailable_at_once(nodes):
    a, b = nodes
    agent, ck, _ = keys_for(a)
    c = await client_for(b, ck, agent)
    topic = f"cortex:{agent}"
    started = time.monotonic()
    r = ok(await c.request(topic, "query", {"q": "anyone?"}))
    ev = await collect(c, topic, r["run_id"], timeout=2)
    assert [f[3] for f in ev] == ["error"] and ev[0][4]["reason"] == "agent_unavailable"
    assert time.monotonic() - started < 0.5
    await c.close()


@pytest.mark.asyncio
async def test_node_a_killed_ends_the_runs_it_served_on_node_b(nodes, workers):
    """Last in this module: it kills node a."""
    a, b = nodes
    agent, ck, wk = keys_for(a)
    w = workers(a, wk, f"agent:{agent}", mode="hold")
    w.joined()
    time.sleep(0.6)
    c = await client_for(b, ck, agent)
    topic = f"cortex:{agent}"
    r = ok(await c.request(topic, "query", {"q": "node loss"}))
    await c.expect(lambda f: f[3] == "token" and f[4].get("run_id") == r["run_id"], 5)
    a.kill()
    started = time.monotonic()
    while True:  # the client stays active meanwhile (heartbeats)
        await c.heartbeat()
        done = [f for f in c.buffer if f[1] is None and f[4].get("run_id") == r["run_id"] and f[3] in TERMINAL]
        if done or time.monotonic() - started > 8:
            break
        await asyncio.sleep(0.2)
    assert done and done[0][3] == "error" and done[0][4]["reason"] == "agent_unavailable", c.buffer[-3:]
    assert time.monotonic() - started < 5
    await c.close()
