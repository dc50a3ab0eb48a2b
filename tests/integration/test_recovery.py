"""Recovery: a rejoin with `recover` gets exactly the missed messages, in
order, before any live one; gaps, other epochs and expired history give
recovered: false."""
import asyncio

import pytest

from phx import PhxClient, ok


async def member(server, topic, **join):
    c = await PhxClient.connect(server.ws())
    reply = ok(await c.join(topic, join or None))
    return c, reply


@pytest.mark.asyncio
async def test_disconnect_publish_50_rejoin_gets_exactly_those_in_order(server):
    pub, _ = await member(server, "room:rec")
    sub, reply = await member(server, "room:rec")
    ok(await pub.request("room:rec", "m", {"i": -1}))
    seen = await sub.push_event("room:rec", "m")
    last = seen[4]["_meta"]
    await sub.close()
    for i in range(50):
        ok(await pub.request("room:rec", "m", {"i": i}))
    sub = await PhxClient.connect(server.ws())
    r = ok(await sub.join("room:rec", {"recover": {"offset": last["offset"], "epoch": last["epoch"]}}))
    assert r["recovered"] is True and r["epoch"] == last["epoch"] and r["offset"] == last["offset"] + 50
    ok(await pub.request("room:rec", "m", {"i": "live"}))
    got = [await sub.push_event("room:rec", "m") for _ in range(51)]
    assert [f[4]["i"] for f in got] == list(range(50)) + ["live"]
    assert [f[4]["_meta"]["offset"] for f in got] == list(range(last["offset"] + 1, last["offset"] + 52))
    assert [f for f in await sub.drain(0.3) if f[3] == "m"] == []
    await pub.close()
    await sub.close()


@pytest.mark.asyncio
async def test_recovery_past_the_history_window_is_not_recovered(fresh_server):
    s = fresh_server({"--history-size": "10"})
    pub, first = await member(s, "room:win")
    for i in range(50):
        ok(await pub.request("room:win", "m", {"i": i}))
    sub = await PhxClient.connect(s.ws())
    r = ok(await sub.join("room:win", {"recover": {"offset": 0, "epoch": first["epoch"]}}))
    assert r["recovered"] is False and r["offset"] == 50
    assert [f for f in await sub.drain(0.3) if f[3] == "m"] == []
    # Within the window it works.
    sub2 = await PhxClient.connect(s.ws())
    r = ok(await sub2.join("room:win", {"recover": {"offset": 40, "epoch": first["epoch"]}}))
    assert r["recovered"] is True
    assert [(await sub2.push_event("room:win", "m"))[4]["i"] for _ in range(10)] == list(range(40, 50))
    for c in (pub, sub, sub2):
        await c.close()


@pytest.mark.asyncio
async def test_other_epoch_or_future_offset_is_not_recovered(server):
    pub, first = await member(server, "room:epoch")
    ok(await pub.request("room:epoch", "m", {}))
    sub = await PhxClient.connect(server.ws())
    assert ok(await sub.join("room:epoch", {"recover": {"offset": 0, "epoch": "not-the-epoch"}}))["recovered"] is False
    sub2 = await PhxClient.connect(server.ws())
    assert ok(await sub2.join("room:epoch", {"recover": {"offset": 999, "epoch": first["epoch"]}}))["recovered"] is False
    for c in (pub, sub, sub2):
        await c.close()


@pytest.mark.asyncio
async def test_expired_history_is_not_recovered(fresh_server):
    s = fresh_server({"--history-ttl-s": "1"})
    pub, first = await member(s, "room:ttl")
    ok(await pub.request("room:ttl", "m", {}))
    await asyncio.sleep(1.5)
    sub = await PhxClient.connect(s.ws())
    assert ok(await sub.join("room:ttl", {"recover": {"offset": 0, "epoch": first["epoch"]}}))["recovered"] is False
    for c in (pub, sub):
        await c.close()


@pytest.mark.asyncio
async def test_no_gap_no_duplicate_when_publishes_race_the_join(fresh_server):
    """A publisher streams without pause while a subscriber leaves and
    rejoins with recover several times: every offset arrives exactly once."""
    server = fresh_server({"--history-size": "5000"})
    pub, first = await member(server, "room:race")
    sub, _ = await member(server, "room:race")
    stop = asyncio.Event()

    async def publish():
        i = 0
        while not stop.is_set() and i < 3000:
            await pub.send("room:race", "m", {"i": i})
            i += 1
            if i % 20 == 0:
                await asyncio.sleep(0)
        return i

    task = asyncio.create_task(publish())
    received = []
    last = None
    for _ in range(5):
        for _ in range(30):
            f = await sub.push_event("room:race", "m", timeout=10)
            received.append(f[4]["_meta"]["offset"])
            last = f[4]["_meta"]
        ok(await sub.request("room:race", "phx_leave"))
        # Frames that arrived before the leave reply belong to the old
        # membership; the recovery below resends everything after `last`.
        sub.buffer = [f for f in sub.buffer if f[2] != "room:race"]
        r = ok(await sub.join("room:race", {"recover": {"offset": last["offset"], "epoch": last["epoch"]}}))
        assert r["recovered"] is True
    stop.set()
    sent = await task
    # Read everything up to the last published offset.
    final = first["offset"] + sent
    while received[-1] < final:
        received.append((await sub.push_event("room:race", "m", timeout=10))[4]["_meta"]["offset"])
    assert received == list(range(received[0], final + 1))
    await pub.close()
    await sub.close()
