"""tool: progress then one terminal; failures, unknown tools, bad args, the
per-connection limit on running work."""
import pytest

from phx import PhxClient, error, ok
from test_query import TOPIC, cortex, run_to_end


@pytest.mark.asyncio
async def test_progress_updates_then_result(server):
    c = await cortex(server)
    reply = ok(await c.request(TOPIC, "tool", {"tool": "demo.countdown", "args": {"steps": 4, "interval_ms": 20}}))
    assert reply["status"] == "running"
    events = await run_to_end(c, reply["ref"])
    progress = [f[4] for f in events if f[3] == "progress"]
    assert [p["progress"] for p in progress] == [1, 2, 3, 4]
    assert all(p["total"] == 4 and p["message"] for p in progress)
    assert events[-1][3] == "result" and events[-1][4]["data"] == {"completed": 4}
    await c.close()


@pytest.mark.asyncio
async def test_failing_tool_is_tool_error_and_connection_goes_on(server):
    c = await cortex(server)
    ref = ok(await c.request(TOPIC, "tool", {"tool": "memory.forget", "args": {"id": 987654321}}))["ref"]
    events = await run_to_end(c, ref)
    assert events[-1][3] == "error"
    assert events[-1][4]["reason"] == "tool_error" and "987654321" in events[-1][4]["message"]
    assert ok(await c.request(TOPIC, "ping", {}))["pong"] > 0
    await c.close()


@pytest.mark.asyncio
async def test_unknown_tool(server):
    c = await cortex(server)
    error(await c.request(TOPIC, "tool", {"tool": "no.such.tool", "args": {}}), "unknown_tool")
    error(await c.request(TOPIC, "tool", {"args": {}}), "invalid_payload")
    error(await c.request(TOPIC, "tool", {"tool": "demo.countdown", "args": []}), "invalid_payload")
    await c.close()


@pytest.mark.asyncio
async def test_invalid_args_lists_every_problem(server):
    c = await cortex(server)
    r = error(await c.request(TOPIC, "tool", {"tool": "demo.countdown", "args": {"steps": "many", "speed": 3}}),
              "invalid_args")
    fields = {e["field"] for e in r["errors"]}
    assert fields == {"args.steps", "args.interval_ms", "args.speed"}
    r = error(await c.request(TOPIC, "tool", {"tool": "memory.store", "args": {"content": "x", "importance": 7}}),
              "invalid_args")
    assert [e["field"] for e in r["errors"]] == ["args.importance"]
    await c.close()


@pytest.mark.asyncio
async def test_fifth_concurrent_run_is_too_many_running(server):
    c = await cortex(server)
    refs = []
    for _ in range(4):
        refs.append(ok(await c.request(TOPIC, "tool", {"tool": "demo.countdown",
                                                       "args": {"steps": 50, "interval_ms": 50}}))["ref"])
    error(await c.request(TOPIC, "tool", {"tool": "demo.countdown", "args": {"steps": 1, "interval_ms": 1}}),
          "too_many_running")
    error(await c.request(TOPIC, "query", {"q": "also refused"}), "too_many_running")
    ok(await c.request(TOPIC, "interrupt", {"ref": refs[0]}))
    ok(await c.request(TOPIC, "query", {"q": "a slot is free again"}))
    await c.close()


@pytest.mark.asyncio
async def test_runs_are_per_connection(server):
    a = await cortex(server)
    b = await cortex(server)
    for _ in range(4):
        ok(await a.request(TOPIC, "tool", {"tool": "demo.countdown", "args": {"steps": 20, "interval_ms": 50}}))
    ref = ok(await b.request(TOPIC, "query", {"q": "b is not limited by a"}))["ref"]
    assert (await run_to_end(b, ref))[-1][3] == "result"
    await a.close()
    await b.close()
