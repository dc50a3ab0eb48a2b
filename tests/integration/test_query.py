"""query: streamed thoughts in seq order then exactly one terminal event."""
import asyncio
import time

import pytest

from phx import PhxClient, error, ok

TOPIC = "cortex:admin"


async def cortex(server):
    c = await PhxClient.connect(server.ws())
    r = ok(await c.join(TOPIC))
    assert r["agent_id"] == "admin" and r["session"]
    return c


async def store(c, content, **args):
    ref = ok(await c.request(TOPIC, "tool", {"tool": "memory.store", "args": {"content": content, **args}}))["ref"]
    res = await c.push_event(TOPIC, "result", pred=lambda f: f[4]["ref"] == ref)
    return res[4]["data"]["id"]


async def run_to_end(c, ref, timeout=10):
    """Collects every push for `ref` up to and including its terminal event."""
    events = []
    while True:
        f = await c.expect(lambda f: f[2] == TOPIC and f[1] is None and f[4].get("ref") == ref, timeout)
        events.append(f)
        if f[3] in ("result", "error", "interrupted"):
            return events


@pytest.mark.asyncio
async def test_query_streams_thoughts_then_result(server):
    c = await cortex(server)
    await store(c, "To deploy the gateway, build with cmake and run the systemd unit", tags=["ops"])
    await store(c, "The cafeteria opens at nine")
    reply = ok(await c.request(TOPIC, "query", {"q": "how do I deploy the gateway?"}))
    assert reply["status"] == "processing" and reply["ref"]
    events = await run_to_end(c, reply["ref"])
    thoughts = [f for f in events if f[3] == "thought"]
    assert [t[4]["seq"] for t in thoughts] == list(range(1, len(thoughts) + 1))
    kinds = [t[4]["thought"]["type"] for t in thoughts]
    assert kinds == ["processing", "routing", "memory_recall", "ranking"]
    routing = thoughts[1][4]["thought"]
    assert routing["store"] == "procedural" and 0 < routing["confidence"] <= 1
    assert thoughts[2][4]["thought"]["candidates"] >= 1
    assert all(t[0] == c.join_refs[TOPIC] for t in events)  # cortex pushes carry the join_ref
    result = events[-1]
    assert result[3] == "result" and result[4]["status"] == "success"
    data = result[4]["data"]
    assert data["store"] == "procedural" and data["query"] == "how do I deploy the gateway?"
    top = data["results"][0]
    assert "deploy the gateway" in top["content"] and top["tags"] == ["ops"]
    assert set(top) >= {"id", "content", "score", "tags", "created_at"}
    assert isinstance(result[4]["latency_ms"], int)
    assert await c.drain(0.3) == []  # nothing after the terminal event
    await c.close()


@pytest.mark.asyncio
async def test_client_ref_and_limit_are_honoured(server):
    c = await cortex(server)
    for i in range(5):
        await store(c, f"limit test memory number {i}")
    reply = ok(await c.request(TOPIC, "query", {"q": "limit test memory", "ref": "my-ref-1", "limit": 2}))
    assert reply["ref"] == "my-ref-1"
    events = await run_to_end(c, "my-ref-1")
    assert len(events[-1][4]["data"]["results"]) == 2
    await c.close()


@pytest.mark.asyncio
async def test_interrupt_stops_the_run_and_nothing_follows(server):
    c = await cortex(server)
    took = []
    for attempt in range(3):
        ref = ok(await c.request(TOPIC, "tool", {"tool": "demo.countdown", "args": {"steps": 50, "interval_ms": 50}}))["ref"]
        await c.push_event(TOPIC, "progress", pred=lambda f: f[4]["ref"] == ref)
        started = time.monotonic()
        r = ok(await c.request(TOPIC, "interrupt", {"ref": ref, "reason": "changed my mind"}))
        assert r["ref"] == ref and r["run_id"].startswith("run_")
        end = await c.push_event(TOPIC, "interrupted", pred=lambda f: f[4]["ref"] == ref)
        took.append(time.monotonic() - started)
        # The run model adds run_id and seq (protocol section 9 "Runs").
        assert {k: v for k, v in end[4].items() if k not in ("run_id", "seq")} == {"ref": ref, "reason": "changed my mind"}
        late = [f for f in await c.drain(0.3) if f[4].get("ref") == ref]
        assert late == []
    # Interrupt takes effect within 50 ms (median of three, round trip included).
    assert sorted(took)[1] < 0.05, took
    await c.close()


@pytest.mark.asyncio
async def test_interrupt_of_a_query(server):
    c = await cortex(server)
    reply = ok(await c.request(TOPIC, "query", {"q": "anything at all"}))
    r = await c.request(TOPIC, "interrupt", {"ref": reply["ref"]})
    events = [f for f in await c.drain(0.5) if f[4].get("ref") == reply["ref"]]
    terminals = [f for f in events if f[3] in ("result", "error", "interrupted")]
    if r["status"] == "ok":
        assert [t[3] for t in terminals] == ["interrupted"]
    else:  # the query finished first: exactly one result, and the interrupt found nothing
        assert r["response"]["reason"] == "not_found"
        assert [t[3] for t in terminals] == ["result"]
    assert events[-1] is terminals[0]
    await c.close()


@pytest.mark.asyncio
async def test_interrupt_unknown_ref_is_not_found(server):
    c = await cortex(server)
    error(await c.request(TOPIC, "interrupt", {"ref": "nope"}), "not_found")
    error(await c.request(TOPIC, "interrupt", {}), "invalid_payload")
    await c.close()


@pytest.mark.asyncio
async def test_timeout_ends_with_error(server):
    c = await cortex(server)
    ref = ok(await c.request(TOPIC, "tool", {"tool": "demo.countdown", "args": {"steps": 20, "interval_ms": 100},
                                             "timeout_ms": 300}))["ref"]
    events = await run_to_end(c, ref)
    assert events[-1][3] == "error"
    assert events[-1][4]["reason"] == "timeout" and events[-1][4]["message"]
    assert [f for f in await c.drain(0.5) if f[4].get("ref") == ref] == []
    await c.close()


@pytest.mark.asyncio
async def test_query_payload_errors(server):
    c = await cortex(server)
    for payload, field in [({}, "q"), ({"q": ""}, "q"), ({"q": 1}, "q"), ({"q": "x" * 8193}, "q"),
                           ({"q": "x", "limit": 0}, "limit"), ({"q": "x", "timeout_ms": -1}, "timeout_ms"),
                           ({"q": "x", "ref": ""}, "ref")]:
        r = error(await c.request(TOPIC, "query", payload), "invalid_payload")
        assert field in [e["field"] for e in r["errors"]], (payload, r)
    # 8192 characters is the limit, counted as characters, not bytes.
    ok(await c.request(TOPIC, "query", {"q": "é" * 8192}))
    await c.close()


@pytest.mark.asyncio
async def test_duplicate_ref_while_running(server):
    c = await cortex(server)
    ok(await c.request(TOPIC, "tool", {"tool": "demo.countdown", "args": {"steps": 10, "interval_ms": 50}, "ref": "same"}))
    error(await c.request(TOPIC, "query", {"q": "x", "ref": "same"}), "duplicate_ref")
    await run_to_end(c, "same")
    ok(await c.request(TOPIC, "query", {"q": "x", "ref": "same"}))  # free again once ended
    await run_to_end(c, "same")
    await c.close()


@pytest.mark.asyncio
async def test_ping_and_tools(server):
    c = await cortex(server)
    pong = ok(await c.request(TOPIC, "ping", {}))["pong"]
    assert abs(pong - time.time() * 1000) < 5000
    tools = ok(await c.request(TOPIC, "tools", {}))["tools"]
    names = {t["name"] for t in tools}
    assert {"memory.store", "memory.search", "memory.forget", "memory.stats", "demo.countdown"} <= names
    for t in tools:
        assert t["description"] and t["input_schema"]["type"] == "object"
    await c.close()


@pytest.mark.asyncio
async def test_disconnect_cancels_runs(fresh_server):
    # cortex.detach_grace_s 0 keeps the old rule: a run ends with its
    # connection (the grace itself is tested in test_runs.py).
    server = fresh_server({"--detach-grace-s": "0"})
    c = await cortex(server)
    ok(await c.request(TOPIC, "tool", {"tool": "demo.countdown", "args": {"steps": 100, "interval_ms": 50}}))
    await c.push_event(TOPIC, "progress")
    before = server.metrics()['synapse_runs_ended_total{outcome="cancelled"}']
    await c.close()
    deadline = time.monotonic() + 5
    while server.metrics()['synapse_runs_ended_total{outcome="cancelled"}'] <= before:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)


@pytest.mark.asyncio
async def test_query_rate_limit(fresh_server):
    s = fresh_server({"--queries-per-min": "60", "--query-burst": "2", "--messages-per-min": "0"}, relaxed=False)
    c = await cortex(s)
    ok(await c.request(TOPIC, "query", {"q": "one"}))
    ok(await c.request(TOPIC, "query", {"q": "two"}))
    r = error(await c.request(TOPIC, "query", {"q": "three"}), "rate_limited")
    assert 0 < r["retry_after_ms"] <= 1000
    await c.close()
