"""Queries and tools on the cortex channel: streamed thoughts, tool progress,
interrupts, and the typed errors of refused or failed runs."""
import asyncio

import pytest

from mimo_synapse import (MimoSynapse, Progress, ReplyError, RunError, RunInterrupted, Thought)
from sdk_helpers import Recorder, eventually, unique


def frames_for(rec: Recorder, ref: str):
    return rec.received(lambda f: f[2].startswith("cortex:") and f[3] != "phx_reply"
                        and isinstance(f[4], dict) and f[4].get("ref") == ref)


@pytest.mark.asyncio
async def test_query_streams_thoughts_in_seq_order_then_result(server, make_key):
    rec = Recorder()
    async with MimoSynapse(server.ws_url, api_key=make_key("q"), trace=rec) as syn:
        for text in ("The sky over the harbour is cobalt blue", "Octopuses have three hearts"):
            stored = await syn.tool("memory.store", {"content": text, "tags": ["test"]}).result(timeout=10)
            assert isinstance(stored.data["id"], int)

        handle = syn.query("what colour is the sky over the harbour", limit=5)
        thoughts = [t async for t in handle]
        result = await handle.result(timeout=10)

    assert thoughts, "a query streams at least one thought"
    assert all(isinstance(t, Thought) and t.ref == handle.ref for t in thoughts)
    assert [t.seq for t in thoughts] == list(range(1, len(thoughts) + 1))
    assert all(t.type and t.content for t in thoughts)
    assert result.ref == handle.ref and result.status == "success"
    contents = [r["content"] for r in result.data["results"]]
    assert "The sky over the harbour is cobalt blue" in contents
    assert handle.status == "success" and handle.done

    # On the wire: every thought, then exactly one terminal, last.
    wire = frames_for(rec, handle.ref)
    assert [f[3] for f in wire] == ["thought"] * len(thoughts) + ["result"]
    assert [f[4]["seq"] for f in wire[:-1]] == [t.seq for t in thoughts]


@pytest.mark.asyncio
async def test_awaiting_a_handle_waits_for_the_server_to_accept_it(server, make_key):
    async with MimoSynapse(server.ws_url, api_key=make_key("acc")) as syn:
        handle = await syn.query("anything at all")
        assert handle.status in ("running", "success")
        assert (await handle.result(timeout=10)).status == "success"


@pytest.mark.asyncio
async def test_interrupt_ends_the_run_with_interrupted_and_nothing_after(server, make_key):
    rec = Recorder()
    async with MimoSynapse(server.ws_url, api_key=make_key("int"), trace=rec) as syn:
        handle = syn.tool("demo.countdown", {"steps": 200, "interval_ms": 50})
        seen = []
        async for p in handle:
            seen.append(p)
            if len(seen) == 2:
                await handle.interrupt("test-stop")
        # iteration ended by itself at the terminal; result() tells why
        with pytest.raises(RunInterrupted) as ei:
            await handle.result(timeout=10)
        assert ei.value.reason == "test-stop" and ei.value.ref == handle.ref
        assert handle.status == "interrupted"
        assert 2 <= len(seen) < 200

        # Several countdown intervals later, after a round trip, still nothing for that ref.
        await syn.ping()
        await asyncio.sleep(0.4)
        await syn.ping()
        wire = frames_for(rec, handle.ref)
        terminal = [i for i, f in enumerate(wire) if f[3] in ("result", "error", "interrupted")]
        assert len(terminal) == 1 and terminal[0] == len(wire) - 1, [f[3] for f in wire]
        assert wire[-1][3] == "interrupted" and wire[-1][4]["reason"] == "test-stop"

        # Interrupting a ref that runs nothing is a typed not_found.
        with pytest.raises(ReplyError) as nf:
            await syn.interrupt("no-such-run")
        assert nf.value.reason == "not_found"
        # Interrupting a finished handle is a no-op.
        await handle.interrupt()


@pytest.mark.asyncio
async def test_client_interrupt_by_ref(server, make_key):
    async with MimoSynapse(server.ws_url, api_key=make_key("intref")) as syn:
        handle = await syn.tool("demo.countdown", {"steps": 100, "interval_ms": 50})
        reply = await syn.interrupt(handle.ref)
        assert reply["ref"] == handle.ref
        with pytest.raises(RunInterrupted) as ei:
            await handle.result(timeout=10)
        assert ei.value.reason == "client"  # the server's default reason


@pytest.mark.asyncio
async def test_tool_progress_iterates_and_calls_back(server, make_key):
    called = []
    async with MimoSynapse(server.ws_url, api_key=make_key("prog")) as syn:
        handle = syn.tool("demo.countdown", {"steps": 5, "interval_ms": 20}, on_progress=called.append)
        progress = [p async for p in handle]
        result = await handle.result(timeout=10)
    assert all(isinstance(p, Progress) for p in progress)
    assert [p.progress for p in progress] == [1, 2, 3, 4, 5]
    assert all(p.total == 5 for p in progress)
    assert progress[-1].message == "5 of 5"
    assert called == progress
    assert result.data == {"completed": 5}


@pytest.mark.asyncio
async def test_async_progress_callback(server, make_key):
    seen = []

    async def on_progress(p):
        seen.append(p.progress)

    async with MimoSynapse(server.ws_url, api_key=make_key("aprog")) as syn:
        await syn.tool("demo.countdown", {"steps": 3, "interval_ms": 10}, on_progress=on_progress).result(timeout=10)
        await eventually(lambda: len(seen) == 3, 5, what="3 progress callbacks")
    assert sorted(seen) == [1, 2, 3]


@pytest.mark.asyncio
async def test_tools_lists_the_builtin_tools(server, make_key):
    async with MimoSynapse(server.ws_url, api_key=make_key("tools")) as syn:
        tools = {t.name: t for t in await syn.tools()}
    assert {"memory.store", "memory.search", "memory.forget", "memory.stats", "demo.countdown"} <= set(tools)
    assert tools["demo.countdown"].input_schema["required"] == ["steps", "interval_ms"]


@pytest.mark.asyncio
async def test_refused_runs_raise_reply_errors_with_reason_message_errors(server, make_key):
    async with MimoSynapse(server.ws_url, api_key=make_key("err")) as syn:
        with pytest.raises(ReplyError) as e1:
            await syn.query("").result(timeout=10)
        assert e1.value.reason == "invalid_payload"
        assert any(err["field"] == "q" for err in e1.value.errors)

        h = syn.tool("no.such.tool", {})
        with pytest.raises(ReplyError) as e2:
            await h  # awaiting the handle raises a refusal too
        assert e2.value.reason == "unknown_tool" and e2.value.message
        with pytest.raises(ReplyError):
            await h.result()
        with pytest.raises(ReplyError):  # and so does iterating it
            async for _ in h:
                pass

        with pytest.raises(ReplyError) as e3:
            await syn.tool("demo.countdown", {"steps": "many"}).result(timeout=10)
        assert e3.value.reason == "invalid_args"
        fields = {err["field"] for err in e3.value.errors}
        assert {"args.steps", "args.interval_ms"} <= fields
        assert "invalid_args" in str(e3.value) and "args.steps" in str(e3.value)

        # a ref already running on this client
        first = syn.tool("demo.countdown", {"steps": 50, "interval_ms": 50}, ref="dup-ref")
        await first
        with pytest.raises(ReplyError) as e4:
            await syn.tool("demo.countdown", {"steps": 1, "interval_ms": 1}, ref="dup-ref").result(timeout=10)
        assert e4.value.reason == "duplicate_ref"
        await first.interrupt()


@pytest.mark.asyncio
async def test_run_timeout_is_a_run_error(server, make_key):
    async with MimoSynapse(server.ws_url, api_key=make_key("tmo")) as syn:
        handle = syn.tool("demo.countdown", {"steps": 20, "interval_ms": 100}, timeout_ms=250)
        with pytest.raises(RunError) as ei:
            async for _ in handle:
                pass
        assert ei.value.reason == "timeout" and not isinstance(ei.value, RunInterrupted)
        with pytest.raises(RunError):
            await handle.result()
        assert handle.status == "error"


@pytest.mark.asyncio
async def test_another_agents_cortex_is_forbidden(server, make_key):
    async with MimoSynapse(server.ws_url, api_key=make_key("nosy"), agent_id=unique("victim")) as syn:
        with pytest.raises(ReplyError) as ei:
            await syn.query("hello").result(timeout=10)
        assert ei.value.reason == "forbidden"


@pytest.mark.asyncio
async def test_key_created_with_agent_uses_that_agents_cortex(server):
    agent = unique("robot")
    key = server.create_key(unique("keyname"), "--agent", agent)
    async with MimoSynapse(server.ws_url, api_key=key) as syn:
        assert await syn.ping() > 0
        assert syn.agent_id == agent
