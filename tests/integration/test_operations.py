"""Running Synapse as a service (issue 17, items 2, 3 and 5): the admin
introspection API, --version, options from the environment, --dev, JSON
logs, debug logs per frame, /metrics checked by promtool, the systemd unit
checked by systemd-analyze, and `make install` into a DESTDIR."""
import asyncio
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import websockets

from synapse_server import REPO, SynapseServer, binary, free_port, wait_until


def frame(join_ref, ref, topic, event, payload):
    return json.dumps([join_ref, ref, topic, event, payload])


async def recv_reply(ws, ref, timeout=5):
    while True:
        msg = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if msg[1] == ref and msg[3] == "phx_reply":
            return msg


async def join(ws, topic, ref, payload=None):
    await ws.send(frame(ref, ref, topic, "phx_join", payload or {}))
    r = await recv_reply(ws, ref)
    assert r[4]["status"] == "ok", r
    return r


# -- admin API -----------------------------------------------------------------

def test_admin_api_needs_the_admin(server):
    other = server.create_key("ops-plain")
    for path in ["/api/admin/topics", "/api/admin/connections", "/api/admin/runs", "/api/admin/stats"]:
        assert server.http("GET", path)[0] == 401, path
        assert server.http("GET", path, key="syn_bogus_x")[0] == 401, path
        status, _, body = server.http("GET", path, key=other)
        assert status == 403 and body["error"] == "forbidden", (path, body)
        assert server.http("GET", path, key=server.admin_key)[0] == 200, path
    # A token the admin key minted for itself is the admin's; one it minted
    # for another agent is not.
    assert server.http("GET", "/api/admin/stats", key=server.token())[0] == 200
    assert server.http("GET", "/api/admin/stats", key=server.token(agent_id="someone"))[0] == 403
    assert server.http("POST", "/api/admin/topics", {}, key=server.admin_key)[0] == 405


@pytest.mark.asyncio
async def test_introspection_lists_topics_members_connections_history_and_runs(server):
    key = server.create_key("ops-member", "--agent", "ops-agent")
    key_id = key.split("_")[1]
    async with websockets.connect(server.ws(key)) as ws:
        await join(ws, "room:ops", "1", {"presence": True, "meta": {"mood": "<b>hi</b>"}})
        for i in range(3):
            await ws.send(frame("1", f"p{i}", "room:ops", "said", {"n": i}))
            await recv_reply(ws, f"p{i}")

        def topics():
            _, _, body = server.http("GET", "/api/admin/topics", key=server.admin_key)
            return next((t for t in body["topics"] if t["topic"] == "room:ops"), None)
        t = wait_until(topics, what="room:ops listed")
        assert t["members"] == 1 and t["last_offset"] == 3

        status, _, detail = server.http("GET", "/api/admin/topics/room:ops", key=server.admin_key)
        assert status == 200 and detail["last_offset"] == 3 and detail["members"] == 1
        assert [m["agent_id"] for m in detail["member_connections"]] == ["ops-agent"]
        assert "ops-agent" in json.dumps(detail["presence"])

        status, _, h = server.http("GET", "/api/admin/topics/room:ops/history?since=1", key=server.admin_key)
        assert status == 200
        assert [(m["offset"], m["event"], m["payload"]["n"]) for m in h["messages"]] == [(2, "said", 1), (3, "said", 2)]
        assert server.http("GET", "/api/admin/topics/room:ops/history?since=x", key=server.admin_key)[0] == 400
        assert server.http("GET", "/api/admin/topics/bad%20topic", key=server.admin_key)[0] == 400

        _, _, conns = server.http("GET", f"/api/admin/connections?key={key_id}", key=server.admin_key)
        assert len(conns["connections"]) == 1
        c = conns["connections"][0]
        assert c["agent_id"] == "ops-agent" and c["topics"] == ["room:ops"] and c["ip"] == "127.0.0.1"
        _, _, none = server.http("GET", "/api/admin/connections?ip=10.9.9.9", key=server.admin_key)
        assert none["connections"] == []

        # A run shows up as running, then among the recent ones.
        await join(ws, "cortex:ops-agent", "2")
        await ws.send(frame("2", "t1", "cortex:ops-agent", "tool",
                            {"tool": "demo.countdown", "args": {"steps": 20, "interval_ms": 100}, "ref": "slow"}))
        await recv_reply(ws, "t1")
        running = wait_until(lambda: [r for r in server.http("GET", "/api/admin/runs", key=server.admin_key)[2]["running"]
                                      if r["ref"] == "slow"], what="the run listed as running")
        assert running[0]["connection_id"] == c["id"] and running[0]["agent_id"] == "ops-agent"
        await ws.send(frame("2", "i1", "cortex:ops-agent", "interrupt", {"ref": "slow"}))
        recent = wait_until(lambda: [r for r in server.http("GET", "/api/admin/runs", key=server.admin_key)[2]["recent"]
                                     if r["ref"] == "slow"], what="the run among the recent ones")
        assert recent[0]["outcome"] == "interrupted" and recent[0]["duration_ms"] >= 0

        # Server-side unsubscribe: the client hears phx_close, and is no member.
        status, _, r = server.http("POST", "/api/admin/unsubscribe",
                                   {"connection_id": c["id"], "topic": "room:ops"}, key=server.admin_key)
        assert status == 200 and r["unsubscribed"] is True
        while True:
            msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
            if msg[2] == "room:ops" and msg[3] == "phx_close":
                break
        assert server.http("POST", "/api/admin/unsubscribe", {"connection_id": c["id"], "topic": "room:ops"},
                           key=server.admin_key)[0] == 404

        # Server-side disconnect of every connection of the key.
        status, _, r = server.http("POST", "/api/admin/disconnect", {"key_id": key_id}, key=server.admin_key)
        assert status == 200 and r["disconnected"] == 1
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.code == 1008
    assert server.http("POST", "/api/admin/disconnect", {}, key=server.admin_key)[0] == 400


def test_stats_are_live_numbers(server):
    status, hdrs, s = server.http("GET", "/api/admin/stats", key=server.admin_key)
    assert status == 200 and hdrs.get("Cache-Control") == "no-store"
    for k in ["connections_open", "frames_in_total", "deliveries_total", "joins_total", "refusals",
              "slow_consumer_closes_total", "fanout_latency", "process"]:
        assert k in s, k
    assert s["process"]["rss_bytes"] > 0 and s["process"]["open_fds"] > 0


def test_dashboard_is_served_from_the_binary_with_a_strict_policy(server):
    status, hdrs, page = server.http("GET", "/dashboard")
    assert status == 200 and hdrs["Content-Type"].startswith("text/html") and "<title>Synapse dashboard" in page
    csp = hdrs["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    status, hdrs, js = server.http("GET", "/dashboard/app.js")
    assert status == 200 and "javascript" in hdrs["Content-Type"]
    # Text only: the page's script never turns data into markup.
    assert "innerHTML" not in js.replace("never innerHTML", "") and "insertAdjacentHTML" not in js
    assert "textContent" in js
    # Not normalized to /metrics: no dashboard file is named "../metrics".
    assert server.http("GET", "/dashboard/../metrics")[0] == 404
    assert server.http("GET", "/dashboard/nope.js")[0] == 404


# -- version, environment, --dev -------------------------------------------------

def test_version():
    r = subprocess.run([binary(), "--version"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0 and r.stdout.startswith("synapse ") and r.stdout.split()[1].count(".") == 2


def test_options_from_the_environment_rank_between_file_and_flags(tmp_path):
    conf = tmp_path / "s.toml"
    conf.write_text("[server]\nport = 1\n[limits]\nmax_topics = 3\n")
    port = free_port()
    env = dict(os.environ, SYNAPSE_PORT=str(port), SYNAPSE_MAX_TOPICS="4", SYNAPSE_CONFIG=str(conf),
               SYNAPSE_DATA_DIR=str(tmp_path / "data"))
    # env beats the file (port), a flag beats env (max topics is checked below through a bad value)
    proc = subprocess.Popen([binary(), "serve", "--bind", "127.0.0.1"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("listening on"):
                break
        assert lines[-1].strip() == f"listening on 127.0.0.1:{port}", lines
        assert (tmp_path / "data" / "synapse.db").exists()
    finally:
        proc.terminate()
        proc.wait(10)
    bad = dict(env, SYNAPSE_MAX_TOPICS="many")
    r = subprocess.run([binary(), "serve"], env=bad, capture_output=True, text=True, timeout=10)
    assert r.returncode == 2 and "SYNAPSE_MAX_TOPICS" in r.stderr and "limits.max_topics" in r.stderr
    r = subprocess.run([binary(), "serve", "--max-topics", "many"], env=dict(env, SYNAPSE_MAX_TOPICS="5"),
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 2 and "--max-topics" in r.stderr and "environment" not in r.stderr


@pytest.mark.asyncio
async def test_dev_profile_allows_localhost_origins_and_production_does_not(fresh_server):
    dev = fresh_server(flags={"--dev": "true"}, relaxed=False)
    prod = fresh_server(relaxed=False)
    origin = "http://localhost:5173"
    async with websockets.connect(dev.ws(), origin=origin) as ws:
        await ws.send(frame(None, "1", "phoenix", "heartbeat", {}))
        await recv_reply(ws, "1")
    with pytest.raises(websockets.InvalidStatusCode) as e:
        async with websockets.connect(prod.ws(), origin=origin):
            pass
    assert e.value.status_code == 403
    assert dev.saw_log(lambda l: "debug" in l or "[debug]" in l)


# -- logs --------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_json_logs_one_object_per_line_with_ids_and_debug_per_frame(fresh_server):
    s = fresh_server(flags={"--log-format": "json", "--log-level": "debug"})
    async with websockets.connect(s.ws()) as ws:
        # A hostile topic is refused; its log line must still be one valid object.
        await ws.send(frame("0", "0", "room:\"quoted\\topic\n", "phx_join", {}))
        await recv_reply(ws, "0")
        await join(ws, "room:logs", "1")
        await ws.send("not json at all\x01")
        await ws.send(frame("1", "2", "room:logs", "said", {"x": 1}))
        await recv_reply(ws, "2")
    # The server logs the malformed frame before the frame that follows it
    # ("said"), both on one stream, so once the line for "said" has been read
    # the rest has too (two "handled" lines alone could be the two joins: a
    # race seen in CI). A publish logs its frame, not a "handled" line.
    wait_until(lambda: any("event=said" in l for l in s.log_lines), what="the log line of the said frame")
    records = []
    for line in s.log_lines:
        if line.startswith("listening on ") or line.startswith("syn_") or not line.startswith("{"):
            continue  # the lines meant for scripts stay plain
        records.append(json.loads(line))  # every other line parses
    assert records and all({"ts", "level", "msg"} <= r.keys() for r in records)
    handled = [r for r in records if r["level"] == "debug" and "handled" in r["msg"]]
    assert any(r.get("topic") == "room:logs" and isinstance(r.get("conn_id"), int) for r in handled), handled
    assert any('room:"quoted\\topic\n' in r["msg"] for r in records)
    assert any("malformed" in r["msg"] for r in records)
    noise = [l for l in s.log_lines if not l.startswith("{") and not l.startswith("listening on")
             and not l.startswith("syn_") and "admin key" not in l]
    assert noise == [], noise


# -- metrics -------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian prometheus) is not installed")
@pytest.mark.asyncio
async def test_metrics_pass_promtool_and_have_histograms_and_process_metrics(server):
    async with websockets.connect(server.ws()) as ws:
        await join(ws, "room:metrics", "1")
    _, _, text = server.http("GET", "/metrics")
    r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ["synapse_fanout_latency_seconds_bucket", "synapse_run_duration_seconds_count",
                 "synapse_join_latency_seconds_sum", "process_resident_memory_bytes", "process_open_fds",
                 "process_cpu_seconds_total"]:
        assert f"\n{name}" in text, name
    m = server.metrics()
    assert m['synapse_join_latency_seconds_bucket{le="+Inf"}'] >= 1
    for line in text.splitlines():
        if line.startswith("# TYPE") and line.endswith(" counter"):
            assert line.split()[2].endswith("_total"), line


# -- systemd and make install -----------------------------------------------------------

def test_make_install_honours_prefix_and_destdir_and_the_unit_verifies(tmp_path):
    dest = tmp_path / "root"
    r = subprocess.run(["make", "--no-print-directory", "-s", "install", f"DESTDIR={dest}", "PREFIX=/opt/syn",
                        "BUILD=build/release"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    exe = dest / "opt/syn/bin/synapse"
    unit = dest / "opt/syn/lib/systemd/system/synapse.service"
    assert exe.exists() and os.access(exe, os.X_OK) and unit.exists()
    assert (dest / "opt/syn/share/synapse/synapse.example.toml").exists()
    assert subprocess.run([str(exe), "--version"], capture_output=True, text=True).stdout.startswith("synapse ")
    assert "ExecStart=/opt/syn/bin/synapse serve" in unit.read_text()
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    # Verified with ExecStart pointing at the installed binary (it must exist).
    check = tmp_path / "synapse.service"
    check.write_text(unit.read_text().replace("/opt/syn/bin/synapse", str(exe)))
    v = subprocess.run(["systemd-analyze", "verify", str(check)], capture_output=True, text=True, timeout=60)
    assert v.returncode == 0, v.stdout + v.stderr
    assert "synapse.service" not in v.stderr, v.stderr
