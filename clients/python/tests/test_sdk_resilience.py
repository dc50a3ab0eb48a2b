"""Reconnects: server crash (SIGKILL + restart on the same port and data
dir), a severed link while messages flow, runs cut by a dropped link (resumed
by re-attaching; ended only when re-attaching is impossible), a dead link
found by heartbeats.

The no-loss test runs against the session server, started with
``--history-size 500`` (conftest.SHARED_FLAGS), so the 200 messages it sends
stay recoverable however long the cut lasts on a slow machine."""
import asyncio
import time

import pytest

from mimo_synapse import DisconnectedError, MimoSynapse, RunError
from sdk_helpers import Recorder, TcpProxy, connected, eventually, unique


@pytest.mark.asyncio
async def test_server_crash_sdk_reconnects_and_resubscribes(fresh_server):
    s = fresh_server()
    key_sub, key_pub = s.create_key(unique("crash-sub")), s.create_key(unique("crash-pub"))
    topic = unique("room:crash")
    got = []
    sub_client = MimoSynapse(s.ws_url, api_key=key_sub)
    pub_client = MimoSynapse(s.ws_url, api_key=key_pub)
    async with sub_client, pub_client:
        subscription = await sub_client.subscribe(topic, got.append)
        await pub_client.publish(topic, "m", {"n": "before"})
        await eventually(lambda: len(got) == 1, what="the first message")

        # a tool running when the server dies
        running = sub_client.tool("demo.countdown", {"steps": 600, "interval_ms": 50})
        await running.__anext__()

        await asyncio.to_thread(s.kill)
        # The run may go on on the server (runs outlive their connection), so
        # the SDK keeps the handle waiting to re-attach it...
        await eventually(lambda: not sub_client.connected, 5, what="the client to notice the kill")
        await asyncio.sleep(0.3)
        assert not running.done and running.resuming
        assert not sub_client.closed

        # The SDK keeps retrying (connection refused) while the server starts.
        await asyncio.to_thread(s.restart)
        took = await connected(sub_client, 2, timeout=5)
        print(f"reconnected {took:.3f}s after the restart")
        assert took < 5, f"reconnected {took:.2f}s after the server was back"
        await eventually(lambda: subscription.joined, 5, what="the subscription to come back")
        # ... but the run died with the process: the re-attach answers
        # unknown_run, and only then does the handle end with disconnected.
        with pytest.raises(DisconnectedError) as ei:
            await running.result(timeout=10)
        assert ei.value.reason == "disconnected" and ei.value.ref == running.ref
        assert "unknown_run" in str(ei.value)

        # The history died with the process: a new epoch, offsets start again.
        offset = await pub_client.publish(topic, "m", {"n": "after"}, timeout=10)
        assert offset == 1
        await eventually(lambda: len(got) == 2, 5, what="a message published after the restart")
        assert [m.payload["n"] for m in got] == ["before", "after"]
        assert got[1].epoch != got[0].epoch

        # the cortex channel works again
        result = await sub_client.tool("demo.countdown", {"steps": 1, "interval_ms": 1}).result(timeout=10)
        assert result.data == {"completed": 1}


@pytest.mark.asyncio
async def test_messages_published_while_away_across_a_crash_are_recovered(fresh_server):
    """Across a restart the old epoch is gone; the SDK notices the new epoch in
    the rejoin reply and fetches the new epoch's history from offset 0."""
    s = fresh_server()
    key_sub, key_pub = s.create_key(unique("away-sub")), s.create_key(unique("away-pub"))
    topic = unique("room:away")
    got = []
    proxy = await TcpProxy(s.port).start()
    sub_client = MimoSynapse(proxy.url, api_key=key_sub)
    pub_client = MimoSynapse(s.ws_url, api_key=key_pub)
    try:
        async with sub_client, pub_client:
            subscription = await sub_client.subscribe(topic, got.append)
            await pub_client.publish(topic, "m", {"n": 0})
            await eventually(lambda: len(got) == 1, what="the first message")

            proxy.accepting = False  # keep the subscriber away
            proxy.sever()
            await asyncio.to_thread(s.kill)
            await asyncio.to_thread(s.restart)
            await connected(pub_client, 2, timeout=10)
            assert await pub_client.publish(topic, "m", {"n": 1}, timeout=10) == 1
            assert await pub_client.publish(topic, "m", {"n": 2}) == 2
            assert sub_client.connection_count == 1

            proxy.accepting = True
            await connected(sub_client, 2, timeout=10)
            await eventually(lambda: len(got) == 3, 10, what="the messages published while away")
            assert await pub_client.publish(topic, "m", {"n": 3}) == 3
            await eventually(lambda: len(got) == 4, 5, what="a live message")
            assert [m.payload["n"] for m in got] == [0, 1, 2, 3]
            assert [m.offset for m in got[1:]] == [1, 2, 3]
            assert subscription.stats["resyncs"] == 1
    finally:
        await proxy.close()


@pytest.mark.asyncio
async def test_no_message_lost_or_duplicated_when_the_link_is_cut(server, make_key):
    topic = unique("room:noloss")
    total = 200
    got = []
    proxy = await TcpProxy(server.port).start()
    rec = Recorder()
    sub_client = MimoSynapse(proxy.url, api_key=make_key("nl-sub"), trace=rec)
    pub_client = MimoSynapse(server.ws_url, api_key=make_key("nl-pub"))
    try:
        async with sub_client, pub_client:
            subscription = await sub_client.subscribe(topic, got.append)
            published_while_away = 0
            seen_at_cut = None
            for i in range(total):
                if i == 50:
                    # The cut must come after a first delivery (the recover
                    # offset asserted below is then a real position); on a
                    # loaded machine the proxy can lag all 50 publishes.
                    await eventually(lambda: len(got) >= 1, 5, what="a first delivery before the cut")
                    proxy.accepting = False
                    assert proxy.sever() == 1
                    await eventually(lambda: not sub_client.connected, 5, what="the subscriber to notice the cut")
                    seen_at_cut = subscription.offset  # the last _meta.offset received
                if i == 120:
                    proxy.accepting = True  # reconnects while the rest is published
                if not sub_client.connected:
                    published_while_away += 1
                await pub_client.publish(topic, "n", {"i": i})
            await eventually(lambda: len(got) >= total, 20, what=f"{total} messages")
            await sub_client.ping()  # anything extra would have arrived by now
            assert [m.payload["i"] for m in got] == list(range(total))
            offsets = [m.offset for m in got]
            assert offsets == list(range(offsets[0], offsets[0] + total))
            assert sub_client.connection_count >= 2
            assert published_while_away >= 70
            assert subscription.stats["recovered"] >= 1
            # the rejoin asked for exactly what was missing (messages still in
            # flight through the proxy when it was cut are among them)
            joins = [f for _, d, f in rec.frames if d == "send" and f[2] == topic and f[3] == "phx_join"]
            assert "recover" not in joins[0][4]
            assert joins[1][4]["recover"] == {"offset": seen_at_cut, "epoch": got[0].epoch}
            assert offsets[0] <= seen_at_cut <= offsets[0] + 49
    finally:
        await proxy.close()


@pytest.mark.asyncio
async def test_running_tool_is_resumed_when_the_link_drops(server, make_key):
    proxy = await TcpProxy(server.port).start()
    try:
        async with MimoSynapse(proxy.url, api_key=make_key("cut-tool")) as syn:
            handle = syn.tool("demo.countdown", {"steps": 20, "interval_ms": 30})
            seen = []
            async for p in handle:
                seen.append(p)
                if len(seen) == 2:
                    proxy.sever()
            result = await handle.result(timeout=5)
            assert result.data == {"completed": 20}
            assert [p.progress for p in seen] == list(range(1, 21))  # every step once, in order
            assert [p.seq for p in seen] == list(range(1, 21)) and result.seq == 21
            assert handle.status == "success" and handle.resumes == 1 and syn.connection_count == 2
    finally:
        await proxy.close()


@pytest.mark.asyncio
async def test_running_tool_ends_with_disconnected_when_resume_is_off(server, make_key):
    proxy = await TcpProxy(server.port).start()
    try:
        async with MimoSynapse(proxy.url, api_key=make_key("cut-off"), resume_runs=False) as syn:
            handle = syn.tool("demo.countdown", {"steps": 600, "interval_ms": 50})
            seen = []
            with pytest.raises(DisconnectedError) as ei:
                async for p in handle:
                    seen.append(p)
                    if len(seen) == 2:
                        proxy.sever()
            assert ei.value.reason == "disconnected" and ei.value.ref == handle.ref
            with pytest.raises(DisconnectedError):
                await handle.result(timeout=5)
            assert handle.status == "error" and len(seen) == 2

            # the client comes back by itself and works
            await connected(syn, 2, timeout=10)
            assert (await syn.tool("demo.countdown", {"steps": 2, "interval_ms": 1}).result(timeout=10)).data == {
                "completed": 2}
            await syn.interrupt(run_id=handle.run_id)  # it was still running on the server
    finally:
        await proxy.close()


@pytest.mark.asyncio
async def test_query_whose_reply_was_lost_is_found_by_its_ref_and_resumed(server, make_key):
    """The server got the query but nothing of its answer came back (not even
    the processing reply with the run id): after the reconnect the SDK finds
    the run by its ref in `runs {}` and attaches from the start."""
    proxy = await TcpProxy(server.port).start()
    try:
        rec = Recorder()
        async with MimoSynapse(proxy.url, api_key=make_key("cut-query"), trace=rec) as syn:
            await syn.ping()
            assert proxy.hold_down_open() == 1  # the server gets the query; its answers never come back
            handle = syn.query("what is in my memory")
            await eventually(lambda: any(d == "send" and f[3] == "query" for _, d, f in rec.frames), 5,
                             what="the query to be sent")
            await asyncio.sleep(0.2)
            assert not handle.done and handle.run_id is None
            proxy.sever()
            thoughts = [t async for t in handle]
            result = await handle.result(timeout=10)
            assert result.status == "success" and handle.run_id and result.run_id == handle.run_id
            assert [t.seq for t in thoughts] == list(range(1, len(thoughts) + 1)) and thoughts
            sent = [f for _, d, f in rec.frames if d == "send" and f[3] in ("runs", "attach", "query")]
            assert [f[3] for f in sent] == ["query", "runs", "attach"]  # looked up, attached, never re-sent
            assert sent[-1][4] == {"run_id": handle.run_id, "after_seq": 0}
            assert (await syn.query("and now?").result(timeout=10)).status == "success"
    finally:
        await proxy.close()


@pytest.mark.asyncio
async def test_dead_link_is_found_by_heartbeats(server, make_key):
    proxy = await TcpProxy(server.port).start()
    drops = []
    try:
        async with MimoSynapse(proxy.url, api_key=make_key("hb"), heartbeat_interval=0.5,
                               on_disconnect=drops.append) as syn:
            await syn.ping()
            assert proxy.blackhole_open() == 1  # no FIN, no RST: only a missing heartbeat reply tells
            started = time.monotonic()
            await eventually(lambda: drops, 5, what="the heartbeat to notice the dead link")
            assert time.monotonic() - started < 3
            await connected(syn, 2, timeout=10)
            assert await syn.ping() > 0
    finally:
        await proxy.close()


@pytest.mark.asyncio
async def test_own_messages_are_not_replayed_to_the_publisher_after_a_reconnect(server, make_key):
    """Live, a publisher never receives its own message; a recover replays every
    message after the offset, its own included. The SDK must skip those."""
    topic = unique("room:own")
    got_a, got_b = [], []
    proxy = await TcpProxy(server.port).start()
    rec = Recorder()
    a = MimoSynapse(proxy.url, api_key=make_key("own-a"), trace=rec)
    b = MimoSynapse(server.ws_url, api_key=make_key("own-b"))
    try:
        async with a, b:
            sub_a = await a.subscribe(topic, got_a.append)
            await b.subscribe(topic, got_b.append)
            assert await a.publish(topic, "n", {"i": 1}) == 1
            assert await b.publish(topic, "n", {"i": 2}) == 2
            assert await a.publish(topic, "n", {"i": 3}) == 3
            await eventually(lambda: len(got_a) == 1 and len(got_b) == 2, what="deliveries")
            proxy.sever()
            await connected(a, 2, timeout=10)
            await eventually(lambda: sub_a.joined, 5, what="the rejoin")
            assert await b.publish(topic, "n", {"i": 4}) == 4
            await eventually(lambda: len(got_a) == 2, 5, what="a live message after the rejoin")
            await a.ping()
            assert [m.payload["i"] for m in got_a] == [2, 4]
            assert [m.payload["i"] for m in got_b] == [1, 3]
            joins = [f for _, d, f in rec.frames if d == "send" and f[2] == topic and f[3] == "phx_join"]
            assert joins[-1][4]["recover"]["offset"] == 3  # its own offset 3 counts as seen
    finally:
        await proxy.close()
