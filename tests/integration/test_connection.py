"""connection: the WebSocket endpoint's lifecycle (protocol sections 1, 2, 8)."""
import asyncio
import socket
import time

import pytest
import websockets

from phx import PhxClient, error, ok
from rawws import client_frame, http_upgrade, read_frames, token_for
from synapse_server import wait_until

WS = "/cortex/websocket"


@pytest.mark.asyncio
async def test_valid_api_key_connects(server):
    c = await PhxClient.connect(server.ws())
    assert ok(await c.heartbeat()) == {}
    await c.close()


@pytest.mark.asyncio
async def test_api_key_in_authorization_header(server):
    c = await PhxClient.connect(server.ws_url + "?vsn=2.0.0",
                                extra_headers={"Authorization": f"Bearer {server.admin_key}"})
    assert ok(await c.heartbeat()) == {}
    await c.close()


@pytest.mark.asyncio
async def test_valid_token_connects_by_query_and_by_header(server):
    token = server.token(agent_id="admin", ttl_s=60)
    c = await PhxClient.connect(server.ws(token=token))
    assert ok(await c.heartbeat()) == {}
    await c.close()
    c = await PhxClient.connect(server.ws_url, extra_headers={"Authorization": f"Bearer {token}"})
    assert ok(await c.heartbeat()) == {}
    await c.close()


def test_vsn_absent_means_2_0_0(server):
    status, _, _, sock = http_upgrade(server.port, f"{WS}?api_key={server.admin_key}")
    assert status == 101
    sock.close()


def test_unsupported_version_is_400(server):
    status, hdrs, body, _ = http_upgrade(server.port, f"{WS}?vsn=1.0.0&api_key={server.admin_key}")
    assert status == 400
    assert hdrs["content-type"] == "application/json"
    assert body["error"] == "unsupported_version" and body["reason"]


def test_no_credentials_is_401_with_json_body(server):
    status, _, body, _ = http_upgrade(server.port, f"{WS}?vsn=2.0.0")
    assert status == 401
    assert body["error"] == "unauthorized" and body["reason"]


def test_unknown_key_is_401(server):
    status, _, body, _ = http_upgrade(server.port, f"{WS}?api_key=syn_k000000000000_nope")
    assert (status, body["error"]) == (401, "unauthorized")


def test_invalid_token_is_401(server):
    status, _, body, _ = http_upgrade(server.port, f"{WS}?token=aaa.bbb.ccc")
    assert (status, body["error"]) == (401, "unauthorized")


def test_expired_token_is_401_token_expired(server):
    token = token_for(server.data_dir, "admin", ttl=-10)
    status, _, body, _ = http_upgrade(server.port, f"{WS}?token={token}")
    assert (status, body["error"]) == (401, "token_expired")


@pytest.mark.asyncio
async def test_graceful_disconnect_is_counted_and_released(server):
    before = server.metrics()
    c = await PhxClient.connect(server.ws())
    assert ok(await c.join("room:graceful")) is not None
    wait_until(lambda: server.metrics()["synapse_connections_open"] >= before["synapse_connections_open"] + 1)
    await c.close()  # close frame 1000
    wait_until(lambda: server.metrics()['synapse_connections_closed_total{code="1000"}']
               == before['synapse_connections_closed_total{code="1000"}'] + 1)
    wait_until(lambda: server.metrics()["synapse_connections_open"] == before["synapse_connections_open"])
    assert any("closed code=1000" in line for line in server.log_lines)


@pytest.mark.asyncio
async def test_reconnect_after_disconnect(server):
    for _ in range(3):
        c = await PhxClient.connect(server.ws())
        assert ok(await c.join("room:again"))["epoch"]
        await c.close()


@pytest.mark.asyncio
async def test_ten_simultaneous_connections_with_one_key(fresh_server):
    s = fresh_server(relaxed=False)  # default limits: 10 per key
    clients = await asyncio.gather(*[PhxClient.connect(s.ws()) for _ in range(10)])
    replies = await asyncio.gather(*[c.heartbeat() for c in clients])
    assert all(r["status"] == "ok" for r in replies)
    for c in clients:
        await c.close()


def test_handshake_timeout_closes_silent_socket(fresh_server):
    s = fresh_server({"--handshake-timeout-ms": "500"})
    sock = socket.create_connection(("127.0.0.1", s.port))
    sock.settimeout(5)
    started = time.monotonic()
    sock.sendall(b"GET /cortex/websocket HTTP/1.1\r\nHost: x\r\n")  # never finished
    assert sock.recv(1024) == b""  # closed by the server
    assert 0.4 <= time.monotonic() - started < 3
    wait_until(lambda: s.metrics()['synapse_connections_refused_total{reason="handshake_timeout"}'] >= 1)


@pytest.mark.asyncio
async def test_join_leave_and_unmatched_topic(server):
    c = await PhxClient.connect(server.ws())
    reply = ok(await c.join("room:jl"))
    assert reply["offset"] == 0 and isinstance(reply["epoch"], str)
    assert ok(await c.request("room:jl", "phx_leave")) == {}
    error(await c.request("room:jl", "shout", {"x": 1}), "unmatched_topic")
    error(await c.request("never:joined", "phx_leave"), "unmatched_topic")
    await c.close()


@pytest.mark.asyncio
async def test_second_join_of_a_topic_closes_the_first(server):
    c = await PhxClient.connect(server.ws())
    ok(await c.join("room:dup"))
    first = c.join_refs["room:dup"]
    ok(await c.join("room:dup"))
    close = await c.expect(lambda f: f[3] == "phx_close", what="phx_close")
    assert close[0] == first and close[1] == first and close[2] == "room:dup"
    await c.close()


@pytest.mark.asyncio
async def test_joining_the_phoenix_topic_is_refused(server):
    c = await PhxClient.connect(server.ws())
    error(await c.join("phoenix"), "invalid_topic")
    await c.close()


def test_http_endpoints(server):
    status, _, body = server.http("GET", "/health")
    assert status == 200 and body["status"] == "ok"
    assert server.http("GET", "/health/live")[0] == 200
    status, _, body = server.http("GET", "/health/ready")
    assert (status, body) == (200, {"status": "ready"})
    status, hdrs, text = server.http("GET", "/metrics")
    assert status == 200 and hdrs["Content-Type"].startswith("text/plain")
    for name in ["synapse_connections_open", "synapse_connections_total", "synapse_connections_refused_total",
                 "synapse_connections_closed_total", "synapse_frames_in_total", "synapse_frames_out_total",
                 "synapse_bytes_in_total", "synapse_bytes_out_total"]:
        assert f"# TYPE {name} " in text, name
    status, _, body = server.http("GET", "/no/such/thing")
    assert status == 404 and body["error"] == "not_found"
    status, hdrs, body = server.http("POST", "/health")
    assert status == 405 and hdrs["Allow"] == "GET"
    status, _, body = server.http("GET", "/cortex/websocket")
    assert status == 426


def test_metrics_token_when_configured(fresh_server):
    s = fresh_server({"--metrics-token": "sekrit"})
    assert s.http("GET", "/metrics")[0] == 401
    status, _, text = s.http("GET", "/metrics", headers={"Authorization": "Bearer sekrit"})
    assert status == 200 and "synapse_connections_open" in text


def test_logs_one_line_per_open_close_and_refusal(fresh_server):
    s = fresh_server()
    status, _, _, sock = http_upgrade(s.port, f"{WS}?api_key={s.admin_key}")
    assert status == 101
    sock.sendall(client_frame(8, b"\x03\xe8"))
    read_frames(sock)
    sock.close()
    http_upgrade(s.port, f"{WS}?api_key=syn_bad_key")
    # The refusal's line may be read from the server's output after the 401
    # reached us: wait for both lines, then count.
    wait_until(lambda: any(" closed code=1000" in l for l in s.log_lines)
               and any("refused" in l for l in s.log_lines))
    time.sleep(0.2)  # a second line for either would come now
    assert sum(" opened " in l for l in s.log_lines) == 1
    assert sum("refused" in l for l in s.log_lines) == 1
    # Nothing per message at the default level.
    assert not any("heartbeat" in l for l in s.log_lines)


def test_client_close_code_is_echoed(server):
    status, _, _, sock = http_upgrade(server.port, f"{WS}?api_key={server.admin_key}")
    sock.sendall(client_frame(8, b"\x0f\xa0bye"))  # 4000
    frames, code = read_frames(sock)
    assert code == 4000
    sock.close()
