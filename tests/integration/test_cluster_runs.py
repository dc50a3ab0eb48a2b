"""Runs across a cluster (issue 13 items 1, 3 and 7; protocol section 9
"Runs", docs/cortex.md "Runs in cluster mode"): a run executes on the node
that started it and its log is copied to Redis; a client that reconnects to
another node attaches there and gets exactly the missing events, then the
live ones; a late device on another node gets the snapshot; an interrupt
from the other node ends the run where it runs; a run whose node dies ends
`error node_lost` on the nodes that follow it, and cannot be attached
anywhere afterwards except as an ended run."""
import asyncio

import pytest

from phx import PhxClient, error, ok
from test_cluster import Cluster
from test_runs import TERMINAL, collect, seqs

TOPIC = "cortex:admin"


@pytest.fixture(scope="module")
def pair():
    c = Cluster({"--node-ttl-ms": "3000", "--detach-grace-s": "30"})
    try:
        yield c.start("ab")
    finally:
        c.cleanup()


async def cortex(node):
    c = await PhxClient.connect(node.ws())
    ok(await c.join(TOPIC))
    return c


@pytest.mark.asyncio
async def test_reconnect_to_another_node_then_attach_is_exactly_once(pair):
    a = await cortex(pair[0])
    reply = ok(await a.request(TOPIC, "tool", {"tool": "demo.tokens", "args": {"count": 200, "interval_ms": 5}}))
    run_id = reply["run_id"]
    before = await collect(a, run_id, until_seq=30)
    a.ws.transport.abort()  # the device loses node A; the run goes on there (detach grace)
    await asyncio.sleep(0.2)
    b = await cortex(pair[1])
    last = before[-1][4]["seq"]
    r = ok(await b.request(TOPIC, "attach", {"run_id": run_id, "after_seq": last}))
    assert r["ref"] == reply["ref"] and r["status"] == "running" and r["last_seq"] >= last
    after = await collect(b, run_id, timeout=15)
    events = before + after
    assert seqs(events) == list(range(1, 202))  # 200 tokens then the result: no gap, no duplicate
    assert "".join(f[4]["delta"] for f in events if f[3] == "token") == "".join(f"t{i} " for i in range(1, 201))
    assert events[-1][3] == "result" and events[-1][4]["data"] == {"tokens": 200}
    assert [f for f in await b.drain(0.3) if f[4].get("run_id") == run_id] == []
    # The ended run stays attachable on B from Redis: only its terminal event after the last seq.
    again = await cortex(pair[1])
    ok(await again.request(TOPIC, "attach", {"run_id": run_id, "after_seq": 200}))
    tail = await collect(again, run_id)
    assert seqs(tail) == [201] and tail[0][3] == "result"
    await b.close()
    await again.close()


@pytest.mark.asyncio
async def test_late_device_on_another_node_gets_the_snapshot_then_live_events(pair):
    a = await cortex(pair[0])
    reply = ok(await a.request(TOPIC, "tool", {"tool": "demo.tokens", "args": {"count": 300, "interval_ms": 4}}))
    run_id = reply["run_id"]
    await collect(a, run_id, until_seq=100)
    late = await cortex(pair[1])
    ok(await late.request(TOPIC, "attach", {"run_id": run_id}))
    snap = (await late.expect(lambda f: f[3] == "snapshot", 10))[4]
    assert snap["run_id"] == run_id and snap["seq"] >= 100
    assert snap["text"] == "".join(f"t{i} " for i in range(1, snap["seq"] + 1))
    rest = await collect(late, run_id, timeout=15)
    assert seqs(rest) == list(range(snap["seq"] + 1, 302))
    rest_a = await collect(a, run_id, timeout=15)
    assert rest_a[-1][3] == "result"
    await a.close()
    await late.close()


@pytest.mark.asyncio
async def test_interrupt_from_another_node_reaches_every_device(pair):
    a = await cortex(pair[0])
    reply = ok(await a.request(TOPIC, "tool", {"tool": "demo.countdown", "args": {"steps": 500, "interval_ms": 20}}))
    run_id = reply["run_id"]
    await collect(a, run_id, until_seq=3)
    b = await cortex(pair[1])
    ok(await b.request(TOPIC, "attach", {"run_id": run_id, "after_seq": 0}))
    seen = await collect(b, run_id, until_seq=4)
    assert seqs(seen)[:4] == [1, 2, 3, 4]
    ok(await b.request(TOPIC, "interrupt", {"run_id": run_id, "reason": "from node b"}))
    end_b = (await collect(b, run_id, timeout=5))[-1]
    end_a = (await collect(a, run_id, timeout=5))[-1]
    for end in (end_a, end_b):
        assert end[3] == "interrupted" and end[4]["reason"] == "from node b"
    assert end_a[4]["seq"] == end_b[4]["seq"]  # one terminal event, the same everywhere
    await a.close()
    await b.close()


@pytest.mark.asyncio
async def test_attach_on_another_node_checks_tenant_agent_and_unknown(pair):
    a = await cortex(pair[0])
    reply = ok(await a.request(TOPIC, "tool", {"tool": "demo.countdown", "args": {"steps": 100, "interval_ms": 20}}))
    run_id = reply["run_id"]
    key = pair.create_key("other-agent", "--agent", "someone-else")
    o = await PhxClient.connect(pair[1].ws(key=key))
    ok(await o.join("cortex:someone-else"))
    error(await o.request("cortex:someone-else", "attach", {"run_id": run_id}), "forbidden")
    b = await cortex(pair[1])
    error(await b.request(TOPIC, "attach", {"run_id": "run_000000000000000000000000"}), "unknown_run")
    ok(await a.request(TOPIC, "interrupt", {"run_id": run_id}))
    await o.close()
    await b.close()
    await a.close()


@pytest.mark.asyncio
async def test_a_run_whose_node_dies_ends_node_lost_where_it_is_followed():
    """Decided: a run lives on the node that executes it. If that node dies
    (SIGKILL), the nodes following it end it `error node_lost` once its
    heartbeat has expired; its log stays readable, so attaching later (on
    any node) shows the events it had, then that it did not finish."""
    c = Cluster({"--node-ttl-ms": "2000", "--detach-grace-s": "30"})
    try:
        c.start("ab")
        a = await cortex(c[0])
        reply = ok(await a.request(TOPIC, "tool", {"tool": "demo.countdown",
                                                     "args": {"steps": 1000, "interval_ms": 20}}))
        run_id = reply["run_id"]
        await collect(a, run_id, until_seq=3)
        b = await cortex(c[1])
        ok(await b.request(TOPIC, "attach", {"run_id": run_id, "after_seq": 0}))
        seen = await collect(b, run_id, until_seq=5)
        c[0].kill()
        t0 = asyncio.get_running_loop().time()
        rest = await collect(b, run_id, timeout=15)
        waited = asyncio.get_running_loop().time() - t0
        end = rest[-1]
        assert end[3] == "error" and end[4]["reason"] == "node_lost", end
        assert waited < 10, f"node_lost came after {waited:.1f} s"
        ev = seen + rest
        assert seqs(ev) == list(range(1, len(seqs(ev)) + 1))
        listed = ok(await b.request(TOPIC, "runs", {}))["runs"]
        assert [r["status"] for r in listed if r["run_id"] == run_id] == ["error"]
        await b.close()
    finally:
        c.cleanup()
