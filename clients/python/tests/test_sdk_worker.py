"""AgentWorker through the real server and a real worker (issue 12 item 8;
docs/protocol.md section 10): a worker registered on `agent:<id>` serves the
queries of `cortex:<id>`, streaming thoughts and tokens in order; it calls
Synapse's tools as the run's caller; a client interrupt reaches the handler
as asyncio task cancellation and nothing more is sent for that run; after
the worker's link drops it joins again by itself with its capacity and
tools, and serves again."""
import asyncio
import time

import pytest

from mimo_synapse import (AgentError, AgentWorker, Final, MimoSynapse, ReplyError, RunError, RunInterrupted,
                          Thought as SeenThought, Token)
from mimo_synapse.worker import ProgressUpdate, Thought
from sdk_helpers import Recorder, TcpProxy, eventually, unique

# Queries of every agent go to its workers (and end agent_unavailable when none can take them).
WORKER_FLAGS = {"--cortex-backend": "workers"}


@pytest.fixture(scope="module")
def wserver():
    from synapse_server import SynapseServer
    from conftest import SHARED_FLAGS
    with SynapseServer(flags={**SHARED_FLAGS, **WORKER_FLAGS}) as s:
        yield s


def agent_keys(s, prefix):
    """(agent_id, worker key, user key) for a fresh agent."""
    agent = unique(prefix)
    worker_key = s.create_key(unique(prefix + "-w"), "--worker", "--agent", agent)
    user_key = s.create_key(unique(prefix + "-u"), "--agent", agent)
    return agent, worker_key, user_key


async def words(run):
    yield Thought(f"answering {run.q}", type="plan")
    for i in range(1, 51):
        yield f"w{i} "
    yield ProgressUpdate(50, total=50, message="done")


@pytest.mark.asyncio
async def test_worker_serves_a_query_streaming_thought_and_tokens_in_order(wserver):
    agent, wkey, ukey = agent_keys(wserver, "serve")
    async with AgentWorker(wserver.ws_url, api_key=wkey, agent_id=agent, capacity=2) as worker:
        await worker.start(words)
        assert worker.registered and worker.worker_id and worker.registrations == 1
        async with MimoSynapse(wserver.ws_url, api_key=ukey) as syn:
            handle = syn.query("the question")
            items = [i async for i in handle]
            result = await handle.result(timeout=10)
    assert isinstance(items[0], SeenThought) and items[0].type == "plan" and items[0].content == "answering the question"
    toks = [i for i in items if isinstance(i, Token)]
    assert [t.delta for t in toks] == [f"w{i} " for i in range(1, 51)]
    assert [i.seq for i in items] == list(range(1, 53))  # thought, 50 tokens, progress: one log, in order
    assert handle.text == "".join(f"w{i} " for i in range(1, 51))
    assert result.data == {"text": handle.text} and result.seq == 53
    assert worker.stats["runs"] == 1 and worker.stats["results"] == 1


@pytest.mark.asyncio
async def test_handler_calls_memory_search_as_the_runs_caller(wserver):
    agent, wkey, ukey = agent_keys(wserver, "recall")
    seen = {}

    async def recall(run):
        found = await run.call_tool("memory.search", {"query": run.q})
        seen["caller"] = run.caller
        contents = [r["content"] for r in found["results"]]
        for c in contents:
            yield c
        yield Final({"contents": contents})

    async with AgentWorker(wserver.ws_url, api_key=wkey, agent_id=agent) as worker:
        await worker.start(recall)
        async with MimoSynapse(wserver.ws_url, api_key=ukey) as syn:
            await syn.tool("memory.store", {"content": "The lighthouse keeper feeds a grey cat"}).result(timeout=10)
            result = await syn.query("lighthouse cat").result(timeout=10)
    assert result.data == {"contents": ["The lighthouse keeper feeds a grey cat"]}
    assert seen["caller"]["agent_id"] == agent and seen["caller"]["tenant"] == "default"


@pytest.mark.asyncio
async def test_client_interrupt_cancels_the_handler_task_and_nothing_follows(wserver):
    agent, wkey, ukey = agent_keys(wserver, "cancel")
    started, cancelled_at = asyncio.Event(), []
    rec = Recorder()

    async def forever(run):
        started.set()
        try:
            i = 0
            while True:
                i += 1
                yield f"t{i} "
                await asyncio.sleep(0.005)
        except asyncio.CancelledError:
            cancelled_at.append(time.monotonic())
            raise

    async with AgentWorker(wserver.ws_url, api_key=wkey, agent_id=agent, trace=rec) as worker:
        await worker.start(forever)
        async with MimoSynapse(wserver.ws_url, api_key=ukey) as syn:
            handle = syn.query("go on forever")
            await eventually(lambda: handle.last_seq >= 10, 10, what="10 tokens")
            asked = time.monotonic()
            await handle.interrupt("enough")
            with pytest.raises(RunInterrupted) as ei:
                await handle.result(timeout=10)
            assert ei.value.reason == "enough"
            await eventually(lambda: cancelled_at, 5, what="the handler to be cancelled")
            took_ms = (cancelled_at[0] - asked) * 1000
            print(f"interrupt -> handler cancelled: {took_ms:.1f} ms")
            assert took_ms < 1000
            await asyncio.sleep(0.2)
            assert worker.active == 0 and worker.stats["cancelled"] == 1
            # On the worker's wire: the cancel push, then nothing more for that run.
            run_id = handle.run_id
            cancel_at = rec.index(lambda f: f[3] == "cancel" and f[4].get("run_id") == run_id)
            after = [f for _, d, f in rec.frames[cancel_at:] if d == "send" and f[3] in ("token", "result", "error")
                     and f[4].get("run_id") == run_id]
            assert after == []
            # and the worker serves the next run
            nxt = syn.query("once more")
            await eventually(lambda: nxt.last_seq >= 3, 10, what="the next run")
            await nxt.interrupt()


@pytest.mark.asyncio
async def test_worker_joins_again_after_its_link_drops_and_serves_again(wserver):
    agent, wkey, ukey = agent_keys(wserver, "rejoin")
    proxy = await TcpProxy(wserver.port).start()
    try:
        lost = []

        async def slow(run):
            try:
                for i in range(1000):
                    yield f"s{i} "
                    await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                lost.append(run.run_id)
                raise

        async with AgentWorker(proxy.url, api_key=wkey, agent_id=agent, capacity=3, backoff_base=0.05,
                               tools=[{"name": "echo.twice", "description": "twice the text"}]) as worker:
            await worker.start(slow, tool_handlers={"echo.twice": lambda run: {"text": run.args["text"] * 2}})
            async with MimoSynapse(wserver.ws_url, api_key=ukey) as syn:
                cut = syn.query("cut me off")
                await eventually(lambda: cut.last_seq >= 5, 10, what="5 tokens")
                proxy.sever()
                # The server ends the run of a worker that went away; the handler is stopped.
                with pytest.raises(RunError) as ei:
                    await cut.result(timeout=10)
                assert ei.value.reason == "agent_unavailable"
                await eventually(lambda: lost == [cut.run_id], 5, what="the handler to be cancelled")
                await eventually(lambda: worker.registrations == 2 and worker.registered, 10,
                                 what="the worker to join again")
                # Same capacity and tools as before the drop.
                assert (await syn.tool("echo.twice", {"text": "ab"}).result(timeout=10)).data == {"text": "abab"}
                again = syn.query("and again")
                await eventually(lambda: again.last_seq >= 3, 10, what="a run served after the rejoin")
                await again.interrupt()
            assert worker.client.connection_count == 2 and worker.stats["lost"] == 1
    finally:
        await proxy.close()


@pytest.mark.asyncio
async def test_handler_errors_end_the_run_with_error(wserver):
    agent, wkey, ukey = agent_keys(wserver, "fail")

    async def failing(run):
        yield "partial "
        if run.q == "chosen":
            raise AgentError("no_answer", "nothing to say")
        raise ValueError("boom")

    async with AgentWorker(wserver.ws_url, api_key=wkey, agent_id=agent, capacity=2) as worker:
        await worker.start(failing)
        async with MimoSynapse(wserver.ws_url, api_key=ukey) as syn:
            with pytest.raises(RunError) as e1:
                await syn.query("chosen").result(timeout=10)
            assert e1.value.reason == "no_answer" and e1.value.message == "nothing to say"
            with pytest.raises(RunError) as e2:
                await syn.query("other").result(timeout=10)
            assert e2.value.reason == "agent_error" and "ValueError: boom" in e2.value.message
        assert worker.stats["errors"] == 2


@pytest.mark.asyncio
async def test_capacity_is_registered_and_a_user_key_cannot_serve(wserver):
    agent, wkey, ukey = agent_keys(wserver, "cap")
    gate = asyncio.Event()

    async def waits(run):
        yield "waiting "
        await gate.wait()

    with pytest.raises(ReplyError) as ei:
        await AgentWorker(wserver.ws_url, api_key=ukey, agent_id=agent).start(waits)
    assert ei.value.reason == "forbidden"

    async with AgentWorker(wserver.ws_url, api_key=wkey, agent_id=agent, capacity=1) as worker:
        await worker.start(waits)
        async with MimoSynapse(wserver.ws_url, api_key=ukey) as syn:
            first = syn.query("one")
            await eventually(lambda: first.last_seq >= 1, 10, what="the first run")
            with pytest.raises((RunError, ReplyError)) as busy:  # capacity 1 is taken: at once, never a wait
                await syn.query("two").result(timeout=5)
            assert busy.value.reason == "agent_unavailable"
            gate.set()
            assert (await first.result(timeout=10)).data == {"text": "waiting "}


@pytest.mark.asyncio
async def test_client_cut_mid_stream_of_a_worker_run_resumes_exactly_once(wserver):
    """Issue 13 with a worker behind the run: the client's link is cut while
    the worker streams; the run goes on, the client re-attaches from its
    last seq and sees every token once, in order."""
    agent, wkey, ukey = agent_keys(wserver, "wresume")
    proxy = await TcpProxy(wserver.port).start()

    async def paced(run):
        for i in range(1, 301):
            yield f"p{i} "
            await asyncio.sleep(0.003)

    try:
        async with AgentWorker(wserver.ws_url, api_key=wkey, agent_id=agent) as worker:
            await worker.start(paced)
            async with MimoSynapse(proxy.url, api_key=ukey) as syn:
                handle = syn.query("stream to me")
                items = []
                async for item in handle:
                    items.append(item)
                    if len(items) == 50:
                        proxy.sever()
                result = await handle.result(timeout=10)
            assert [i.seq for i in items] == list(range(1, 301))
            assert handle.text == "".join(f"p{i} " for i in range(1, 301)) == result.data["text"]
            assert handle.resumes == 1 and worker.stats["lost"] == 0 and worker.client.connection_count == 1
    finally:
        await proxy.close()


@pytest.mark.asyncio
async def test_worker_pipelines_tokens_without_a_round_trip_each(wserver):
    """A worker writes a run's events in order without waiting for each
    reply (protocol section 10 replies are checked in the background): on
    its wire, many tokens are out before the first of their replies is
    back. 20,000 tokens from one handler, as fast as it yields them; the
    rate is printed, not asserted (bench/ measures the gateway)."""
    agent, wkey, ukey = agent_keys(wserver, "rate")
    n = 20_000
    rec = Recorder()

    async def burst(run):
        for i in range(n):
            yield "x"

    async with AgentWorker(wserver.ws_url, api_key=wkey, agent_id=agent, trace=rec) as worker:
        await worker.start(burst)
        async with MimoSynapse(wserver.ws_url, api_key=ukey) as syn:
            started = time.monotonic()
            handle = syn.query("fast")
            result = await handle.result(timeout=60)
            took = time.monotonic() - started
    assert len(handle.text) == n and handle.last_seq == n + 1 and result.data == {"text": "x" * n}
    print(f"{n} tokens worker -> client in {took:.2f}s: {n / took:,.0f} tokens/s")
    outstanding, most = set(), 0
    for _, d, f in rec.frames:
        if d == "send" and f[3] == "token":
            outstanding.add(f[1])
            most = max(most, len(outstanding))
        elif d == "recv" and f[3] == "phx_reply":
            outstanding.discard(f[1])
    assert most > 8, f"at most {most} tokens in flight: the worker waits for replies"
    assert not outstanding  # and every one was answered


@pytest.mark.asyncio
async def test_a_wildcard_worker_serves_every_agent_of_its_tenant(wserver):
    wkey = wserver.create_key(unique("any-w"), "--worker", "--agent", "*")
    agents = [unique("anyone") for _ in range(2)]
    users = [wserver.create_key(unique("any-u"), "--agent", a) for a in agents]

    async def whose(run):
        yield f"for {run.agent_id}"

    async with AgentWorker(wserver.ws_url, api_key=wkey, agent_id="*", capacity=4) as worker:
        await worker.start(whose)
        assert worker.topic == "agent:*"
        for agent, key in zip(agents, users):
            async with MimoSynapse(wserver.ws_url, api_key=key) as syn:
                assert (await syn.query("who is this for").result(timeout=10)).data == {"text": f"for {agent}"}
        assert worker.stats["results"] == 2
