"""Runs outlive their connection and the SDK resumes them by itself (issue 13
item 6; docs/protocol.md section 9 "Runs"): a TCP proxy cuts the link
mid-stream, the client reconnects and re-attaches every run it follows from
the last seq it saw, and the application sees one uninterrupted stream:
every event exactly once, in order. Also: a second device attaching (late,
with a snapshot; or from a seq), interrupting from either device, runs that
end while the client is away, the detach grace running out, a cortex
channel crash, and the cases where re-attaching is impossible."""
import asyncio

import pytest

from mimo_synapse import (DisconnectedError, MimoSynapse, Progress, ReplyError, RunInterrupted, Snapshot, Token)
from sdk_helpers import Recorder, TcpProxy, connected, eventually, unique


def expected_text(n):
    return "".join(f"t{i} " for i in range(1, n + 1))


def wire_seqs(rec: Recorder, run_id: str):
    """The seq of every push of run_id the client received, in arrival order."""
    return [f[4]["seq"] for f in rec.received(lambda f: f[2].startswith("cortex:") and f[3] != "phx_reply"
                                                and isinstance(f[4], dict) and f[4].get("run_id") == run_id
                                                and f[3] != "snapshot")]


def attaches(rec: Recorder):
    return [f[4] for _, d, f in rec.frames if d == "send" and f[3] == "attach"]


@pytest.mark.asyncio
async def test_token_stream_cut_mid_stream_is_resumed_exactly_once(server, make_key):
    proxy = await TcpProxy(server.port).start()
    rec = Recorder()
    try:
        async with MimoSynapse(proxy.url, api_key=make_key("resume"), trace=rec) as syn:
            handle = syn.tool("demo.tokens", {"count": 300, "interval_ms": 4})
            items = []
            seq_at_cut = None
            async for item in handle:
                items.append(item)
                if len(items) == 40:
                    seq_at_cut = handle.last_seq
                    assert proxy.sever() == 1
            result = await handle.result(timeout=10)

        assert all(isinstance(i, Token) for i in items)
        assert [i.seq for i in items] == list(range(1, 301))  # no gap, no duplicate
        assert "".join(i.delta for i in items) == expected_text(300) == handle.text
        assert result.data == {"tokens": 300} and result.seq == 301 and result.run_id == handle.run_id
        assert handle.resumes == 1 and syn.connection_count == 2
        # The re-attach asked for exactly what was missing: after the last
        # seq received (tokens still in flight when the link was cut count
        # as missing), and the wire then carried each seq once.
        sent = attaches(rec)
        assert len(sent) == 1 and sent[0]["run_id"] == handle.run_id
        assert seq_at_cut <= sent[0]["after_seq"] < 301
        seqs = wire_seqs(rec, handle.run_id)
        assert sorted(seqs) == list(range(1, 302)) and len(seqs) == len(set(seqs))
    finally:
        await proxy.close()


@pytest.mark.asyncio
async def test_three_cuts_during_one_run_and_two_runs_at_once(server, make_key):
    proxy = await TcpProxy(server.port).start()
    try:
        async with MimoSynapse(proxy.url, api_key=make_key("cuts"), backoff_base=0.05) as syn:
            tokens = syn.tool("demo.tokens", {"count": 250, "interval_ms": 6})
            countdown = syn.tool("demo.countdown", {"steps": 60, "interval_ms": 25})
            got_tokens, got_steps = [], []

            async def drain(handle, into):
                async for item in handle:
                    into.append(item)

            readers = asyncio.gather(drain(tokens, got_tokens), drain(countdown, got_steps))
            for n in (1, 2, 3):
                await eventually(lambda: len(got_tokens) >= 50 * n, 15, what=f"{50 * n} tokens")
                proxy.sever()
                await connected(syn, n + 1, timeout=10)
            await asyncio.wait_for(readers, 20)
            assert (await tokens.result()).data == {"tokens": 250}
            assert (await countdown.result()).data == {"completed": 60}
        assert [t.seq for t in got_tokens] == list(range(1, 251))
        assert tokens.text == expected_text(250)
        assert [p.progress for p in got_steps] == list(range(1, 61))
        assert all(isinstance(p, Progress) for p in got_steps)
        assert tokens.resumes == 3 and countdown.resumes >= 1
    finally:
        await proxy.close()


@pytest.mark.asyncio
async def test_run_that_ends_while_the_client_is_away_delivers_the_rest_and_its_result(server, make_key):
    proxy = await TcpProxy(server.port).start()
    try:
        async with MimoSynapse(proxy.url, api_key=make_key("away"), backoff_base=0.05) as syn:
            handle = syn.tool("demo.countdown", {"steps": 10, "interval_ms": 20})
            first = await handle.__anext__()
            proxy.accepting = False
            proxy.sever()
            await asyncio.sleep(0.6)  # the run ends on the server meanwhile
            assert not handle.done and handle.resuming
            proxy.accepting = True
            rest = [p async for p in handle]
            result = await handle.result(timeout=10)
        assert [p.progress for p in [first] + rest] == list(range(1, 11))
        assert result.data == {"completed": 10}
    finally:
        await proxy.close()


@pytest.mark.asyncio
async def test_second_device_attaches_late_and_gets_a_snapshot_then_the_rest(server, make_agent):
    agent, key = make_agent("devices")
    async with MimoSynapse(server.ws_url, api_key=key) as phone, \
            MimoSynapse(server.ws_url, api_key=key) as laptop:
        run = phone.tool("demo.tokens", {"count": 200, "interval_ms": 4})
        await eventually(lambda: run.last_seq >= 60, 10, what="60 tokens on the phone")
        late = laptop.attach(run.run_id)
        items = [i async for i in late]
        result = await late.result(timeout=10)
        phone_result = await run.result(timeout=10)
        assert late.ref == run.ref

        snap = items[0]
        assert isinstance(snap, Snapshot) and late.snapshot is snap
        assert snap.run_id == run.run_id and snap.status == "running" and snap.seq >= 60
        assert snap.text == expected_text(snap.seq)  # every delta so far, folded into one text
        rest = items[1:]
        assert all(isinstance(i, Token) for i in rest)
        assert [i.seq for i in rest] == list(range(snap.seq + 1, 201))
        assert late.text == expected_text(200) == run.text
        assert result.data == phone_result.data == {"tokens": 200}

        # after_seq=0 replays the whole (ended, still kept) run instead, terminal included.
        replay = laptop.attach(run.run_id, after_seq=0)
        again = [i async for i in replay]
        assert [i.seq for i in again] == list(range(1, 201)) and replay.text == expected_text(200)
        assert (await replay.result(timeout=10)).seq == 201
        # text_stream(): the answer as text, a snapshot's text first.
        late2 = laptop.attach(run.run_id)
        assert "".join([t async for t in late2.text_stream()]) == expected_text(200)

        listed = {r.run_id: r for r in await laptop.runs()}
        assert listed[run.run_id].status == "result" and listed[run.run_id].last_seq == 201
        assert listed[run.run_id].kind == "tool" and listed[run.run_id].tool == "demo.tokens"


@pytest.mark.asyncio
async def test_either_device_interrupts_and_both_see_the_terminal(server, make_agent):
    agent, key = make_agent("intr")
    async with MimoSynapse(server.ws_url, api_key=key) as phone, \
            MimoSynapse(server.ws_url, api_key=key) as laptop:
        run = phone.tool("demo.countdown", {"steps": 200, "interval_ms": 20})
        await eventually(lambda: run.last_seq >= 3, 10, what="3 steps")
        follower = laptop.attach(run.run_id, after_seq=run.last_seq)
        await follower
        await follower.interrupt("from the laptop")
        for h in (run, follower):
            with pytest.raises(RunInterrupted) as ei:
                await h.result(timeout=10)
            assert ei.value.reason == "from the laptop"
        assert follower.last_seq == run.last_seq


@pytest.mark.asyncio
async def test_second_device_follows_through_its_own_cut(server, make_agent):
    agent, key = make_agent("dev-cut")
    proxy = await TcpProxy(server.port).start()
    rec = Recorder()
    try:
        async with MimoSynapse(server.ws_url, api_key=key) as phone, \
                MimoSynapse(proxy.url, api_key=key, trace=rec) as laptop:
            run = phone.tool("demo.tokens", {"count": 200, "interval_ms": 5})
            await eventually(lambda: run.last_seq >= 20, 10, what="20 tokens")
            late = laptop.attach(run.run_id)
            items = []
            async for item in late:
                items.append(item)
                if len(items) == 30:
                    proxy.sever()
            assert isinstance(items[0], Snapshot)
            assert [i.seq for i in items[1:]] == list(range(items[0].seq + 1, 201))
            assert late.text == expected_text(200) and late.resumes == 1
            # the first attach asked for a snapshot, the re-attach for the seq after the last one seen
            sent = attaches(rec)
            assert "after_seq" not in sent[0] and sent[1]["after_seq"] > items[0].seq
            await run.result(timeout=10)
    finally:
        await proxy.close()


@pytest.mark.asyncio
async def test_attach_refusals_are_typed(server, make_agent):
    _, key = make_agent("refuse")
    _, other_key = make_agent("other")
    async with MimoSynapse(server.ws_url, api_key=key) as syn, \
            MimoSynapse(server.ws_url, api_key=other_key) as other:
        with pytest.raises(ReplyError) as e1:
            await syn.attach("run_000000000000000000000000").result(timeout=10)
        assert e1.value.reason == "unknown_run"
        run = syn.tool("demo.countdown", {"steps": 100, "interval_ms": 20})
        await run
        with pytest.raises(ReplyError) as e2:
            await other.attach(run.run_id)
        assert e2.value.reason == "forbidden"
        with pytest.raises(ValueError):
            syn.attach(run.run_id, after_seq=-1)
        assert syn.attach(run.run_id) is run  # a run this client follows already
        await run.interrupt()


@pytest.mark.asyncio
async def test_run_past_the_detach_grace_ends_interrupted_detached(fresh_server):
    s = fresh_server({"--detach-grace-s": "1"})
    proxy = await TcpProxy(s.port).start()
    try:
        async with MimoSynapse(proxy.url, api_key=s.create_key(unique("grace"))) as syn:
            handle = syn.tool("demo.countdown", {"steps": 400, "interval_ms": 20})
            await eventually(lambda: handle.last_seq >= 2, 10, what="2 steps")
            proxy.accepting = False
            proxy.sever()
            await asyncio.sleep(1.8)  # longer than the grace: the server interrupts it
            proxy.accepting = True
            with pytest.raises(RunInterrupted) as ei:
                await handle.result(timeout=10)
            assert ei.value.reason == "detached"
            assert handle.resumes == 1  # it was re-attached, and the log told how it ended
    finally:
        await proxy.close()


@pytest.mark.asyncio
async def test_run_not_reattached_within_resume_timeout_ends_disconnected(server, make_key):
    proxy = await TcpProxy(server.port).start()
    try:
        async with MimoSynapse(proxy.url, api_key=make_key("rto"), resume_timeout=0.5) as syn:
            handle = syn.tool("demo.countdown", {"steps": 300, "interval_ms": 20})
            await eventually(lambda: handle.last_seq >= 1, 10, what="a step")
            proxy.accepting = False
            proxy.sever()
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(DisconnectedError) as ei:
                await handle.result(timeout=5)
            assert 0.4 <= loop.time() - started < 2.0
            assert "within 0.5s" in str(ei.value)
            proxy.accepting = True
            await connected(syn, 2, timeout=10)
            await syn.interrupt(run_id=handle.run_id)
    finally:
        await proxy.close()


@pytest.mark.asyncio
async def test_cortex_channel_crash_rejoins_and_reattaches(fresh_server):
    s = fresh_server({"--debug-crash": "true"})
    rec = Recorder()
    async with MimoSynapse(s.ws_url, api_key=s.create_key(unique("crash")), trace=rec) as syn:
        handle = syn.tool("demo.tokens", {"count": 150, "interval_ms": 8})
        await eventually(lambda: handle.last_seq >= 20, 10, what="20 tokens")
        with pytest.raises(ReplyError) as ei:
            await syn.tool("debug.crash", {}).result(timeout=10)
        assert ei.value.reason == "internal"
        items = [i async for i in handle]
        assert (await handle.result(timeout=10)).data == {"tokens": 150}
        assert handle.text == expected_text(150) and handle.resumes == 1 and syn.connection_count == 1
        assert items[-1].seq == 150 and [i.seq for i in items] == list(range(items[0].seq, 151))
        assert any(f[3] == "phx_error" for f in rec.received())
