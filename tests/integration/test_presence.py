"""Presence in Phoenix Presence format: state on join, coalesced diffs, one
meta per connection, and a leave on every kind of disconnect."""
import asyncio
import socket
import struct

import pytest

from phx import PhxClient, error, ok
from rawws import http_upgrade, client_frame
import json


def metas(state_or_diff, agent):
    e = state_or_diff.get(agent)
    return e["metas"] if e else []


class View:
    """What a client knows of a topic's presence: the state it was sent,
    with every diff applied (as phoenix.js's Presence does)."""

    def __init__(self, client, topic):
        self.client, self.topic, self.state = client, topic, None

    def apply(self, f):
        if f[3] == "presence_state":
            self.state = {k: {"metas": list(v["metas"])} for k, v in f[4].items()}
        elif f[3] == "presence_diff" and self.state is not None:
            for agent, e in f[4]["joins"].items():
                cur = self.state.setdefault(agent, {"metas": []})
                refs = {m["phx_ref"] for m in e["metas"]}
                cur["metas"] = [m for m in cur["metas"] if m["phx_ref"] not in refs] + e["metas"]
            for agent, e in f[4]["leaves"].items():
                refs = {m["phx_ref"] for m in e["metas"]}
                if agent in self.state:
                    self.state[agent]["metas"] = [m for m in self.state[agent]["metas"] if m["phx_ref"] not in refs]
                    if not self.state[agent]["metas"]:
                        del self.state[agent]

    async def until(self, cond, timeout=5.0):
        """Applies presence frames until cond(state) holds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.state is None or not cond(self.state):
            left = deadline - loop.time()
            assert left > 0, f"presence never reached the condition; state={self.state}"
            f = await self.client.expect(lambda f: f[2] == self.topic and f[3] in ("presence_state", "presence_diff"),
                                         left)
            self.apply(f)
        return self.state


async def joined(server, topic, key=None, presence=True, meta=None):
    c = await PhxClient.connect(server.ws(key=key))
    payload = {"presence": presence}
    if meta is not None:
        payload["meta"] = meta
    ok(await c.join(topic, payload))
    return c


@pytest.mark.asyncio
async def test_state_after_join_then_diffs_for_join_and_leave(server):
    alice_key = server.create_key("alice")
    bob_key = server.create_key("bob")
    a = await joined(server, "room:p1", key=alice_key, meta={"status": "away"})
    state = await a.push_event("room:p1", "presence_state")
    assert state[0] == a.join_refs["room:p1"]  # presence_state carries the join_ref
    diff = await a.push_event("room:p1", "presence_diff")  # alice's own join
    assert metas(diff[4]["joins"], "alice")[0]["status"] == "away"
    b = await joined(server, "room:p1", key=bob_key, meta={"status": "here"})
    bstate = (await b.push_event("room:p1", "presence_state"))[4]
    assert metas(bstate, "alice")[0]["status"] == "away"
    diff = await a.push_event("room:p1", "presence_diff", pred=lambda f: "bob" in f[4]["joins"])
    bob_meta = metas(diff[4]["joins"], "bob")[0]
    assert bob_meta["status"] == "here" and bob_meta["phx_ref"] and bob_meta["online_at"] > 0
    assert diff[0] is None  # diffs are shared by all members
    await b.close()
    diff = await a.push_event("room:p1", "presence_diff", pred=lambda f: "bob" in f[4]["leaves"])
    assert metas(diff[4]["leaves"], "bob")[0]["phx_ref"] == bob_meta["phx_ref"]
    await a.close()


@pytest.mark.asyncio
async def test_several_connections_of_one_agent_are_several_metas(server):
    key = server.create_key("multi")
    conns = [await joined(server, "room:p2", key=key) for _ in range(3)]
    watcher = await joined(server, "room:p2")
    state = await View(watcher, "room:p2").until(lambda s: len(metas(s, "multi")) == 3)
    assert len({m["phx_ref"] for m in metas(state, "multi")}) == 3
    for c in conns + [watcher]:
        await c.close()


@pytest.mark.asyncio
async def test_members_without_presence_are_tracked_but_get_no_presence_traffic(server):
    quiet = await joined(server, "room:p3", key=server.create_key("quiet"), presence=False)
    loud = await joined(server, "room:p3", key=server.create_key("loud"))
    await View(loud, "room:p3").until(lambda s: metas(s, "quiet"))  # tracked
    await asyncio.sleep(0.3)
    assert [f for f in await quiet.drain(0.3) if f[3].startswith("presence_")] == []
    status, _, body = server.http("GET", "/api/presence/room:p3", key=server.admin_key)
    assert status == 200 and body["topic"] == "room:p3" and {"quiet", "loud"} <= set(body["presence"])
    await quiet.close()
    await loud.close()


async def wait_leave(watcher, topic, agent):
    return await watcher.push_event(topic, "presence_diff", timeout=10, pred=lambda f: agent in f[4]["leaves"])


@pytest.mark.asyncio
async def test_tcp_reset_produces_a_leave(server):
    watcher = await joined(server, "room:p4")
    status, _, rest, sock = http_upgrade(server.port, f"/cortex/websocket?api_key={server.create_key('dropper')}")
    sock.sendall(client_frame(1, json.dumps(["1", "1", "room:p4", "phx_join", {"presence": True}]).encode()))
    await watcher.push_event("room:p4", "presence_diff", pred=lambda f: "dropper" in f[4]["joins"])
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # RST, no close frame
    await wait_leave(watcher, "room:p4", "dropper")
    await watcher.close()


@pytest.mark.asyncio
async def test_idle_timeout_produces_a_leave(fresh_server):
    s = fresh_server({"--idle-timeout-ms": "800"})
    watcher = await joined(s, "room:p5")
    silent = await joined(s, "room:p5", key=s.create_key("silent"))
    await View(watcher, "room:p5").until(lambda st: "silent" in st)
    for _ in range(6):  # keep the watcher alive
        await watcher.heartbeat()
        await asyncio.sleep(0.25)
    assert await silent.wait_closed(3) == 4000
    await wait_leave(watcher, "room:p5", "silent")
    await watcher.close()


@pytest.mark.asyncio
async def test_leave_event_produces_a_leave(server):
    watcher = await joined(server, "room:p6")
    other = await joined(server, "room:p6", key=server.create_key("leaver"))
    view = View(watcher, "room:p6")
    await view.until(lambda s: "leaver" in s)
    ok(await other.request("room:p6", "phx_leave"))
    await wait_leave(watcher, "room:p6", "leaver")
    await watcher.close()
    await other.close()


@pytest.mark.asyncio
async def test_joins_within_an_interval_coalesce(fresh_server):
    s = fresh_server({"--presence-interval-ms": "500"})
    watcher = await joined(s, "room:p7")
    await watcher.push_event("room:p7", "presence_diff", timeout=3)  # its own join
    key = s.create_key("crowd")
    crowd = await asyncio.gather(*[joined(s, "room:p7", key=key, presence=False) for _ in range(20)])
    await asyncio.sleep(1.2)
    diffs = [f for f in await watcher.drain(0.3) if f[3] == "presence_diff"]
    assert 1 <= len(diffs) <= 3
    assert sum(len(metas(d[4]["joins"], "crowd")) for d in diffs) == 20
    for c in crowd + [watcher]:
        await c.close()


@pytest.mark.asyncio
async def test_meta_over_1_kib_is_refused(server):
    c = await PhxClient.connect(server.ws())
    r = error(await c.join("room:p8", {"presence": True, "meta": {"blob": "x" * 1100}}), "invalid_payload")
    assert r["errors"][0]["field"] == "meta"
    ok(await c.join("room:p8", {"presence": True, "meta": {"blob": "x" * 900}}))
    error(await c.join("room:p9", {"meta": "not an object"}), "invalid_payload")
    error(await c.join("room:p9", {"presence": "yes"}), "invalid_payload")
    error(await c.join("room:p9", {"recover": {"offset": -1, "epoch": "e"}}), "invalid_payload")
    await c.close()
