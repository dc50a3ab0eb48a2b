"""Runs outlive their connection (issue 13; protocol section 9 "Runs"):
run ids and a run log with consecutive seq, attach with after_seq (exactly
the missing events), the compacted snapshot of a late attach, two devices on
one run, the detach grace, retention expiry, unknown_run and forbidden."""
import asyncio
import sys
from pathlib import Path

import pytest

from phx import PhxClient, error, ok

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "clients" / "python"))
sys.path.insert(0, str(REPO / "clients" / "python" / "tests"))
from sdk_helpers import TcpProxy  # noqa: E402

TOPIC = "cortex:admin"
TERMINAL = ("result", "error", "interrupted")


async def cortex(url, topic=TOPIC):
    c = await PhxClient.connect(url)
    ok(await c.join(topic))
    return c


async def collect(c, run_id, until_seq=None, timeout=10, topic=TOPIC):
    """Pushes of `run_id` up to its terminal event (or the first with seq >= until_seq)."""
    events = []
    while True:
        f = await c.expect(lambda f: f[2] == topic and f[1] is None and f[4].get("run_id") == run_id, timeout)
        events.append(f)
        if f[3] in TERMINAL or (until_seq is not None and f[4]["seq"] >= until_seq):
            return events


def seqs(events):
    return [f[4]["seq"] for f in events if f[3] != "snapshot"]


@pytest.mark.asyncio
async def test_every_event_carries_run_id_and_consecutive_seq(server):
    c = await cortex(server.ws())
    reply = ok(await c.request(TOPIC, "tool", {"tool": "demo.countdown", "args": {"steps": 5, "interval_ms": 5}}))
    assert reply["status"] == "running" and reply["run_id"].startswith("run_")
    events = await collect(c, reply["run_id"])
    assert seqs(events) == list(range(1, 7))
    assert all(f[4]["ref"] == reply["ref"] for f in events)
    assert events[-1][3] == "result" and events[-1][4]["data"] == {"completed": 5}
    listed = ok(await c.request(TOPIC, "runs", {}))["runs"]
    mine = [r for r in listed if r["run_id"] == reply["run_id"]]
    assert mine and mine[0]["status"] == "result" and mine[0]["last_seq"] == 6
    assert mine[0]["kind"] == "tool" and mine[0]["tool"] == "demo.countdown" and mine[0]["started_at"] > 0
    await c.close()


@pytest.mark.asyncio
async def test_connection_cut_by_a_proxy_then_attach_is_exactly_once(server):
    """A TCP connection cut mid-stream (RST on both sides), a new connection,
    attach from the last seq seen: every event of the run arrives exactly once."""
    proxy = await TcpProxy(server.port).start()
    url = server.ws().replace(f"127.0.0.1:{server.port}", f"127.0.0.1:{proxy.port}")
    a = await cortex(url)
    reply = ok(await a.request(TOPIC, "tool", {"tool": "demo.tokens", "args": {"count": 300, "interval_ms": 4}}))
    run_id = reply["run_id"]
    before = await collect(a, run_id, until_seq=40)
    assert proxy.sever() == 1
    await asyncio.sleep(0.2)  # the run goes on meanwhile
    b = await cortex(url)
    last = before[-1][4]["seq"]
    r = ok(await b.request(TOPIC, "attach", {"run_id": run_id, "after_seq": last}))
    assert r["ref"] == reply["ref"] and r["status"] == "running" and r["last_seq"] > last
    after = await collect(b, run_id)
    events = before + after
    assert seqs(events) == list(range(1, 302))  # 300 tokens then the result, no gap, no duplicate
    text = "".join(f[4]["delta"] for f in events if f[3] == "token")
    assert text == "".join(f"t{i} " for i in range(1, 301))
    assert events[-1][3] == "result" and events[-1][4]["data"] == {"tokens": 300}
    assert [f for f in await b.drain(0.3) if f[4].get("run_id") == run_id] == []
    await b.close()


@pytest.mark.asyncio
async def test_two_devices_follow_one_run_and_either_interrupts(server):
    phone = await cortex(server.ws())
    laptop = await cortex(server.ws())
    reply = ok(await phone.request(TOPIC, "tool", {"tool": "demo.countdown",
                                                    "args": {"steps": 200, "interval_ms": 20}}))
    run_id = reply["run_id"]
    first = await collect(phone, run_id, until_seq=3)
    ok(await laptop.request(TOPIC, "attach", {"run_id": run_id, "after_seq": 0}))
    seen = await collect(laptop, run_id, until_seq=6)
    assert seqs(seen)[:3] == [1, 2, 3]  # the backlog, then live events
    r = ok(await laptop.request(TOPIC, "interrupt", {"run_id": run_id, "reason": "from the laptop"}))
    assert r["ref"] == reply["ref"]
    rest_laptop = await collect(laptop, run_id)
    rest_phone = await collect(phone, run_id)
    for events in (seen + rest_laptop, first + rest_phone):
        assert seqs(events) == list(range(1, len(seqs(events)) + 1))
        assert events[-1][3] == "interrupted" and events[-1][4]["reason"] == "from the laptop"
    assert seqs(seen + rest_laptop) == seqs(first + rest_phone)
    await phone.close()
    await laptop.close()


@pytest.mark.asyncio
async def test_late_attach_gets_a_compacted_snapshot(server):
    a = await cortex(server.ws())
    reply = ok(await a.request(TOPIC, "tool", {"tool": "demo.tokens", "args": {"count": 400, "interval_ms": 3}}))
    run_id = reply["run_id"]
    await collect(a, run_id, until_seq=200)
    late = await cortex(server.ws())
    ok(await late.request(TOPIC, "attach", {"run_id": run_id}))
    snap = await late.expect(lambda f: f[3] == "snapshot")
    s = snap[4]
    assert s["run_id"] == run_id and s["status"] == "running" and s["seq"] >= 200
    assert s["text"] == "".join(f"t{i} " for i in range(1, s["seq"] + 1))  # every delta folded into one text
    rest = await collect(late, run_id)
    assert seqs(rest) == list(range(s["seq"] + 1, 402))  # then only what follows the snapshot
    assert s["text"] + "".join(f[4]["delta"] for f in rest if f[3] == "token") == \
        "".join(f"t{i} " for i in range(1, 401))
    await a.close()
    await late.close()


@pytest.mark.asyncio
async def test_query_run_snapshot_holds_its_thoughts(server):
    a = await cortex(server.ws())
    reply = ok(await a.request(TOPIC, "query", {"q": "what is a snapshot"}))
    events = await collect(a, reply["run_id"])
    assert events[-1][3] == "result"
    thoughts = [f[4] for f in events if f[3] == "thought"]
    assert [t["seq"] for t in thoughts] == list(range(1, len(thoughts) + 1))
    b = await cortex(server.ws())
    r = ok(await b.request(TOPIC, "attach", {"run_id": reply["run_id"]}))
    assert r["status"] == "result"
    snap = await b.expect(lambda f: f[3] == "snapshot")
    assert [t["type"] for t in snap[4]["thoughts"]] == [t["thought"]["type"] for t in thoughts]
    end = await b.expect(lambda f: f[3] == "result")
    assert end[4]["seq"] == events[-1][4]["seq"] and end[4]["data"] == events[-1][4]["data"]
    await a.close()
    await b.close()


@pytest.mark.asyncio
async def test_unknown_run_and_forbidden(server):
    a = await cortex(server.ws())
    error(await a.request(TOPIC, "attach", {"run_id": "run_000000000000000000000000"}), "unknown_run")
    error(await a.request(TOPIC, "attach", {}), "invalid_payload")
    error(await a.request(TOPIC, "attach", {"run_id": "x", "after_seq": -1}), "invalid_payload")
    reply = ok(await a.request(TOPIC, "tool", {"tool": "demo.countdown", "args": {"steps": 100, "interval_ms": 20}}))
    run_id = reply["run_id"]
    # Another agent of the same tenant, and the same agent id in another tenant.
    other_agent = server.create_key("runs-bob")
    other_tenant = server.create_key("runs-admin-elsewhere", "--agent", "admin", "--tenant", "elsewhere")
    bob = await cortex(server.ws(key=other_agent), "cortex:runs-bob")
    error(await bob.request("cortex:runs-bob", "attach", {"run_id": run_id, "after_seq": 0}), "forbidden")
    error(await bob.request("cortex:runs-bob", "interrupt", {"run_id": run_id}), "forbidden")
    assert all(r["run_id"] != run_id for r in ok(await bob.request("cortex:runs-bob", "runs", {}))["runs"])
    eve = await cortex(server.ws(key=other_tenant))
    error(await eve.request(TOPIC, "attach", {"run_id": run_id, "after_seq": 0}), "forbidden")
    assert all(r["run_id"] != run_id for r in ok(await eve.request(TOPIC, "runs", {}))["runs"])
    ok(await a.request(TOPIC, "interrupt", {"ref": reply["ref"]}))
    for c in (a, bob, eve):
        await c.close()


@pytest.mark.asyncio
async def test_retention_expiry(fresh_server):
    s = fresh_server({"--run-retention-s": "1"})
    a = await cortex(s.ws())
    reply = ok(await a.request(TOPIC, "tool", {"tool": "demo.countdown", "args": {"steps": 2, "interval_ms": 1}}))
    run_id = reply["run_id"]
    await collect(a, run_id)
    b = await cortex(s.ws())
    r = ok(await b.request(TOPIC, "attach", {"run_id": run_id, "after_seq": 0}))
    assert r["status"] == "result" and r["last_seq"] == 3
    assert seqs(await collect(b, run_id)) == [1, 2, 3]  # an ended run replays whole, terminal included
    await asyncio.sleep(1.5)
    error(await b.request(TOPIC, "attach", {"run_id": run_id, "after_seq": 0}), "unknown_run")
    assert all(x["run_id"] != run_id for x in ok(await b.request(TOPIC, "runs", {}))["runs"])
    await a.close()
    await b.close()


@pytest.mark.asyncio
async def test_detached_run_goes_on_within_grace_and_is_interrupted_after_it(fresh_server):
    s = fresh_server({"--detach-grace-s": "1"})
    # Within the grace: the run goes on and a reconnect picks it up.
    a = await cortex(s.ws())
    reply = ok(await a.request(TOPIC, "tool", {"tool": "demo.countdown", "args": {"steps": 30, "interval_ms": 50}}))
    kept = reply["run_id"]
    got = await collect(a, kept, until_seq=2)
    await a.close()
    await asyncio.sleep(0.5)
    b = await cortex(s.ws())
    ok(await b.request(TOPIC, "attach", {"run_id": kept, "after_seq": got[-1][4]["seq"]}))
    events = got + await collect(b, kept)
    assert seqs(events) == list(range(1, 32)) and events[-1][3] == "result"

    # Past the grace: interrupted, the reason in its log.
    reply = ok(await b.request(TOPIC, "tool", {"tool": "demo.countdown", "args": {"steps": 200, "interval_ms": 50}}))
    lost = reply["run_id"]
    await collect(b, lost, until_seq=1)
    await b.close()
    await asyncio.sleep(1.6)
    c = await cortex(s.ws())
    r = ok(await c.request(TOPIC, "attach", {"run_id": lost, "after_seq": 0}))
    assert r["status"] == "cancelled"
    events = await collect(c, lost)
    assert events[-1][3] == "interrupted" and events[-1][4]["reason"] == "detached"
    assert seqs(events) == list(range(1, len(events) + 1)) and len(events) < 40
    await c.close()


@pytest.mark.asyncio
async def test_run_log_off_relays_every_event_and_keeps_only_the_terminal():
    """cortex.run_log = false (a knob for measuring the log's cost): events
    still get consecutive seq and reach the client, but only the terminal
    event is kept, so a later attach sees how the run ended and nothing else."""
    from synapse_server import SynapseServer
    with SynapseServer(flags={"--run-log": "false"}) as s:
        c = await cortex(s.ws())
        reply = ok(await c.request(TOPIC, "tool", {"tool": "demo.tokens", "args": {"count": 50}}))
        events = await collect(c, reply["run_id"])
        assert seqs(events) == list(range(1, 52)) and events[-1][3] == "result"
        assert s.metrics()["synapse_run_log_bytes"] < 1000  # one terminal event, not 51 events
        late = await cortex(s.ws())
        ok(await late.request(TOPIC, "attach", {"run_id": reply["run_id"], "after_seq": 0}))
        tail = await collect(late, reply["run_id"])
        assert seqs(tail) == [51] and tail[0][3] == "result"
        await c.close()
        await late.close()
