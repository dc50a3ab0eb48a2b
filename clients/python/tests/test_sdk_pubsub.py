"""Pub/sub: subscribe, publish, unsubscribe and presence against the server."""
import asyncio

import pytest

from mimo_synapse import Message, MimoSynapse, RateLimitedError, ReplyError
from sdk_helpers import Recorder, eventually, unique


@pytest.mark.asyncio
async def test_subscribe_publish_unsubscribe(server, make_key, make_agent):
    topic = unique("room:pubsub")
    rec = Recorder()
    got, other_got = [], []
    publisher, pub_key = make_agent("pub")
    async with MimoSynapse(server.ws_url, api_key=make_key("sub"), trace=rec) as a, \
            MimoSynapse(server.ws_url, api_key=pub_key) as b, \
            MimoSynapse(server.ws_url, api_key=make_key("witness")) as c:
        unsub = await a.subscribe(topic, got.append)
        await c.subscribe(topic, other_got.append)
        offsets = [await b.publish(topic, "note", {"i": i}) for i in range(3)]
        assert offsets == [1, 2, 3]
        await eventually(lambda: len(got) == 3, what="3 messages")
        assert all(isinstance(m, Message) for m in got)
        assert [m.payload for m in got] == [{"i": 0}, {"i": 1}, {"i": 2}]  # _meta stripped
        assert [m.offset for m in got] == offsets
        assert {m.event for m in got} == {"note"} and {m.topic for m in got} == {topic}
        assert {m.sender for m in got} == {publisher}  # _meta.from
        assert got[0].epoch and got[0].ts

        await unsub()
        await unsub()  # idempotent
        left_at = len(rec.frames)
        for i in range(3, 6):
            await b.publish(topic, "note", {"i": i})
        # c, still subscribed, got them: the server has fanned them out by now.
        await eventually(lambda: len(other_got) == 6, what="the witness's 6 messages")
        await a.ping()
        assert len(got) == 3, got
        after = [f for _, d, f in rec.frames[left_at:] if d == "recv" and f[2] == topic and f[3] == "note"]
        assert after == [], "the server kept pushing after phx_leave"
        # the leave was acknowledged
        assert any(d == "send" and f[2] == topic and f[3] == "phx_leave" for _, d, f in rec.frames)


@pytest.mark.asyncio
async def test_publisher_does_not_receive_its_own_message_and_async_callbacks_keep_order(server, make_key):
    topic = unique("room:order")
    got, own = [], []

    async def slow(m):  # an async callback slower than the stream
        await asyncio.sleep(0.005)
        got.append(m.payload["i"])

    async with MimoSynapse(server.ws_url, api_key=make_key("s")) as a, \
            MimoSynapse(server.ws_url, api_key=make_key("p")) as b:
        await a.subscribe(topic, slow)
        await b.subscribe(topic, own.append)
        for i in range(30):
            await b.publish(topic, "n", {"i": i})
        await eventually(lambda: len(got) == 30, what="30 messages")
        assert got == list(range(30))
        await a.ping()
        assert own == []


@pytest.mark.asyncio
async def test_two_callbacks_share_one_join(server, make_key):
    topic = unique("room:two")
    first, second = [], []
    async with MimoSynapse(server.ws_url, api_key=make_key("s")) as a, \
            MimoSynapse(server.ws_url, api_key=make_key("p")) as b:
        u1 = await a.subscribe(topic, first.append)
        u2 = await a.subscribe(topic, second.append)
        await b.publish(topic, "n", {"i": 1})
        await eventually(lambda: first and second, what="both callbacks")
        await u1()
        await b.publish(topic, "n", {"i": 2})
        await eventually(lambda: len(second) == 2, what="second callback")
        assert [m.payload["i"] for m in first] == [1]
        await u2()


@pytest.mark.asyncio
async def test_publish_errors_are_typed(server, make_key):
    async with MimoSynapse(server.ws_url, api_key=make_key("perr")) as a:
        topic = unique("room:perr")
        with pytest.raises(ReplyError) as e1:
            await a.publish(topic, "phx_custom", {})
        assert e1.value.reason == "reserved_event"
        with pytest.raises(ReplyError) as e2:
            await a.publish(topic, "n", {"_meta": {"offset": 1}})
        assert e2.value.reason == "invalid_payload"
        with pytest.raises(ReplyError) as e3:
            await a.subscribe("bad topic!:x", print)
        assert e3.value.reason == "invalid_topic"
        with pytest.raises(ValueError):
            await a.subscribe("cortex:someone", print)
        assert await a.publish(topic, "n", {"ok": True}) == 1


@pytest.mark.asyncio
async def test_presence_tracks_members_and_their_meta(server, make_key, make_agent):
    topic = unique("room:presence")
    changes = []
    agent_a, key_a = make_agent("pa")
    agent_b, key_b = make_agent("pb")
    async with MimoSynapse(server.ws_url, api_key=key_a) as a, \
            MimoSynapse(server.ws_url, api_key=key_b) as b, \
            MimoSynapse(server.ws_url, api_key=make_key("pc")) as c:
        await a.subscribe(topic, lambda m: None, meta={"role": "a"}, presence=True, on_presence=changes.append)
        unsub_b = await b.subscribe(topic, lambda m: None, meta={"role": "b"}, presence=True)

        async def members(client):
            return await client.presence(topic)

        state = None

        async def both_present():
            nonlocal state
            state = await members(a)
            return set(state) == {agent_a, agent_b}

        for _ in range(200):
            if await both_present():
                break
            await asyncio.sleep(0.05)
        assert set(state) == {agent_a, agent_b}, state
        assert [m["role"] for m in state[agent_b]["metas"]] == ["b"]
        assert all("phx_ref" in m for m in state[agent_a]["metas"])
        assert changes and set(changes[-1]) == {agent_a, agent_b}

        # b's view, tracked live too
        assert agent_b in await members(b)

        # c is not subscribed: the HTTP API (API key) answers
        http_state = await members(c)
        assert set(http_state) == {agent_a, agent_b}

        await unsub_b()
        for _ in range(200):
            state = await members(a)
            if set(state) == {agent_a}:
                break
            await asyncio.sleep(0.05)
        assert set(state) == {agent_a}
        assert set(changes[-1]) == {agent_a}


@pytest.mark.asyncio
async def test_rate_limited_publish_raises_with_retry_after(fresh_server):
    s = fresh_server({"--messages-per-min": "60", "--message-burst": "3"})
    async with MimoSynapse(s.ws_url, api_key=s.create_key(unique("limited"))) as syn:
        topic = unique("room:limit")
        with pytest.raises(RateLimitedError) as ei:
            for i in range(10):
                await syn.publish(topic, "n", {"i": i})
        assert ei.value.reason == "rate_limited"
        assert isinstance(ei.value.retry_after_ms, int) and ei.value.retry_after_ms > 0
        assert isinstance(ei.value, ReplyError)


@pytest.mark.asyncio
async def test_publish_only_topic_upgrades_to_a_presence_subscription(server, make_agent):
    topic = unique("room:upgrade")
    me, my_key = make_agent("up")
    got = []
    async with MimoSynapse(server.ws_url, api_key=my_key) as a, \
            MimoSynapse(server.ws_url, api_key=server.admin_key) as b:
        assert await a.publish(topic, "n", {"i": 0}) == 1  # joins the topic, no callback
        await b.subscribe(topic, lambda m: None)
        assert await b.publish(topic, "n", {"i": 1}) == 2
        sub = await a.subscribe(topic, got.append, meta={"status": "watching"}, presence=True)
        assert await b.publish(topic, "n", {"i": 2}) == 3
        await eventually(lambda: got, what="a message after subscribing")
        state = {}
        for _ in range(100):  # presence diffs are coalesced (presence_interval)
            state = await a.presence(topic)
            if me in state:
                break
            await asyncio.sleep(0.05)
        assert [m.get("status") for m in state[me]["metas"]] == ["watching"]
        await a.ping()
        # offset 2 was published before subscribe() but may still have been in
        # flight to `a` when the callback was added; offset 3 arrives, once.
        assert [m.offset for m in got] in ([3], [2, 3])  # never its own offset 1
        assert sub.stats["delivered"] >= 1
