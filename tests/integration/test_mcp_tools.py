"""MCP servers as Synapse tools, through the real binary over WebSocket: the
official @modelcontextprotocol/server-everything (installed from npm into
tests/mcp by scripts/install-deps) and a scripted misbehaving server
(mcp_misbehaving.py) run as children over stdio per [[mcp.servers]]."""
import asyncio
import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from phx import PhxClient, error, ok
from synapse_server import REPO, SynapseServer, binary
from test_query import TOPIC, cortex, run_to_end

EVERYTHING = REPO / "tests" / "mcp" / "node_modules" / ".bin" / "mcp-server-everything"
MISBEHAVING = Path(__file__).resolve().parent / "mcp_misbehaving.py"
PY = "/usr/bin/python3"

# Skipped on a machine without tests/mcp installed, but never in CI, where
# scripts/install-deps installs it: there a missing server must fail.
pytestmark = pytest.mark.skipif(not EVERYTHING.exists() and not os.environ.get("CI"),
                                reason="tests/mcp is not installed (scripts/install-deps runs npm ci there)")


def server_table(name, command, args, **extra):
    lines = ["[[mcp.servers]]", f"name = {json.dumps(name)}", f"command = {json.dumps(str(command))}",
             f"args = {json.dumps([str(a) for a in args])}"]
    for k, v in extra.items():
        lines.append(f"{k} = {json.dumps(v)}")
    return "\n".join(lines) + "\n"


def config_file(*tables, extra=""):
    fd, path = tempfile.mkstemp(prefix="synapse-mcp-", suffix=".toml")
    with os.fdopen(fd, "w") as f:
        f.write(extra + "\n" + "".join(tables))
    return path


def children(pid):
    """PIDs of the synapse process's children, with their command lines."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            kids = (task / "children").read_text().split()
        except OSError:
            continue
        for k in kids:
            try:
                out[int(k)] = (Path(f"/proc/{k}/cmdline").read_bytes().replace(b"\0", b" ").decode())
            except OSError:
                pass
    return out


def alive(pid):
    """Running (not gone, not a zombie waiting for its reparented reaper)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def child_pid(server, marker):
    for pid, cmd in children(server.pid).items():
        if marker in cmd:
            return pid
    return None


async def tools(c):
    return {t["name"]: t for t in ok(await c.request(TOPIC, "tools", {}))["tools"]}


async def wait_tools(c, pred, timeout=20.0):
    deadline = time.monotonic() + timeout
    while True:
        ts = await tools(c)
        if pred(ts):
            return ts
        if time.monotonic() > deadline:
            raise AssertionError(f"tools never matched; last: {sorted((n, t['available']) for n, t in ts.items())}")
        await asyncio.sleep(0.1)


def up(name):
    return lambda ts: name in ts and ts[name]["available"]


async def call(c, tool, args, **extra):
    return ok(await c.request(TOPIC, "tool", {"tool": tool, "args": args, **extra}))["ref"]


def state_events(path, event):
    p = Path(path)
    if not p.exists():
        return []
    return [e for e in map(json.loads, p.read_text().splitlines()) if e["event"] == event]


@pytest.fixture(scope="module")
def mcp_server():
    state = tempfile.mktemp(prefix="mcp-state-")
    cfg = config_file(
        server_table("everything", EVERYTHING, ["stdio"]),
        server_table("bad", PY, [MISBEHAVING, "--pages", "3", "--state", state], timeout_ms=1500, max_concurrent=3))
    s = SynapseServer(flags={"--config": cfg})
    s.mcp_state = state
    with s:
        yield s
    os.unlink(cfg)
    if os.path.exists(state):
        os.unlink(state)


# --- the real server-everything ------------------------------------------------

@pytest.mark.asyncio
async def test_everything_tools_appear_namespaced_with_their_schemas(mcp_server):
    c = await cortex(mcp_server)
    ts = await wait_tools(c, up("everything.echo"))
    for name in ("everything.echo", "everything.get-sum", "everything.trigger-long-running-operation"):
        assert ts[name]["provider"] == "mcp:everything" and ts[name]["available"] is True
    assert ts["everything.get-sum"]["input_schema"]["required"] == ["a", "b"]
    assert ts["everything.echo"]["description"]
    assert "memory.store" in ts  # the built-in tools are still there
    await wait_tools(c, up("bad.echo"))
    status, _, body = mcp_server.http("GET", "/metrics")
    assert status == 200
    samples = dict(l.rsplit(" ", 1) for l in body.splitlines() if l.startswith("synapse_mcp_"))
    assert float(samples["synapse_mcp_servers"]) == 2 and float(samples["synapse_mcp_servers_ready"]) == 2
    assert float(samples["synapse_mcp_server_starts"]) >= 2
    await c.close()


@pytest.mark.asyncio
async def test_echo_and_get_sum_round_trip(mcp_server):
    c = await cortex(mcp_server)
    await wait_tools(c, up("everything.echo"))
    events = await run_to_end(c, await call(c, "everything.echo", {"message": "hello over MCP"}))
    assert events[-1][3] == "result"
    assert events[-1][4]["data"] == {"content": [{"type": "text", "text": "Echo: hello over MCP"}]}
    events = await run_to_end(c, await call(c, "everything.get-sum", {"a": 19, "b": 23}))
    assert events[-1][3] == "result"
    content = events[-1][4]["data"]["content"]
    assert content[0]["type"] == "text" and "42" in content[0]["text"]
    # Arguments are checked against the server's inputSchema before a run exists.
    r = error(await c.request(TOPIC, "tool", {"tool": "everything.get-sum", "args": {"a": "x"}}), "invalid_args")
    assert {e["field"] for e in r["errors"]} == {"args.a", "args.b"}
    await c.close()


@pytest.mark.asyncio
async def test_long_running_operation_streams_progress_then_result(mcp_server):
    c = await cortex(mcp_server)
    await wait_tools(c, up("everything.trigger-long-running-operation"))
    ref = await call(c, "everything.trigger-long-running-operation", {"duration": 1, "steps": 4})
    events = await run_to_end(c, ref)
    progress = [f[4] for f in events if f[3] == "progress"]
    assert [p["progress"] for p in progress] == [1, 2, 3, 4]
    assert all(p["total"] == 4 for p in progress)
    assert events[-1][3] == "result"
    assert "completed" in events[-1][4]["data"]["content"][0]["text"]
    await c.close()


@pytest.mark.asyncio
async def test_interrupt_yields_interrupted_and_no_later_result(mcp_server):
    c = await cortex(mcp_server)
    await wait_tools(c, up("everything.trigger-long-running-operation"))
    ref = await call(c, "everything.trigger-long-running-operation", {"duration": 2, "steps": 4})
    first = await c.expect(lambda f: f[3] == "progress" and f[4].get("ref") == ref, 10)
    assert first[4]["progress"] == 1
    ok(await c.request(TOPIC, "interrupt", {"ref": ref}))
    end = await c.expect(lambda f: f[1] is None and f[4].get("ref") == ref and f[3] != "progress", 5)
    assert end[3] == "interrupted"
    # server-everything finishes the operation anyway; its late answer is dropped.
    late = [f for f in await c.drain(2.5) if f[4].get("ref") == ref]
    assert late == []
    events = await run_to_end(c, await call(c, "everything.echo", {"message": "still fine"}))
    assert events[-1][3] == "result"
    await c.close()


@pytest.mark.asyncio
async def test_killed_child_mid_call_is_tool_unavailable_and_its_tools_come_back(mcp_server):
    c = await cortex(mcp_server)
    await wait_tools(c, up("everything.echo"))
    old = child_pid(mcp_server, "mcp-server-everything")
    assert old
    ref = await call(c, "everything.trigger-long-running-operation", {"duration": 5, "steps": 5})
    await c.expect(lambda f: f[3] == "progress" and f[4].get("ref") == ref, 10)
    os.kill(old, signal.SIGKILL)
    events = await run_to_end(c, ref)
    assert events[-1][3] == "error" and events[-1][4]["reason"] == "tool_unavailable"
    assert "everything" in events[-1][4]["message"]
    # Meanwhile its tools are listed as unavailable, and a call ends at once.
    ts = await tools(c)
    assert ts["everything.echo"]["available"] is False
    events = await run_to_end(c, await call(c, "everything.echo", {"message": "too early"}))
    assert events[-1][3] == "error" and events[-1][4]["reason"] == "tool_unavailable"
    # Restarted after the backoff: a new child, the same tools, working again.
    await wait_tools(c, up("everything.echo"))
    new = child_pid(mcp_server, "mcp-server-everything")
    assert new and new != old
    events = await run_to_end(c, await call(c, "everything.echo", {"message": "back"}))
    assert events[-1][4]["data"]["content"][0]["text"] == "Echo: back"
    await c.close()


@pytest.mark.asyncio
async def test_python_sdk_sees_and_runs_mcp_tools(mcp_server):
    """What docs/mcp.md shows: the SDK's tools() and tool() on an MCP tool."""
    import sys
    sys.path.insert(0, str(REPO / "clients" / "python"))
    from mimo_synapse import MimoSynapse, Progress
    async with MimoSynapse(mcp_server.ws_url, api_key=mcp_server.admin_key) as syn:
        deadline = time.monotonic() + 20
        while True:
            infos = {t.name: t for t in await syn.tools()}
            if "everything.echo" in infos and infos["everything.echo"].available:
                break
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        assert infos["everything.echo"].provider == "mcp:everything"
        assert infos["memory.store"].provider == "builtin"
        handle = syn.tool("everything.trigger-long-running-operation", {"duration": 1, "steps": 2})
        steps = [p async for p in handle]
        result = await handle.result(timeout=10)
    assert all(isinstance(p, Progress) for p in steps) and [p.progress for p in steps] == [1, 2]
    assert "completed" in result.data["content"][0]["text"]


# --- the misbehaving server ------------------------------------------------------

@pytest.mark.asyncio
async def test_tools_list_pages_are_followed(mcp_server):
    c = await cortex(mcp_server)
    ts = await wait_tools(c, up("bad.echo"))
    bad = {n for n in ts if n.startswith("bad.")}
    assert bad == {f"bad.{t}" for t in ("echo", "fail", "hang", "freeze", "garbage", "crash", "add_tool", "slow",
                                         "stderr_flood", "cancellations", "ticker")}
    await c.close()


@pytest.mark.asyncio
async def test_is_error_is_tool_error(mcp_server):
    c = await cortex(mcp_server)
    await wait_tools(c, up("bad.fail"))
    events = await run_to_end(c, await call(c, "bad.fail", {}))
    assert events[-1][3] == "error" and events[-1][4]["reason"] == "tool_error"
    assert events[-1][4]["message"] == "it failed on purpose"
    await c.close()


@pytest.mark.asyncio
async def test_list_changed_refreshes_the_registry(mcp_server):
    c = await cortex(mcp_server)
    await wait_tools(c, up("bad.add_tool"))
    assert "bad.added" not in await tools(c)
    assert (await run_to_end(c, await call(c, "bad.add_tool", {})))[-1][3] == "result"
    await wait_tools(c, up("bad.added"), timeout=5)
    assert (await run_to_end(c, await call(c, "bad.added", {})))[-1][3] == "result"
    await c.close()


@pytest.mark.asyncio
async def test_interrupt_sends_notifications_cancelled(mcp_server):
    c = await cortex(mcp_server)
    await wait_tools(c, up("bad.hang"))
    ref = await call(c, "bad.hang", {})
    await asyncio.sleep(0.2)
    ok(await c.request(TOPIC, "interrupt", {"ref": ref, "reason": "changed my mind"}))
    end = await c.expect(lambda f: f[1] is None and f[4].get("ref") == ref, 5)
    assert end[3] == "interrupted"
    events = await run_to_end(c, await call(c, "bad.cancellations", {}))
    ids = events[-1][4]["data"]["structuredContent"]["ids"]
    assert len(ids) >= 1 and all(isinstance(i, int) for i in ids)
    # A run that reaches its own timeout_ms is cancelled at the server too.
    ref = await call(c, "bad.hang", {}, timeout_ms=300)
    events = await run_to_end(c, ref)
    assert events[-1][3] == "error" and events[-1][4]["reason"] == "timeout"
    await asyncio.sleep(0.2)
    events = await run_to_end(c, await call(c, "bad.cancellations", {}))
    assert len(events[-1][4]["data"]["structuredContent"]["ids"]) == len(ids) + 1
    await c.close()


@pytest.mark.asyncio
async def test_unanswered_call_times_out_unavailable_but_a_live_server_is_kept(mcp_server):
    c = await cortex(mcp_server)
    await wait_tools(c, up("bad.hang"))
    starts = len(state_events(mcp_server.mcp_state, "start"))
    t0 = time.monotonic()
    events = await run_to_end(c, await call(c, "bad.hang", {}), timeout=10)
    took = time.monotonic() - t0
    assert events[-1][3] == "error" and events[-1][4]["reason"] == "tool_unavailable"
    assert "1500 ms" in events[-1][4]["message"] and 1.4 < took < 4
    await asyncio.sleep(1.0)  # the ping that follows is answered: no restart
    assert len(state_events(mcp_server.mcp_state, "start")) == starts
    assert (await run_to_end(c, await call(c, "bad.echo", {"text": "x"})))[-1][3] == "result"
    await c.close()


@pytest.mark.parametrize("tool", ["garbage", "crash", "freeze"])
@pytest.mark.asyncio
async def test_broken_server_gives_tool_unavailable_and_restarts(mcp_server, tool):
    c = await cortex(mcp_server)
    await wait_tools(c, up("bad.echo"))
    starts = len(state_events(mcp_server.mcp_state, "start"))
    old = child_pid(mcp_server, "mcp_misbehaving.py")
    # A call in flight on the same child ends too.
    other = await call(c, "bad.slow", {"ms": 20000})
    events = await run_to_end(c, await call(c, f"bad.{tool}", {}), timeout=15)
    assert events[-1][3] == "error" and events[-1][4]["reason"] == "tool_unavailable"
    events = await run_to_end(c, other, timeout=10)
    assert events[-1][3] == "error" and events[-1][4]["reason"] == "tool_unavailable"
    # (A frozen child is found out by the ping after its call's timeout, so
    # its tools go unavailable a moment after the call ended.)
    deadline = time.monotonic() + 20
    while len(state_events(mcp_server.mcp_state, "start")) == starts:
        assert time.monotonic() < deadline, "the child was not restarted"
        await asyncio.sleep(0.1)
    await wait_tools(c, up("bad.echo"), timeout=20)
    assert len(state_events(mcp_server.mcp_state, "start")) == starts + 1
    assert child_pid(mcp_server, "mcp_misbehaving.py") != old
    assert not Path(f"/proc/{old}").exists()  # killed and reaped
    assert (await run_to_end(c, await call(c, "bad.echo", {"text": "again"})))[-1][3] == "result"
    if tool == "crash":  # what it wrote to stderr as it died reached the log
        assert any("mcp server bad stderr: crashing on purpose" in l for l in mcp_server.log_lines)
    await c.close()


@pytest.mark.asyncio
async def test_progress_restarts_the_call_timeout(mcp_server):
    """timeout_ms is 1500 for `bad`; a call that reports progress every 400 ms
    for 2.4 s is not cut off."""
    c = await cortex(mcp_server)
    await wait_tools(c, up("bad.ticker"))
    events = await run_to_end(c, await call(c, "bad.ticker", {"steps": 6, "interval_ms": 400}), timeout=10)
    assert [f[4]["progress"] for f in events if f[3] == "progress"] == [1, 2, 3, 4, 5, 6]
    assert events[-1][3] == "result" and events[-1][4]["data"]["content"][0]["text"] == "ticked 6"
    await c.close()


@pytest.mark.slow
@pytest.mark.asyncio
async def test_server_hung_while_idle_is_found_by_the_keepalive_ping(mcp_server):
    """SIGSTOP: the child is there but answers nothing. With no call to time
    out, the ping every 15 s finds it; it is killed and started again."""
    c = await cortex(mcp_server)
    await wait_tools(c, up("bad.echo"))
    old = child_pid(mcp_server, "mcp_misbehaving.py")
    os.kill(old, signal.SIGSTOP)
    t0 = time.monotonic()
    await wait_tools(c, lambda ts: not ts["bad.echo"]["available"], timeout=25)
    assert time.monotonic() - t0 < 15 + 1.5 + 2  # keepalive interval + the ping's wait (timeout_ms) + slack
    assert any("gave no answer to ping" in l for l in mcp_server.log_lines)
    await wait_tools(c, up("bad.echo"), timeout=20)
    assert child_pid(mcp_server, "mcp_misbehaving.py") != old
    assert not Path(f"/proc/{old}").exists()
    await c.close()


@pytest.mark.asyncio
async def test_child_stderr_is_logged_rate_limited(mcp_server):
    c = await cortex(mcp_server)
    await wait_tools(c, up("bad.stderr_flood"))
    before = len(mcp_server.log_lines)
    assert (await run_to_end(c, await call(c, "bad.stderr_flood", {"lines": 500})))[-1][3] == "result"
    await asyncio.sleep(0.5)
    lines = mcp_server.log_lines[before:]
    logged = [l for l in lines if "mcp server bad stderr: flood line" in l]
    assert 1 <= len(logged) <= 50
    assert any("counted, not logged" in l for l in lines)
    await c.close()


# --- budgets, startup, shutdown, config -------------------------------------------

@pytest.mark.asyncio
async def test_slow_mcp_server_does_not_starve_memory_tools(fresh_server):
    """One cortex worker; an MCP server whose calls hang. Its calls take no
    worker, so memory.* runs at once; past its max_concurrent it is refused."""
    cfg = config_file(server_table("slow", PY, [MISBEHAVING], timeout_ms=30000, max_concurrent=3))
    s = fresh_server({"--config": cfg, "--workers": "1", "--max-running": "0"})
    c = await cortex(s)
    await wait_tools(c, up("slow.hang"))
    refs = [await call(c, "slow.hang", {}) for _ in range(3)]
    r = error(await c.request(TOPIC, "tool", {"tool": "slow.hang", "args": {}}), "overloaded")
    assert "max_concurrent" in r["message"] and r["retry_after_ms"] > 0
    t0 = time.monotonic()
    for i in range(5):
        events = await run_to_end(c, await call(c, "memory.store", {"content": f"not starved {i}"}))
        assert events[-1][3] == "result"
    assert time.monotonic() - t0 < 2.0
    q = ok(await c.request(TOPIC, "query", {"q": "starved"}))["ref"]
    assert (await run_to_end(c, q))[-1][3] == "result"
    # An interrupted call keeps its slot until the server answers it (it never
    # does here, so until timeout_ms): still refused.
    ok(await c.request(TOPIC, "interrupt", {"ref": refs[0]}))
    error(await c.request(TOPIC, "tool", {"tool": "slow.hang", "args": {}}), "overloaded")
    await c.close()
    os.unlink(cfg)


@pytest.mark.asyncio
async def test_concurrent_calls_from_many_connections_each_get_their_own_answer(fresh_server):
    cfg = config_file(server_table("everything", EVERYTHING, ["stdio"], max_concurrent=16))
    s = fresh_server({"--config": cfg})
    clients = [await cortex(s) for _ in range(4)]
    await wait_tools(clients[0], up("everything.echo"))

    async def one(c, i):
        refs = [await call(c, "everything.echo", {"message": f"c{i} m{j}"}) for j in range(4)]
        for j, ref in enumerate(refs):
            events = await run_to_end(c, ref)
            assert events[-1][4]["data"]["content"][0]["text"] == f"Echo: c{i} m{j}"

    for _ in range(5):  # 5 rounds of 16 calls in flight at once
        await asyncio.gather(*(one(c, i) for i, c in enumerate(clients)))
    for c in clients:
        await c.close()
    os.unlink(cfg)


@pytest.mark.asyncio
async def test_startup_does_not_wait_for_a_server_that_never_initializes(fresh_server):
    cfg = config_file(server_table("mute", PY, [MISBEHAVING, "--hang-initialize"], timeout_ms=1000))
    t0 = time.monotonic()
    s = fresh_server({"--config": cfg})
    assert time.monotonic() - t0 < 5
    c = await cortex(s)
    assert (await run_to_end(c, await call(c, "memory.stats", {})))[-1][3] == "result"
    assert not any(n.startswith("mute.") for n in await tools(c))
    deadline = time.monotonic() + 10
    while not any("gave no answer to initialize" in l for l in s.log_lines):
        assert time.monotonic() < deadline, "the hung initialize was never noticed"
        await asyncio.sleep(0.1)
    error(await c.request(TOPIC, "tool", {"tool": "mute.echo", "args": {"text": "x"}}), "unknown_tool")
    await c.close()
    os.unlink(cfg)


def test_children_are_killed_on_shutdown():
    cfg = config_file(server_table("everything", EVERYTHING, ["stdio"]), server_table("bad", PY, [MISBEHAVING]))
    with SynapseServer(flags={"--config": cfg}) as s:
        deadline = time.monotonic() + 15
        while len(children(s.pid)) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        kids = list(children(s.pid))
        assert s.stop() == 0
    for pid in kids:
        assert not Path(f"/proc/{pid}").exists(), f"child {pid} outlived synapse"
    os.unlink(cfg)


def test_children_die_with_a_killed_synapse():
    cfg = config_file(server_table("bad", PY, [MISBEHAVING]))
    with SynapseServer(flags={"--config": cfg}) as s:
        deadline = time.monotonic() + 15
        while not children(s.pid):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        kids = list(children(s.pid))
        s.kill()
        deadline = time.monotonic() + 5
        while any(alive(pid) for pid in kids):
            assert time.monotonic() < deadline, "a child outlived a SIGKILLed synapse"
            time.sleep(0.05)
    os.unlink(cfg)


@pytest.mark.parametrize("table,message", [
    ('[[mcp.servers]]\ncommand = "x"\n', "mcp.servers[0].name: is required"),
    ('[[mcp.servers]]\nname = "a.b"\ncommand = "x"\n', "mcp.servers[0].name"),
    ('[[mcp.servers]]\nname = "memory"\ncommand = "x"\n', "built-in tool namespace"),
    ('[[mcp.servers]]\nname = "a"\ncommand = "x"\n[[mcp.servers]]\nname = "a"\ncommand = "y"\n',
     "mcp.servers[1].name: 'a' is also mcp.servers[0]'s name"),
    ('[[mcp.servers]]\nname = "a"\n', "mcp.servers[0].command: is required"),
    ('[[mcp.servers]]\nname = "a"\ncommand = "x"\nmax_concurrent = 0\n', "mcp.servers[0].max_concurrent"),
    ('[[mcp.servers]]\nname = "a"\ncommand = "x"\nargs = "stdio"\n', "mcp.servers[0].args: expected an array"),
    ('[[mcp.servers]]\nname = "a"\ncommand = "x"\nenv = { A = 1 }\n', "mcp.servers[0].env.A: expected a string"),
    ('[[mcp.servers]]\nname = "a"\ncommand = "x"\ncolour = "red"\n', "unknown config key mcp.servers[0].colour"),
])
def test_bad_mcp_config_is_refused_with_a_clear_error(table, message):
    cfg = config_file(table)
    try:
        r = subprocess.run([binary(), "serve", "--config", cfg, "--port", "0", "--data-dir",
                            tempfile.mkdtemp(prefix="synapse-test-")], capture_output=True, text=True, timeout=10)
    finally:
        os.unlink(cfg)
    assert r.returncode == 2
    assert message in r.stderr
