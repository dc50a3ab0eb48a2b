"""Streaming HTTP agent backends (`backend = "http"`, issue 12 item 7;
docs/protocol.md section 10 "HTTP backends"), through the real server and a
real streaming HTTP server on loopback (agent_http_backend.py): NDJSON and
SSE answers reach the client event by event, in order with seq; interrupt
and the run's timeout close the backend's request at once; HTTP 500, a
stream without a terminal event and a backend that is down each end the run
with agent_unavailable."""
import tempfile
import time
from pathlib import Path

import pytest

from agent_http_backend import AgentHttpBackend
from phx import PhxClient, ok
from synapse_server import SynapseServer, free_port, wait_until

TERMINAL = ("result", "error", "interrupted")


@pytest.fixture(scope="module")
def backend():
    b = AgentHttpBackend()
    yield b
    b.close()


@pytest.fixture(scope="module")
def server(backend):
    dead = free_port()  # nothing listens there
    cfg = Path(tempfile.mkdtemp(prefix="synapse-httpbackend-cfg-")) / "synapse.toml"
    cfg.write_text(f"""
[[cortex.routes]]
agents = "hb-*"
backend = "http"
url = "{backend.url('/agent')}"

[[cortex.routes]]
agents = "down-*"
backend = "http"
url = "http://127.0.0.1:{dead}/agent"
""")
    with SynapseServer(flags={"--config": str(cfg)}) as s:
        yield s


_names = iter(range(1, 10_000))


async def client_for(server, prefix="hb"):
    agent = f"{prefix}-{next(_names)}"
    key = server.create_key(f"{agent}-client", "--agent", agent)
    c = await PhxClient.connect(server.ws(key))
    ok(await c.join(f"cortex:{agent}"))
    return c, agent, f"cortex:{agent}"


async def collect(c, topic, run_id, timeout=10):
    """The run's pushes up to its terminal one, each with its arrival time."""
    events = []
    while True:
        f = await c.expect(lambda f: f[2] == topic and f[1] is None and f[4].get("run_id") == run_id, timeout,
                           f"events of {run_id}")
        events.append((time.time(), f))
        if f[3] in TERMINAL:
            return events


async def no_more(c, run_id, quiet=0.3):
    return [f for f in await c.drain(quiet) if f[1] is None and f[4].get("run_id") == run_id]


def run_of(backend, run_id):
    return next(r for r in list(backend.runs) if r["run_id"] == run_id)


async def streams_in_order(server, backend, mode):
    c, agent, topic = await client_for(server)
    r = ok(await c.request(topic, "query", {"q": f"{mode} what is new", "ref": "q1"}))
    assert r["status"] == "processing"
    rid = r["run_id"]
    events = await collect(c, topic, rid)
    frames = [f for _, f in events]
    assert [f[3] for f in frames] == ["thought", "token", "token", "token", "result"]
    assert [f[4]["seq"] for f in frames] == [1, 2, 3, 4, 5]
    assert all(f[4]["ref"] == "q1" for f in frames)
    assert frames[0][4]["thought"] == {"type": "thought", "content": f"reading '{mode} what is new'"}
    assert "".join(f[4]["delta"] for f in frames if f[3] == "token") == "tok0 tok1 tok2 "
    assert frames[-1][4]["status"] == "success"
    assert frames[-1][4]["data"] == {"answer": f"{mode} what is new", "by": "http"}
    # Relayed as they were written, not once the answer was complete: the
    # first token reached the client before the backend wrote its result.
    result_written = next(t for t, ev in backend.sent[rid] if ev == "result")
    first_token_seen = next(t for t, f in events if f[3] == "token")
    assert first_token_seen < result_written
    assert await no_more(c, rid) == []
    # What the backend was sent: the worker protocol's `run` payload.
    run = run_of(backend, rid)
    assert run["kind"] == "query" and run["q"] == f"{mode} what is new"
    assert run["caller"] == {"tenant": "default", "agent_id": agent}
    assert run["deadline_ms"] > time.time() * 1000
    await c.close()
    return rid


@pytest.mark.asyncio
async def test_ndjson_thoughts_and_tokens_then_result_reach_the_client_in_order_with_seq(server, backend):
    rid = await streams_in_order(server, backend, "ndjson")
    h = backend.headers[[r["run_id"] for r in backend.runs].index(rid)]
    assert h["content-type"] == "application/json"
    assert "application/x-ndjson" in h["accept"] and "text/event-stream" in h["accept"]


@pytest.mark.asyncio
async def test_sse_answer_reaches_the_client_in_order_with_seq(server, backend):
    await streams_in_order(server, backend, "sse")


@pytest.mark.asyncio
async def test_interrupt_answers_at_once_and_closes_the_backends_request(server, backend):
    c, _, topic = await client_for(server)
    r = ok(await c.request(topic, "query", {"q": "hang on"}))
    rid = r["run_id"]
    await c.expect(lambda f: f[3] == "token" and f[4].get("run_id") == rid, 5, "the first token")
    sent_at = time.time()
    ok(await c.request(topic, "interrupt", {"run_id": rid}))
    ended = await collect(c, topic, rid)
    assert ended[-1][1][3] == "interrupted"
    assert ended[-1][0] - sent_at < 0.5, "interrupted did not reach the client at once"
    wait_until(lambda: rid in backend.closed_at, 2.0, what="the backend to see its request closed")
    close_ms = (backend.closed_at[rid] - sent_at) * 1000
    print(f"interrupt -> backend saw the close: {close_ms:.1f} ms")
    assert close_ms < 500, f"the request was closed {close_ms:.0f} ms after the interrupt"
    assert await no_more(c, rid) == []
    await c.close()


@pytest.mark.asyncio
async def test_the_runs_timeout_closes_the_backends_request(server, backend):
    c, _, topic = await client_for(server)
    r = ok(await c.request(topic, "query", {"q": "hang long", "timeout_ms": 300}))
    rid = r["run_id"]
    ended = await collect(c, topic, rid)
    assert ended[-1][1][3] == "error" and ended[-1][1][4]["reason"] == "timeout"
    wait_until(lambda: rid in backend.closed_at, 2.0, what="the backend to see its request closed")
    assert backend.closed_at[rid] - ended[-1][0] < 0.5
    await c.close()


@pytest.mark.asyncio
async def test_http_500_ends_the_run_agent_unavailable(server, backend):
    c, _, topic = await client_for(server)
    r = ok(await c.request(topic, "query", {"q": "500 please"}))
    ended = await collect(c, topic, r["run_id"])
    assert [f[3] for _, f in ended] == ["error"]
    assert ended[-1][1][4]["reason"] == "agent_unavailable"
    assert "500" in ended[-1][1][4]["message"]
    await c.close()


@pytest.mark.asyncio
async def test_a_stream_without_a_terminal_event_ends_the_run_agent_unavailable(server, backend):
    c, _, topic = await client_for(server)
    r = ok(await c.request(topic, "query", {"q": "truncated story"}))
    ended = await collect(c, topic, r["run_id"])
    assert [f[3] for _, f in ended] == ["token", "error"]
    assert ended[-1][1][4]["reason"] == "agent_unavailable"
    assert [f[4]["seq"] for _, f in ended] == [1, 2]
    await c.close()


@pytest.mark.asyncio
async def test_a_backend_that_is_down_ends_the_run_agent_unavailable_at_once(server, backend):
    c, _, topic = await client_for(server, prefix="down")
    t0 = time.time()
    r = ok(await c.request(topic, "query", {"q": "anyone there"}))
    ended = await collect(c, topic, r["run_id"])
    assert [f[3] for _, f in ended] == ["error"]
    assert ended[-1][1][4]["reason"] == "agent_unavailable"
    assert ended[-1][0] - t0 < 2.0
    await c.close()
