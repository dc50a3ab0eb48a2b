"""pubsub: subscribe, fan-out, no self-echo, unsubscribe, _meta, HTTP broadcast."""
import asyncio
import time

import pytest

from phx import PhxClient, error, ok


async def member(server, topic, key=None, **join):
    c = await PhxClient.connect(server.ws(key=key))
    ok(await c.join(topic, join or None))
    return c


@pytest.mark.asyncio
async def test_broadcast_reaches_others_with_meta_but_not_the_publisher(server):
    key = server.create_key("publisher-agent")
    pub = await member(server, "room:fan", key=key)
    subs = [await member(server, "room:fan") for _ in range(3)]
    reply = ok(await pub.request("room:fan", "shout", {"text": "hi", "n": 1}))
    for s in subs:
        f = await s.push_event("room:fan", "shout")
        assert f[0] is None and f[1] is None  # serialized once for all members
        payload = f[4]
        assert payload["text"] == "hi" and payload["n"] == 1
        meta = payload["_meta"]
        assert meta["offset"] == reply["offset"] and meta["from"] == "publisher-agent"
        assert isinstance(meta["epoch"], str) and abs(meta["ts"] - time.time() * 1000) < 5000
    assert [f for f in await pub.drain(0.3) if f[3] == "shout"] == []  # no self-echo
    for c in [pub, *subs]:
        await c.close()


@pytest.mark.asyncio
async def test_other_connections_of_the_same_agent_do_receive(server):
    a = await member(server, "room:same")
    b = await member(server, "room:same")  # same admin key, another socket
    ok(await a.request("room:same", "ping", {"x": 1}))
    assert (await b.push_event("room:same", "ping"))[4]["x"] == 1
    await a.close()
    await b.close()


@pytest.mark.asyncio
async def test_offsets_increase_by_one_and_order_is_kept(server):
    pub1 = await member(server, "room:order")
    pub2 = await member(server, "room:order")
    sub = await member(server, "room:order")
    await asyncio.gather(*[pub1.send("room:order", "m", {"p": 1, "i": i}) for i in range(100)],
                         *[pub2.send("room:order", "m", {"p": 2, "i": i}) for i in range(100)])
    got = [await sub.push_event("room:order", "m", timeout=10) for _ in range(200)]
    offsets = [f[4]["_meta"]["offset"] for f in got]
    assert offsets == list(range(offsets[0], offsets[0] + 200))
    for p in (1, 2):  # each publisher's messages in its own order
        assert [f[4]["i"] for f in got if f[4]["p"] == p] == list(range(100))
    for c in (pub1, pub2, sub):
        await c.close()


@pytest.mark.asyncio
async def test_unsubscribe_then_no_messages(server):
    pub = await member(server, "room:unsub")
    sub = await member(server, "room:unsub")
    ok(await pub.request("room:unsub", "before", {}))
    await sub.push_event("room:unsub", "before")
    assert ok(await sub.request("room:unsub", "phx_leave")) == {}
    ok(await pub.request("room:unsub", "after", {}))
    assert [f for f in await sub.drain(0.4) if f[2] == "room:unsub"] == []
    await pub.close()
    await sub.close()


@pytest.mark.asyncio
async def test_hundred_subscribers_all_receive_one_broadcast(server):
    subs = await asyncio.gather(*[member(server, "room:hundred") for _ in range(100)])
    pub = await member(server, "room:hundred")
    ok(await pub.request("room:hundred", "all", {"v": 42}))
    got = await asyncio.gather(*[s.push_event("room:hundred", "all", timeout=10) for s in subs])
    assert all(f[4]["v"] == 42 for f in got) and len(got) == 100
    for c in [*subs, pub]:
        await c.close()


@pytest.mark.asyncio
async def test_http_broadcast_reaches_subscribers(server):
    publisher_key = server.create_key("http-pub", "--publish")
    sub = await member(server, "room:http")
    status, _, body = server.http("POST", "/api/broadcast",
                                  {"topic": "room:http", "event": "news", "payload": {"k": "v"}}, key=publisher_key)
    assert status == 200 and body["offset"] >= 1
    f = await sub.push_event("room:http", "news")
    assert f[4]["k"] == "v" and f[4]["_meta"]["from"] == "http-pub" and f[4]["_meta"]["offset"] == body["offset"]
    await sub.close()


def test_http_broadcast_refusals(server):
    plain = server.create_key("no-publish-rights")
    pub = server.create_key("pub-rights", "--publish")
    msg = {"topic": "room:x", "event": "e", "payload": {}}
    assert server.http("POST", "/api/broadcast", msg)[0] == 401
    assert server.http("POST", "/api/broadcast", msg, key=plain)[0] == 403
    assert server.http("POST", "/api/broadcast", {**msg, "topic": "bad topic"}, key=pub)[2]["error"] == "invalid_topic"
    assert server.http("POST", "/api/broadcast", {**msg, "event": "phx_join"}, key=pub)[2]["error"] == "reserved_event"
    assert server.http("POST", "/api/broadcast", {**msg, "payload": {"_meta": 1}}, key=pub)[0] == 400
    assert server.http("POST", "/api/broadcast", {**msg, "payload": [1]}, key=pub)[0] == 400
    # 1e400 has no double: refused rather than relayed as the non-JSON `Infinity`.
    import urllib.request
    req = urllib.request.Request(server.http_url + "/api/broadcast", method="POST",
                                 data=b'{"topic":"room:x","event":"e","payload":{"v":1e400}}',
                                 headers={"Authorization": f"Bearer {pub}"})
    try:
        urllib.request.urlopen(req, timeout=5)
        raise AssertionError("accepted 1e400")
    except urllib.error.HTTPError as e:
        assert e.code == 400


@pytest.mark.asyncio
async def test_meta_cannot_be_forged(server):
    pub = await member(server, "room:forge")
    sub = await member(server, "room:forge")
    r = error(await pub.request("room:forge", "e", {"_meta": {"from": "ceo"}}), "invalid_payload")
    assert r["errors"][0]["field"] == "payload._meta"
    ok(await pub.request("room:forge", "e", {"from": "ceo"}))
    f = await sub.push_event("room:forge", "e")
    assert f[4]["from"] == "ceo" and f[4]["_meta"]["from"] == "admin"
    await pub.close()
    await sub.close()


@pytest.mark.asyncio
async def test_reserved_events_are_refused(server):
    c = await member(server, "room:reserved")
    for ev in ["phx_custom", "presence_diff", "_secret"]:
        error(await c.request("room:reserved", ev, {}), "reserved_event")
    error(await c.request("room:reserved", "e" * 65, {}), "invalid_payload")
    await c.close()


@pytest.mark.asyncio
async def test_topic_limit_per_connection(fresh_server):
    s = fresh_server({"--max-topics": "100"})
    c = await PhxClient.connect(s.ws())
    for i in range(100):
        ok(await c.join(f"room:t{i}"))
    error(await c.join("room:t100"), "too_many_topics")
    ok(await c.request("room:t0", "phx_leave"))
    ok(await c.join("room:t100"))
    await c.close()


@pytest.mark.asyncio
async def test_memberships_are_released_when_the_connection_closes(fresh_server):
    s = fresh_server({"--history-size": "0"})
    base = s.metrics()["synapse_topics"]
    c = await PhxClient.connect(s.ws())
    for i in range(20):
        ok(await c.join(f"room:gone{i}"))
    assert s.metrics()["synapse_topics"] == base + 20
    await c.close()
    # Released after the empty-topic grace period (30 s) ... which is too long
    # for a test, so only check the membership count drops at once.
    deadline = time.monotonic() + 5
    while s.metrics()["synapse_topic_members"] != 0:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
