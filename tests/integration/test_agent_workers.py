"""Agent workers behind cortex:<agent_id> (issue 12; docs/protocol.md section
10), through the real server and real worker processes
(agent_worker_proc.py, raw WebSocket): streaming in order with seq and one
terminal event, least-loaded sharing, a worker SIGKILLed mid-run, the
re-dispatch of a run that streamed nothing, interrupt reaching the worker as
`cancel` within 50 ms, 200 concurrent runs over 4 workers, a hostile worker,
worker credentials, routing (workers, workers_then_builtin), call_tool as
the caller, and worker-declared tools."""
import asyncio
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from phx import PhxClient, error, ok
from synapse_server import SynapseServer, wait_until

HERE = Path(__file__).resolve().parent
TERMINAL = ("result", "error", "interrupted")

CONFIG = """
[cortex]
backend = "workers"

[[cortex.routes]]
agents = "fallback-*"
backend = "workers_then_builtin"

[[cortex.routes]]
agents = "plain"
backend = "builtin"
"""


@pytest.fixture(scope="module")
def server():
    cfg = Path(tempfile.mkdtemp(prefix="synapse-workers-cfg-")) / "synapse.toml"
    cfg.write_text(CONFIG)
    with SynapseServer(flags={"--config": str(cfg), "--max-running": "0"}) as s:
        yield s


class WorkerProc:
    """One worker process; its stdout (one JSON object a line) is collected
    by a thread, so a line the worker printed before a client saw its effect
    may still be on its way: read what a test asserts on with wait()."""

    def __init__(self, server, key, topic, **opts):
        args = [sys.executable, str(HERE / "agent_worker_proc.py"), "--url", server.ws(key), "--topic", topic]
        for k, v in opts.items():
            args += ["--" + k.replace("_", "-"), str(v)]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines = []
        self.raw = []
        self._t = threading.Thread(target=self._pump, daemon=True)
        self._t.start()

    def _pump(self):
        for line in self.proc.stdout:
            self.raw.append(line)
            try:
                self.lines.append(json.loads(line))
            except ValueError:
                pass

    def events(self, ev):
        return [x for x in list(self.lines) if x["ev"] == ev]

    def wait(self, ev, n=1, timeout=10.0, pred=None):
        wait_until(lambda: len([x for x in self.events(ev) if pred is None or pred(x)]) >= n, timeout,
                   what=f"{n} {ev} in worker output: {self.raw[-5:]}")
        return [x for x in self.events(ev) if pred is None or pred(x)]

    def joined(self):
        j = self.wait("joined")[0]["reply"]
        assert j["status"] == "ok", j
        return j["response"]

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def workers():
    made = []

    def start(*a, **kw):
        w = WorkerProc(*a, **kw)
        made.append(w)
        return w

    yield start
    for w in made:
        w.stop()


_names = iter(range(1, 10_000))


def keys_for(server, agent=None):
    """A client key and a worker key for a fresh agent id."""
    agent = agent or f"agent{next(_names)}"
    client = server.create_key(f"{agent}-client", "--agent", agent)
    worker = server.create_key(f"{agent}-worker", "--agent", agent, "--worker")
    return agent, client, worker


async def client_for(server, key, agent):
    c = await PhxClient.connect(server.ws(key))
    ok(await c.join(f"cortex:{agent}"))
    return c


async def collect(c, topic, run_id, timeout=10):
    events = []
    while True:
        f = await c.expect(lambda f: f[2] == topic and f[1] is None and f[4].get("run_id") == run_id, timeout,
                           f"events of {run_id}")
        events.append(f)
        if f[3] in TERMINAL:
            return events


async def no_more(c, run_id, quiet=0.3):
    return [f for f in await c.drain(quiet) if f[1] is None and f[4].get("run_id") == run_id]


@pytest.mark.asyncio
async def test_query_answered_by_a_worker_streams_thoughts_and_tokens_in_order(server, workers):
    agent, ck, wk = keys_for(server)
    w = workers(server, wk, f"agent:{agent}", name="A", thoughts=2, tokens=5)
    j = w.joined()
    assert j["agent_id"] == agent and j["capacity"] == 1 and j["worker_id"]
    c = await client_for(server, ck, agent)
    topic = f"cortex:{agent}"
    r = ok(await c.request(topic, "query", {"q": "hello worker", "ref": "q1"}))
    assert r["status"] == "processing" and r["ref"] == "q1"
    events = await collect(c, topic, r["run_id"])
    assert [f[3] for f in events] == ["thought"] * 2 + ["token"] * 5 + ["result"]
    assert [f[4]["seq"] for f in events] == list(range(1, 9))
    assert all(f[4]["ref"] == "q1" for f in events)
    assert events[0][4]["thought"] == {"type": "thought", "content": "thinking 0"}
    assert "".join(f[4]["delta"] for f in events if f[3] == "token") == "w0 w1 w2 w3 w4 "
    assert events[-1][4]["status"] == "success"
    assert events[-1][4]["data"] == {"answer": "hello worker", "worker": "A"}
    assert await no_more(c, r["run_id"]) == []
    run = w.wait("run")[0]["run"]
    assert run["kind"] == "query" and run["q"] == "hello worker" and run["run_id"] == r["run_id"]
    assert run["caller"]["agent_id"] == agent and run["caller"]["tenant"] == "default"
    assert run["deadline_ms"] > time.time() * 1000
    # Every event the worker sent was answered ok {} (the worker logs only other replies).
    assert w.events("reply") == []
    await c.close()


@pytest.mark.asyncio
async def test_two_workers_share_the_load_least_loaded_first(server, workers):
    agent, ck, wk = keys_for(server)
    a = workers(server, wk, f"agent:{agent}", name="A", capacity=4, tokens=6, interval_ms=50)
    b = workers(server, wk, f"agent:{agent}", name="B", capacity=4, tokens=6, interval_ms=50)
    a.joined(), b.joined()
    c = await client_for(server, ck, agent)
    topic = f"cortex:{agent}"
    ids = [ok(await c.request(topic, "query", {"q": f"q{i}"}))["run_id"] for i in range(4)]
    by = {}
    for rid in ids:
        ev = await collect(c, topic, rid)
        assert ev[-1][3] == "result", ev[-1]
        by[rid] = ev[-1][4]["data"]["worker"]
    # The runs overlap (each streams for ~300 ms): least-loaded gives each worker two.
    assert sorted(by.values()) == ["A", "A", "B", "B"], by
    a.wait("run", 2), b.wait("run", 2)
    assert len(a.events("run")) == 2 and len(b.events("run")) == 2
    await c.close()


@pytest.mark.asyncio
async def test_a_worker_sigkilled_mid_run_ends_its_runs_agent_unavailable(server, workers):
    agent, ck, wk = keys_for(server)
    w = workers(server, wk, f"agent:{agent}", mode="hold", capacity=2)
    w.joined()
    c = await client_for(server, ck, agent)
    topic = f"cortex:{agent}"
    ids = [ok(await c.request(topic, "query", {"q": f"q{i}"}))["run_id"] for i in range(2)]
    for rid in ids:
        await c.expect(lambda f: f[3] == "token" and f[4].get("run_id") == rid, 5)
    started = time.monotonic()
    w.kill()
    for rid in ids:
        ev = await collect(c, topic, rid, timeout=5)
        assert ev[-1][3] == "error" and ev[-1][4]["reason"] == "agent_unavailable", ev[-1]
    assert time.monotonic() - started < 2.0
    for rid in ids:
        assert await no_more(c, rid, 0.1) == []
    await c.close()


@pytest.mark.asyncio
async def test_a_run_that_streamed_nothing_is_redispatched_to_another_worker(server, workers):
    agent, ck, wk = keys_for(server)
    silent = workers(server, wk, f"agent:{agent}", mode="silent", name="S")
    silent.joined()
    c = await client_for(server, ck, agent)
    topic = f"cortex:{agent}"
    r = ok(await c.request(topic, "query", {"q": "second chance"}))
    silent.wait("run")
    other = workers(server, wk, f"agent:{agent}", name="B", tokens=3)
    other.joined()
    silent.kill()
    events = await collect(c, topic, r["run_id"])
    assert events[-1][3] == "result" and events[-1][4]["data"]["worker"] == "B", events[-1]
    assert [f[4]["seq"] for f in events] == list(range(1, len(events) + 1))
    assert other.wait("run")[0]["run"]["run_id"] == r["run_id"]
    await c.close()


@pytest.mark.asyncio
async def test_interrupt_reaches_the_worker_as_cancel_within_50ms_and_later_events_are_dropped(server, workers):
    agent, ck, wk = keys_for(server)
    w = workers(server, wk, f"agent:{agent}", mode="hold")
    w.joined()
    c = await client_for(server, ck, agent)
    topic = f"cortex:{agent}"
    r = ok(await c.request(topic, "query", {"q": "long answer"}))
    rid = r["run_id"]
    await c.expect(lambda f: f[3] == "token" and f[4].get("run_id") == rid, 5)
    sent_at = time.time()
    ref = await c.send(topic, "interrupt", {"run_id": rid})
    ok(await c.reply(ref))
    ended = await collect(c, topic, rid)
    assert ended[-1][3] == "interrupted"
    cancel = w.wait("cancel")[0]
    assert cancel["run_id"] == rid and cancel["reason"] == "interrupted"
    latency_ms = (cancel["t"] - sent_at) * 1000
    assert latency_ms < 50, f"cancel reached the worker {latency_ms:.1f} ms after the interrupt"
    # The worker's token after the cancel is answered {"dropped": true} and never reaches the client.
    dropped = w.wait("reply", pred=lambda x: x["run_id"] == rid)[0]
    assert dropped["reply"] == {"status": "ok", "response": {"dropped": True}}
    assert await no_more(c, rid) == []
    await c.close()


@pytest.mark.asyncio
async def test_200_concurrent_runs_over_4_workers_each_end_exactly_once(server, workers):
    agent, ck, wk = keys_for(server)
    ws = [workers(server, wk, f"agent:{agent}", name=f"W{i}", capacity=100, tokens=3, interval_ms=5)
          for i in range(4)]
    for w in ws:
        w.joined()
    c = await client_for(server, ck, agent)
    topic = f"cortex:{agent}"
    refs = [await c.send(topic, "query", {"q": f"q{i}", "ref": f"r{i}"}) for i in range(200)]
    ids = {}
    for ref in refs:
        ids[ok(await c.reply(ref, 10))["run_id"]] = []
    terminals = {}
    deadline = time.monotonic() + 30
    while len(terminals) < 200 and time.monotonic() < deadline:
        f = await c.expect(lambda f: f[2] == topic and f[1] is None, 10)
        rid = f[4]["run_id"]
        ids[rid].append(f)
        if f[3] in TERMINAL:
            terminals[rid] = terminals.get(rid, 0) + 1
    late = await c.drain(0.5)
    for f in late:
        if f[1] is None and f[3] in TERMINAL:
            terminals[f[4]["run_id"]] += 1
    assert len(terminals) == 200 and set(terminals.values()) == {1}
    for rid, events in ids.items():
        assert [f[3] for f in events] == ["thought"] * 2 + ["token"] * 3 + ["result"], (rid, events)
        assert [f[4]["seq"] for f in events] == list(range(1, 7))
    wait_until(lambda: sum(len(w.events("run")) for w in ws) >= 200, 10, what="200 runs in the workers' output")
    per_worker = [len(w.events("run")) for w in ws]
    assert sum(per_worker) == 200 and min(per_worker) > 0, per_worker
    m = server.metrics()
    assert m["synapse_agent_workers"] >= 4
    # Every ownership ended with its run.
    wait_until(lambda: server.metrics()["synapse_agent_worker_runs"] == 0, 5, what="no run owned by a worker")
    await c.close()


@pytest.mark.asyncio
async def test_a_hostile_worker_gets_errors_is_closed_past_its_budget_and_the_run_ends(server, workers):
    agent, ck, wk = keys_for(server)
    # Bad events only (no malformed frames): the worker error budget (20 a minute) closes it.
    w = workers(server, wk, f"agent:{agent}", mode="hostile", hostile_count=30, hostile_malformed=0)
    w.joined()
    c = await client_for(server, ck, agent)
    topic = f"cortex:{agent}"
    r = ok(await c.request(topic, "query", {"q": "are you there"}))
    ev = await collect(c, topic, r["run_id"])
    assert ev[-1][3] == "error" and ev[-1][4]["reason"] == "agent_unavailable", ev[-1]
    closed = w.wait("closed")[0]
    assert closed["code"] == 1008
    reasons = {x["reply"]["response"]["reason"] for x in w.events("reply") if x["reply"]["status"] == "error"}
    assert {"unknown_run", "unknown_event", "invalid_payload"} <= reasons, reasons
    assert server.saw_log(lambda line: "more than 20 errors in a minute" in line)
    await c.close()


@pytest.mark.asyncio
async def test_malformed_frames_from_a_worker_close_it_too_and_the_run_ends(server, workers):
    agent, ck, wk = keys_for(server)
    w = workers(server, wk, f"agent:{agent}", mode="hostile", hostile_count=30)
    w.joined()
    c = await client_for(server, ck, agent)
    topic = f"cortex:{agent}"
    r = ok(await c.request(topic, "query", {"q": "garbage in"}))
    ev = await collect(c, topic, r["run_id"])
    assert ev[-1][3] == "error" and ev[-1][4]["reason"] == "agent_unavailable", ev[-1]
    assert w.wait("closed")[0]["code"] == 1008
    await c.close()


@pytest.mark.asyncio
async def test_only_worker_credentials_join_agent_topics_and_they_cannot_query(server):
    agent, ck, wk = keys_for(server)
    c = await PhxClient.connect(server.ws(ck))
    error(await c.join(f"agent:{agent}"), "forbidden")
    await c.close()
    w = await PhxClient.connect(server.ws(wk))
    error(await w.join(f"cortex:{agent}"), "forbidden")
    error(await w.join("agent:someone-else"), "forbidden")
    error(await w.join("agent:*"), "forbidden")
    error(await w.join(f"agent:{agent}", {"capacity": 0}), "invalid_payload")
    error(await w.join(f"agent:{agent}", {"tools": [{"name": "memory.store"}]}), "invalid_payload")
    error(await w.join(f"agent:{agent}", {"tools": [{"name": "nodot"}]}), "invalid_payload")
    assert ok(await w.join(f"agent:{agent}", {"capacity": 3}))["capacity"] == 3
    await w.close()
    # A worker key for every agent of its tenant joins agent:* and any agent:<id>.
    star = server.create_key(f"star{next(_names)}", "--agent", "*", "--worker")
    s = await PhxClient.connect(server.ws(star))
    ok(await s.join("agent:*"))
    ok(await s.join(f"agent:{agent}"))
    await s.close()
    # Its tokens are worker tokens too.
    token = server.token(wk)
    t = await PhxClient.connect(server.ws(token=token))
    error(await t.join(f"cortex:{agent}"), "forbidden")
    ok(await t.join(f"agent:{agent}"))
    await t.close()
    # --worker with --admin is refused by the CLI.
    assert server.keys_cli("create", "--name", "bad", "--worker", "--admin").returncode != 0


@pytest.mark.asyncio
async def test_a_star_worker_serves_every_agent_of_its_tenant(server, workers):
    agent, ck, _ = keys_for(server)
    star = server.create_key(f"star{next(_names)}", "--agent", "*", "--worker")
    w = workers(server, star, "agent:*", name="STAR", tokens=1)
    w.joined()
    c = await client_for(server, ck, agent)
    topic = f"cortex:{agent}"
    r = ok(await c.request(topic, "query", {"q": "anyone"}))
    ev = await collect(c, topic, r["run_id"])
    assert ev[-1][3] == "result" and ev[-1][4]["data"]["worker"] == "STAR"
    await c.close()


@pytest.mark.asyncio
async def test_workers_with_no_worker_end_the_run_agent_unavailable_at_once(server):
    agent, ck, _ = keys_for(server)
    c = await client_for(server, ck, agent)
    topic = f"cortex:{agent}"
    started = time.monotonic()
    r = ok(await c.request(topic, "query", {"q": "nobody home"}))
    ev = await collect(c, topic, r["run_id"], timeout=2)
    assert [f[3] for f in ev] == ["error"] and ev[0][4]["reason"] == "agent_unavailable"
    assert ev[0][4]["seq"] == 1
    assert time.monotonic() - started < 0.5
    await c.close()


@pytest.mark.asyncio
async def test_workers_then_builtin_falls_back_to_the_builtin_engine(server, workers):
    agent, ck, wk = keys_for(server, f"fallback-{next(_names)}")
    c = await client_for(server, ck, agent)
    topic = f"cortex:{agent}"
    r = ok(await c.request(topic, "query", {"q": "nothing stored"}))
    ev = await collect(c, topic, r["run_id"])
    assert ev[-1][3] == "result" and "results" in json.dumps(ev[-1][4]["data"]), ev[-1]
    assert not any(f[3] == "token" for f in ev)
    # With a worker connected, the worker answers.
    w = workers(server, wk, f"agent:{agent}", name="F", tokens=1)
    w.joined()
    r = ok(await c.request(topic, "query", {"q": "now a worker"}))
    ev = await collect(c, topic, r["run_id"])
    assert ev[-1][3] == "result" and ev[-1][4]["data"]["worker"] == "F"
    await c.close()


@pytest.mark.asyncio
async def test_a_builtin_route_ignores_workers(server, workers):
    _, ck, wk = keys_for(server, "plain")
    w = workers(server, wk, "agent:plain", name="P", tokens=1)
    w.joined()
    c = await client_for(server, ck, "plain")
    r = ok(await c.request("cortex:plain", "query", {"q": "builtin please"}))
    ev = await collect(c, "cortex:plain", r["run_id"])
    assert ev[-1][3] == "result" and ev[-1][4]["data"].get("worker") is None
    assert w.events("run") == []
    await c.close()


TOOLS = [{"name": "weather.lookup", "description": "Weather for a city",
          "input_schema": {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}}}]


@pytest.mark.asyncio
async def test_call_tool_stores_and_searches_memories_as_the_runs_caller(server, workers):
    agent, ck, wk = keys_for(server)
    w = workers(server, wk, f"agent:{agent}", mode="tools")
    w.joined()
    c = await client_for(server, ck, agent)
    topic = f"cortex:{agent}"
    r = ok(await c.request(topic, "query", {"q": "zebras prefer quiet mornings"}))
    ev = await collect(c, topic, r["run_id"])
    assert ev[-1][3] == "result", ev[-1]
    data = ev[-1][4]["data"]
    assert data["stored"]["status"] == "ok", data
    found = json.dumps(data["found"])
    assert data["found"]["status"] == "ok" and "zebras prefer quiet mornings" in found, data
    # The memory is the client's: its own memory.search finds it.
    t = ok(await c.request(topic, "tool", {"tool": "memory.search", "args": {"query": "zebras"}}))
    ev = await collect(c, topic, t["run_id"])
    assert "zebras prefer quiet mornings" in json.dumps(ev[-1][4]["data"])
    await c.close()


@pytest.mark.asyncio
async def test_call_tool_errors_are_answered(server):
    agent, ck, wk = keys_for(server)
    w = await PhxClient.connect(server.ws(wk))
    ok(await w.join(f"agent:{agent}"))
    c = await client_for(server, ck, agent)
    r = ok(await c.request(f"cortex:{agent}", "query", {"q": "tool errors"}))
    run = await w.push_event(f"agent:{agent}", "run")
    rid = run[4]["run_id"]
    assert rid == r["run_id"]
    error(await w.request(f"agent:{agent}", "call_tool", {"run_id": rid, "name": "no.such"}), "unknown_tool")
    error(await w.request(f"agent:{agent}", "call_tool", {"run_id": rid, "name": "memory.store", "args": {}}),
          "invalid_args")
    error(await w.request(f"agent:{agent}", "call_tool", {"run_id": "run_other", "name": "memory.stats"}),
          "unknown_run")
    got = ok(await w.request(f"agent:{agent}", "call_tool", {"run_id": rid, "name": "memory.stats"}))
    assert "data" in got
    ok(await w.request(f"agent:{agent}", "result", {"run_id": rid, "data": 1}))
    assert (await w.request(f"agent:{agent}", "token", {"run_id": rid, "text": "late"}))["response"] == {
        "dropped": True}
    await w.close()
    await c.close()


@pytest.mark.asyncio
async def test_worker_tools_are_listed_and_tool_runs_go_to_the_worker(server, workers):
    agent, ck, wk = keys_for(server)
    c = await client_for(server, ck, agent)
    topic = f"cortex:{agent}"
    names = [t["name"] for t in ok(await c.request(topic, "tools", {}))["tools"]]
    assert "weather.lookup" not in names
    error(await c.request(topic, "tool", {"tool": "weather.lookup", "args": {"city": "Oslo"}}), "unknown_tool")
    w = workers(server, wk, f"agent:{agent}", mode="tools", tools_json=json.dumps(TOOLS))
    w.joined()
    tools = {t["name"]: t for t in ok(await c.request(topic, "tools", {}))["tools"]}
    assert tools["weather.lookup"]["provider"] == "worker"
    assert tools["weather.lookup"]["input_schema"] == TOOLS[0]["input_schema"]
    assert "memory.search" in tools
    r = ok(await c.request(topic, "tool", {"tool": "weather.lookup", "args": {"city": "Oslo"}}))
    assert r["status"] == "running"
    ev = await collect(c, topic, r["run_id"])
    assert ev[-1][3] == "result" and ev[-1][4]["data"] == {"tool": "weather.lookup", "args": {"city": "Oslo"}}
    run = w.wait("run", pred=lambda x: x["run"].get("kind") == "tool")[-1]["run"]
    assert run["kind"] == "tool" and run["name"] == "weather.lookup" and run["args"] == {"city": "Oslo"}
    error(await c.request(topic, "tool", {"tool": "weather.lookup", "args": {}}), "invalid_args")
    await c.close()


@pytest.mark.asyncio
async def test_a_worker_silent_past_the_idle_timeout_ends_its_runs_agent_unavailable(fresh_server, workers):
    s = fresh_server({"--cortex-backend": "workers", "--idle-timeout-ms": "1000"})
    agent, ck, wk = keys_for(s)
    w = workers(s, wk, f"agent:{agent}", mode="hold")
    w.joined()
    c = await client_for(s, ck, agent)
    topic = f"cortex:{agent}"
    r = ok(await c.request(topic, "query", {"q": "then silence"}))
    await c.expect(lambda f: f[3] == "token" and f[4].get("run_id") == r["run_id"], 5)
    w.proc.send_signal(signal.SIGSTOP)  # alive, connected, and silent
    try:
        started = time.monotonic()
        end = None
        while end is None and time.monotonic() - started < 5:
            await c.heartbeat()  # the client itself stays active
            for f in list(c.buffer):
                if f[1] is None and f[4].get("run_id") == r["run_id"] and f[3] in TERMINAL:
                    end = f
            await asyncio.sleep(0.2)
        assert end is not None, "the run did not end"
        assert end[3] == "error" and end[4]["reason"] == "agent_unavailable"
        assert s.saw_log(lambda line: "code=4000" in line and f"agent={agent}" in line)
    finally:
        w.proc.send_signal(signal.SIGCONT)
    await c.close()


@pytest.mark.slow  # 10 MB through the gateway with a time bound: release builds only
@pytest.mark.asyncio
async def test_a_slow_client_does_not_slow_the_worker(fresh_server, workers):
    """The client stops reading; the worker streams 10 MB for it regardless,
    every event answered at once; the client alone is closed (4008)."""
    s = fresh_server({"--cortex-backend": "workers", "--outbound-queue-bytes": str(256 * 1024)})
    agent, ck, wk = keys_for(s)
    w = workers(s, wk, f"agent:{agent}", tokens=5000, token_bytes=2048, thoughts=0)
    w.joined()
    # max_queue=1: once one message waits unread, the client stops reading its socket.
    c = await PhxClient.connect(s.ws(ck), max_queue=1)
    ok(await c.join(f"cortex:{agent}"))
    await c.send(f"cortex:{agent}", "query", {"q": "a long answer"})
    started = time.monotonic()
    acked = w.wait("result_acked", timeout=20)[0]
    took = time.monotonic() - started
    assert acked["reply"] == {"status": "ok", "response": {}}, acked
    assert took < 10, f"the worker needed {took:.1f} s to stream 10 MB"
    assert s.saw_log(lambda line: "code=4008" in line and f"agent={agent}" in line, timeout=10)
    assert w.events("closed") == []  # the worker stays connected
    c.ws.transport.abort()


@pytest.mark.asyncio
async def test_workers_have_their_own_budgets(fresh_server):
    """With client limits of 2 connections per key and 3 messages a minute, a
    worker key still connects 4 times and streams 50 events on each."""
    s = fresh_server({"--cortex-backend": "workers", "--key-max-connections": "2", "--messages-per-min": "3",
                      "--message-burst": "3"}, relaxed=False)
    agent, ck, wk = keys_for(s)
    ws = []
    for _ in range(4):
        w = await PhxClient.connect(s.ws(wk))
        ok(await w.join(f"agent:{agent}", {"capacity": 1}))
        ws.append(w)
    c = await client_for(s, ck, agent)
    r = ok(await c.request(f"cortex:{agent}", "query", {"q": "budget"}))
    owner = None
    for w in ws:
        for f in await w.drain(0.2):
            if f[3] == "run":
                owner = w
    assert owner is not None
    for i in range(50):
        ok(await owner.request(f"agent:{agent}", "token", {"run_id": r["run_id"], "text": f"{i} "}))
    ok(await owner.request(f"agent:{agent}", "result", {"run_id": r["run_id"], "data": None}))
    ev = await collect(c, f"cortex:{agent}", r["run_id"])
    assert len(ev) == 51 and ev[-1][3] == "result"
    for w in ws:
        await w.close()
    await c.close()


@pytest.mark.asyncio
async def test_a_run_past_its_timeout_ends_and_the_worker_is_told(server, workers):
    agent, ck, wk = keys_for(server)
    w = workers(server, wk, f"agent:{agent}", mode="hold")
    w.joined()
    c = await client_for(server, ck, agent)
    topic = f"cortex:{agent}"
    r = ok(await c.request(topic, "query", {"q": "slow", "timeout_ms": 300}))
    ev = await collect(c, topic, r["run_id"])
    assert ev[-1][3] == "error" and ev[-1][4]["reason"] == "timeout"
    run = w.events("run")[0]["run"]
    assert 0 < run["deadline_ms"] - w.events("run")[0]["t"] * 1000 <= 400
    cancel = w.wait("cancel")[0]
    assert cancel["run_id"] == r["run_id"] and cancel["reason"] == "timeout"
    await c.close()


@pytest.mark.asyncio
async def test_without_redispatch_an_unstarted_run_ends_agent_unavailable(fresh_server, workers):
    s = fresh_server({"--cortex-backend": "workers", "--redispatch-unstarted": "false"})
    agent, ck, wk = keys_for(s)
    silent = workers(s, wk, f"agent:{agent}", mode="silent")
    silent.joined()
    c = await client_for(s, ck, agent)
    topic = f"cortex:{agent}"
    r = ok(await c.request(topic, "query", {"q": "no second chance"}))
    silent.wait("run")
    other = workers(s, wk, f"agent:{agent}", tokens=1)
    other.joined()
    silent.kill()
    ev = await collect(c, topic, r["run_id"])
    assert ev[-1][3] == "error" and ev[-1][4]["reason"] == "agent_unavailable"
    assert other.events("run") == []
    await c.close()


@pytest.mark.asyncio
async def test_token_frames_read_without_a_json_tree_are_answered_like_any_other(server):
    """A worker's `token {run_id, text}` with string fields only is read by the
    fast path (protocol/flat_frame.hpp); any other shape by the full decode.
    Both give the client the same deltas, in order, the run the same folded
    text, and the worker the same replies."""
    agent, ck, wk = keys_for(server)
    w = await PhxClient.connect(server.ws(wk))
    ok(await w.join(f"agent:{agent}", {"capacity": 1}))
    c = await client_for(server, ck, agent)
    topic, wtopic = f"cortex:{agent}", f"agent:{agent}"
    r = ok(await c.request(topic, "query", {"q": "paths"}))
    rid = r["run_id"]
    await w.push_event(wtopic, "run", pred=lambda f: f[4]["run_id"] == rid)
    jr = w.join_refs[wtopic]

    async def raw(payload_text, ref=None):
        """Sends a frame whose payload is `payload_text` verbatim; returns the reply if it has a ref."""
        head = json.dumps([jr, ref, wtopic, "token"])[:-1]
        await w.send_raw(head + ", " + payload_text + "]")
        return await w.reply(ref) if ref else None

    texts = []

    async def tok(payload_text, text, ref):
        assert (await raw(payload_text, ref)) == {"status": "ok", "response": {}}
        texts.append(text)

    rj = json.dumps(rid)
    await tok('{"run_id":%s,"text":"plain "}' % rj, "plain ", "t1")
    await tok(' { "text" : "ws first " , "run_id" : %s } ' % rj, "ws first ", "t2")
    await tok('{"run_id":%s,"text":"q\\"b\\\\s\\/\\n\\t\\r\\b\\f "}' % rj, 'q"b\\s/\n\t\r\b\f ', "t3")
    await tok('{"run_id":%s,"text":"é😀 raw "}' % rj, "é😀 raw ", "t4")
    await tok('{"run_id":%s,"text":"\\u00e9\\ud83d\\ude00 esc "}' % rj, "é😀 esc ", "t5")  # \u: full decode
    await tok('{"run_id":%s,"text":"extra ","meta":"x"}' % rj, "extra ", "t6")
    await tok('{"run_id":%s,"text":"num ","n":1.5}' % rj, "num ", "t7")  # a number: full decode
    await tok('{"run_id":%s,"text":""}' % rj, "", "t8")
    # Errors: the same reasons and messages either way.
    e = error(await raw('{"run_id":%s}' % rj, "e1"), "invalid_payload")
    assert e["message"] == "text must be a string"
    e = error(await raw('{"run_id":%s,"text":5}' % rj, "e2"), "invalid_payload")
    assert e["message"] == "text must be a string"
    e = error(await raw('{"text":"x"}', "e3"), "invalid_payload")
    assert e["message"] == "run_id must be a string"
    error(await raw('{"run_id":"run_nope","text":"x"}', "e4"), "unknown_run")
    # Duplicate keys go to the full decode, which keeps one of them; the frame is answered either way.
    dup = await raw('{"run_id":%s,"text":"dup ","text":"dup "}' % rj, "t9")
    assert dup["status"] == "ok", dup
    texts.append("dup ")
    # No ref: no reply, the token still streams.
    await raw('{"run_id":%s,"text":"noref "}' % rj)
    texts.append("noref ")
    ok(await w.request(wtopic, "result", {"run_id": rid, "data": None}))
    ev = await collect(c, topic, rid)
    deltas = [f[4]["delta"] for f in ev if f[3] == "token"]
    assert deltas == texts
    assert [f[4]["seq"] for f in ev] == list(range(1, len(ev) + 1))
    assert all(f[4]["ref"] == r["ref"] and f[4]["run_id"] == rid for f in ev)
    assert set(ev[0][4]) == {"delta", "ref", "run_id", "seq"}
    # A token after the end: dropped, on either path.
    assert (await raw('{"run_id":%s,"text":"late"}' % rj, "l1")) == {"status": "ok", "response": {"dropped": True}}
    assert (await raw('{"run_id":%s,"text":"late","n":1}' % rj, "l2")) == {"status": "ok",
                                                                             "response": {"dropped": True}}
    # The folded text of a late attach is the deltas joined.
    a = await client_for(server, ck, agent)
    ok(await a.request(topic, "attach", {"run_id": rid}))
    snap = await a.push_event(topic, "snapshot", pred=lambda f: f[4]["run_id"] == rid)
    assert snap[4]["text"] == "".join(texts)
    for x in (w, c, a):
        await x.close()
