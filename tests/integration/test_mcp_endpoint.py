"""The /mcp endpoint (Synapse as an MCP server) at the HTTP level: what the
Streamable HTTP transport of protocol 2025-06-18 and JSON-RPC 2.0 say about
malformed messages, batches, Accept, bodies, sessions and their limits, and
that a client that disconnects mid-call takes its run with it. The official
SDK's view of the same endpoint is tests/js/mcp_server.test.mjs."""
from __future__ import annotations

import http.client
import json
import signal
import socket
import time

import pytest

from synapse_server import wait_until

ACCEPT = "application/json, text/event-stream"


def post(server, body, key=None, session=None, accept=ACCEPT, content_type="application/json", headers=None,
         raw=None):
    """POST /mcp; returns (status, headers, body text). SSE answers are read whole."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    h = {"Content-Type": content_type} if content_type else {}
    if accept is not None:
        h["Accept"] = accept
    if key:
        h["Authorization"] = f"Bearer {key}"
    if session:
        h["Mcp-Session-Id"] = session
    h.update(headers or {})
    data = raw if raw is not None else json.dumps(body).encode()
    conn.request("POST", "/mcp", body=data, headers=h)
    r = conn.getresponse()
    text = r.read().decode()
    hdrs = {k.lower(): v for k, v in r.getheaders()}
    conn.close()
    return r.status, hdrs, text


def rpc(server, body, **kw):
    status, hdrs, text = post(server, body, **kw)
    return status, hdrs, (json.loads(text) if text and hdrs.get("content-type") == "application/json" else text)


def sse_messages(text):
    """The JSON-RPC messages of an SSE body."""
    out = []
    for block in text.split("\n\n"):
        data = [l[len("data: "):] for l in block.split("\n") if l.startswith("data: ")]
        if data:
            out.append(json.loads("\n".join(data)))
    return out


INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}


def open_session(server, key):
    status, hdrs, body = rpc(server, INIT, key=key)
    assert status == 200, body
    sid = hdrs["mcp-session-id"]
    status, _, _ = post(server, {"jsonrpc": "2.0", "method": "notifications/initialized"}, key=key, session=sid)
    assert status == 202
    return sid


def call(name, args, id_=7, token=None):
    params = {"name": name, "arguments": args}
    if token is not None:
        params["_meta"] = {"progressToken": token}
    return {"jsonrpc": "2.0", "id": id_, "method": "tools/call", "params": params}


@pytest.fixture(scope="module")
def key(server):
    return server.create_key("mcp-raw")


@pytest.fixture(scope="module")
def sid(server, key):
    return open_session(server, key)


def test_initialize_answers_json_with_a_session_id_and_echoes_a_supported_version(server, key):
    status, hdrs, body = rpc(server, INIT, key=key)
    assert status == 200
    assert len(hdrs["mcp-session-id"]) == 32 and all(c in "0123456789abcdef" for c in hdrs["mcp-session-id"])
    assert body["id"] == 1 and body["result"]["protocolVersion"] == "2025-06-18"
    assert body["result"]["capabilities"]["tools"] == {"listChanged": True}
    # A revision it does not speak gets its own latest; the client decides.
    newer = json.loads(json.dumps(INIT))
    newer["params"]["protocolVersion"] = "2099-01-01"
    status, _, body = rpc(server, newer, key=key)
    assert status == 200 and body["result"]["protocolVersion"] == "2025-06-18"


def test_malformed_json_is_a_parse_error_with_id_null(server, key, sid):
    status, _, body = rpc(server, None, key=key, session=sid, raw=b'{"jsonrpc": "2.0", "id": 1, "method": ')
    assert status == 400
    assert body["error"]["code"] == -32700 and body["id"] is None


@pytest.mark.parametrize("msg,why", [
    ("[1]", "batch"),
    ('[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"ping"}]', "batch"),
    ('"ping"', "not a JSON-RPC message"),
    ("42", "not a JSON-RPC message"),
    ('{"id":1,"method":"ping"}', "jsonrpc"),
    ('{"jsonrpc":"1.0","id":1,"method":"ping"}', "jsonrpc"),
    ('{"jsonrpc":"2.0","id":1,"method":5}', "method"),
    ('{"jsonrpc":"2.0","id":1}', "method"),
    ('{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}', "id"),
    ('{"jsonrpc":"2.0","id":1.5,"method":"ping"}', "id"),
    ('{"jsonrpc":"2.0","id":null,"method":"ping"}', "id"),
    ('{"jsonrpc":"2.0","id":1,"method":"ping","params":[1]}', "params"),
])
def test_invalid_requests_are_400_with_jsonrpc_error_32600(server, key, sid, msg, why):
    status, _, body = rpc(server, None, key=key, session=sid, raw=msg.encode())
    assert status == 400, body
    assert body["jsonrpc"] == "2.0"
    assert body["error"]["code"] == -32600
    assert why in body["error"]["message"]


def test_batches_are_refused_as_the_2025_06_18_revision_removed_them(server, key, sid):
    status, _, body = rpc(server, [{"jsonrpc": "2.0", "id": 1, "method": "ping"}], key=key, session=sid)
    assert status == 400 and "2025-06-18" in body["error"]["message"]


def test_unknown_method_is_32601_echoing_the_id(server, key, sid):
    status, _, body = rpc(server, {"jsonrpc": "2.0", "id": "abc", "method": "resources/list"}, key=key, session=sid)
    assert status == 200
    assert body == {"jsonrpc": "2.0", "id": "abc", "error": {"code": -32601, "message": "Method not found: resources/list"}}


def test_notifications_and_responses_are_202_with_no_body(server, key, sid):
    for msg in ({"jsonrpc": "2.0", "method": "notifications/whatever", "params": {}},
                {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 999}},
                {"jsonrpc": "2.0", "id": 5, "result": {}}):
        status, hdrs, text = post(server, msg, key=key, session=sid)
        assert (status, text) == (202, ""), msg
        assert "content-type" not in hdrs


@pytest.mark.parametrize("accept", [None, "application/json", "text/event-stream", "text/html"])
def test_a_post_must_accept_json_and_event_stream(server, key, sid, accept):
    status, _, body = rpc(server, {"jsonrpc": "2.0", "id": 1, "method": "ping"}, key=key, session=sid, accept=accept)
    assert status == 406, body
    assert "Accept" in body["error"]["message"]


def test_wildcard_accept_and_a_charset_on_content_type_are_fine(server, key, sid):
    status, _, body = rpc(server, {"jsonrpc": "2.0", "id": 1, "method": "ping"}, key=key, session=sid, accept="*/*",
                          content_type="application/json; charset=utf-8")
    assert status == 200 and body["result"] == {}


def test_a_body_that_is_not_json_by_content_type_is_415(server, key, sid):
    status, _, _ = post(server, {"jsonrpc": "2.0", "id": 1, "method": "ping"}, key=key, session=sid,
                        content_type="text/plain")
    assert status == 415


def test_an_oversized_body_is_413(server, key, sid):
    big = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
           "params": {"name": "memory.store", "arguments": {"content": "x" * (1 << 20)}}}
    status, _, _ = post(server, big, key=key, session=sid)
    assert status == 413


def test_credentials_are_checked_on_every_request(server, key, sid):
    status, hdrs, body = rpc(server, INIT)
    assert status == 401 and hdrs["www-authenticate"].startswith("Bearer")
    assert body["error"]["code"] == -32600
    status, _, _ = rpc(server, {"jsonrpc": "2.0", "id": 1, "method": "ping"}, key="syn_bad_key", session=sid)
    assert status == 401
    # A token minted from a key works as the key does.
    token = server.token(key)
    status, _, body = rpc(server, INIT, key=token)
    assert status == 200, body


def test_a_worker_credential_is_not_an_mcp_client(server):
    wk = server.create_key("mcp-refused-worker", "--agent", "somebody", "--worker")
    status, _, body = rpc(server, INIT, key=wk)
    assert status == 403 and "worker" in body["error"]["message"]


def test_a_revoked_key_is_refused_at_its_next_request(server):
    k = server.create_key("mcp-revoked")
    s = open_session(server, k)
    assert server.keys_cli("revoke", k.split("_")[1]).returncode == 0
    status, _, _ = rpc(server, {"jsonrpc": "2.0", "id": 1, "method": "ping"}, key=k, session=s)
    assert status == 401


def test_session_rules(server, key, sid):
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    status, _, body = rpc(server, ping, key=key)
    assert status == 400 and "Mcp-Session-Id" in body["error"]["message"]
    status, _, body = rpc(server, ping, key=key, session="f" * 32)
    assert status == 404 and body["error"]["code"] == -32001
    status, _, body = rpc(server, INIT, key=key, session=sid)
    assert status == 400
    status, _, _ = rpc(server, ping, key=key, session=sid, headers={"MCP-Protocol-Version": "1999-01-01"})
    assert status == 400
    status, _, body = rpc(server, ping, key=key, session=sid, headers={"MCP-Protocol-Version": "2025-06-18"})
    assert status == 200 and body["result"] == {}


def open_get_stream(server, key, session):
    """GET /mcp on a raw socket; returns the socket and what it read (the head)."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(b"GET /mcp HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nAuthorization: Bearer " +
                 key.encode() + b"\r\nMcp-Session-Id: " + session.encode() + b"\r\n\r\n")
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = sock.recv(4096)
        assert chunk, got
        got += chunk
    return sock, got


def test_get_opens_one_stream_per_session_and_delete_ends_it(server, key):
    s = open_session(server, key)
    status, _, _ = server.http("GET", "/mcp", key=key, headers={"Accept": "application/json", "Mcp-Session-Id": s})
    assert status == 406
    sock, head = open_get_stream(server, key, s)
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Type: text/event-stream" in head
    status, _, _ = server.http("GET", "/mcp", key=key, headers={"Accept": "text/event-stream", "Mcp-Session-Id": s})
    assert status == 409
    # The session stays usable beside its stream.
    status, _, body = rpc(server, {"jsonrpc": "2.0", "id": 1, "method": "ping"}, key=key, session=s)
    assert status == 200 and body["result"] == {}
    status, _, _ = server.http("DELETE", "/mcp", key=key, headers={"Mcp-Session-Id": s})
    assert status == 204
    got = read_to_end(sock, head)
    sock.close()
    assert got.endswith(b"\r\n0\r\n\r\n")  # the stream ended with the session
    status, _, _ = server.http("DELETE", "/mcp", key=key, headers={"Mcp-Session-Id": s})
    assert status == 404
    status, _, _ = rpc(server, {"jsonrpc": "2.0", "id": 1, "method": "ping"}, key=key, session=s)
    assert status == 404
    status, _, _ = server.http("PUT", "/mcp", key=key)
    assert status == 405


def test_a_closed_get_stream_may_be_opened_again(server, key):
    s = open_session(server, key)
    sock, _ = open_get_stream(server, key, s)
    sock.close()
    sock2 = wait_until(lambda: _try_get(server, key, s), timeout=3, what="the first stream to be let go")
    sock2.close()


def _try_get(server, key, session):
    sock, head = open_get_stream(server, key, session)
    if head.startswith(b"HTTP/1.1 200"):
        return sock
    sock.close()
    return None


def test_a_call_streams_progress_then_its_response_and_the_connection_is_kept(server, key, sid):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    headers = {"Content-Type": "application/json", "Accept": ACCEPT, "Authorization": f"Bearer {key}",
               "Mcp-Session-Id": sid}
    conn.request("POST", "/mcp", json.dumps(call("demo.countdown", {"steps": 3, "interval_ms": 10}, token=42)),
                 headers)
    r = conn.getresponse()
    assert r.status == 200 and r.getheader("Content-Type") == "text/event-stream"
    assert r.getheader("Transfer-Encoding") == "chunked"
    msgs = sse_messages(r.read().decode())
    assert [m["params"]["progress"] for m in msgs[:-1]] == [1, 2, 3]
    assert all(m["method"] == "notifications/progress" and m["params"]["progressToken"] == 42 for m in msgs[:-1])
    assert msgs[-1]["id"] == 7 and msgs[-1]["result"]["structuredContent"] == {"completed": 3}
    # The same connection serves the next request.
    conn.request("POST", "/mcp", json.dumps({"jsonrpc": "2.0", "id": 8, "method": "ping"}), headers)
    r = conn.getresponse()
    assert r.status == 200 and json.loads(r.read())["result"] == {}
    conn.close()


def test_without_a_progress_token_only_the_response_is_sent(server, key, sid):
    status, _, text = post(server, call("demo.countdown", {"steps": 2, "interval_ms": 1}), key=key, session=sid)
    assert status == 200
    msgs = sse_messages(text)
    assert len(msgs) == 1 and msgs[0]["result"]["content"][0] == {"type": "text", "text": '{"completed":2}'}


def runs(server):
    status, _, body = server.http("GET", "/api/admin/runs", key=server.admin_key)
    assert status == 200
    return body


def test_a_client_that_disconnects_mid_call_ends_its_run_as_interrupted(server, key, sid):
    before = {r["id"] for r in runs(server)["recent"]}
    s = socket.create_connection(("127.0.0.1", server.port))
    body = json.dumps(call("demo.countdown", {"steps": 500, "interval_ms": 20}, id_=77, token="p")).encode()
    s.sendall(b"POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Accept: application/json, text/event-stream\r\nAuthorization: Bearer " + key.encode() +
              b"\r\nMcp-Session-Id: " + sid.encode() + b"\r\nContent-Length: " + str(len(body)).encode() +
              b"\r\n\r\n" + body)
    got = b""
    while b"notifications/progress" not in got:
        chunk = s.recv(4096)
        assert chunk, got
        got += chunk
    assert got.startswith(b"HTTP/1.1 200")
    s.close()
    run = wait_until(lambda: next((r for r in runs(server)["recent"]
                                   if r["id"] not in before and r["topic"] == "mcp"), None),
                     timeout=3, what="the run to end")
    assert run["outcome"] == "interrupted" and run["duration_ms"] < 5000
    assert run["ref"] == "mcp-77"


def test_a_tool_error_is_a_result_with_is_error(server, key, sid):
    status, _, text = post(server, call("memory.forget", {"id": 123456789}), key=key, session=sid)
    (msg,) = sse_messages(text)
    assert msg["result"]["isError"] is True
    assert "no memory 123456789" in msg["result"]["content"][0]["text"]


def test_invalid_arguments_are_32602_with_the_field_errors(server, key, sid):
    status, _, body = rpc(server, call("memory.search", {"query": ""}), key=key, session=sid)
    assert status == 200
    assert body["error"]["code"] == -32602
    assert body["error"]["data"]["errors"][0]["field"] == "arguments.query"
    status, _, body = rpc(server, call("memory.search", "not an object"), key=key, session=sid)
    assert body["error"]["code"] == -32602


def test_origin_is_checked_as_for_websockets(server, key):
    status, _, body = rpc(server, INIT, key=key, headers={"Origin": "http://evil.example"})
    assert status == 403 and body["error"] == "forbidden_origin"
    host = f"127.0.0.1:{server.port}"
    status, hdrs, body = rpc(server, INIT, key=key, headers={"Origin": f"http://{host}"})
    assert status == 200
    assert hdrs["access-control-allow-origin"] == f"http://{host}"
    assert "Mcp-Session-Id" in hdrs["access-control-expose-headers"]


def test_preflight_for_an_allowed_origin(server):
    host = f"127.0.0.1:{server.port}"
    status, hdrs, _ = server.http("OPTIONS", "/mcp", headers={"Origin": f"http://{host}",
                                                             "Access-Control-Request-Method": "POST"})
    assert status == 204
    assert hdrs["Access-Control-Allow-Origin"] == f"http://{host}"
    assert "Mcp-Session-Id" in hdrs["Access-Control-Allow-Headers"]


def test_limits(fresh_server):
    s = fresh_server({"--mcp-max-sessions-per-key": "2", "--queries-per-min": "2", "--query-burst": "2",
                      "--max-running": "1", "--mcp-session-idle-s": "1"})
    k = s.create_key("mcp-limits")
    a = open_session(s, k)
    open_session(s, k)
    status, hdrs, body = rpc(s, INIT, key=k)
    assert status == 429 and "max_sessions_per_key" in body["error"]["message"] and "Retry-After" in {
        h.title() for h in hdrs}
    # A token minted from the key counts against the key; another key has
    # its own sessions.
    status, _, _ = rpc(s, INIT, key=s.token(k))
    assert status == 429
    open_session(s, s.create_key("mcp-limits-2"))

    # One call at a time per session (limits.max_running).
    sock = socket.create_connection(("127.0.0.1", s.port))
    body = json.dumps(call("demo.countdown", {"steps": 100, "interval_ms": 20}, id_=1)).encode()
    sock.sendall(b"POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Accept: application/json, text/event-stream\r\nAuthorization: Bearer " + k.encode() +
                 b"\r\nMcp-Session-Id: " + a.encode() + b"\r\nContent-Length: " + str(len(body)).encode() +
                 b"\r\n\r\n" + body)
    assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    status, _, body = rpc(s, call("demo.countdown", {"steps": 1, "interval_ms": 0}, id_=2), key=k, session=a)
    assert body["error"]["code"] == -32000 and body["error"]["data"]["reason"] == "too_many_running"
    m = s.metrics()
    assert m["synapse_mcp_sessions"] == 3 and m["synapse_mcp_streams"] == 1
    sock.close()
    # The query rate (2 a minute here): the first call took one token.
    wait_until(lambda: not any(r["topic"] == "mcp" for r in runs(s)["running"]), what="the first call to end")
    status, _, text = post(s, call("demo.countdown", {"steps": 1, "interval_ms": 0}, id_=3), key=k, session=a)
    assert sse_messages(text)[0]["result"]["structuredContent"] == {"completed": 1}
    status, _, body = rpc(s, call("demo.countdown", {"steps": 1, "interval_ms": 0}, id_=4), key=k, session=a)
    assert body["error"]["data"]["reason"] == "rate_limited" and body["error"]["data"]["retry_after_ms"] > 0

    # A session with its GET stream open does not expire; idle ones do
    # (after 1 s here): 404, and the key may open new ones.
    k3 = s.create_key("mcp-limits-3")
    listener = open_session(s, k3)
    get_sock, _ = open_get_stream(s, k3, listener)
    time.sleep(1.5)
    status, _, _ = rpc(s, {"jsonrpc": "2.0", "id": 1, "method": "ping"}, key=k, session=a)
    assert status == 404
    status, _, _ = rpc(s, {"jsonrpc": "2.0", "id": 1, "method": "ping"}, key=k3, session=listener)
    assert status == 200
    get_sock.close()
    open_session(s, k)
    open_session(s, k)
    wait_until(lambda: s.metrics()["synapse_mcp_streams"] == 0, what="every stream to be let go")


def test_the_endpoint_can_be_turned_off(fresh_server):
    s = fresh_server({"--mcp-server": "false"})
    status, _, _ = s.http("POST", "/mcp", {"jsonrpc": "2.0", "id": 1, "method": "ping"}, key=s.admin_key)
    assert status == 404


def test_shutdown_answers_calls_in_flight_before_the_server_stops(fresh_server):
    s = fresh_server()
    k = s.create_key("mcp-shutdown")
    session = open_session(s, k)
    sock = socket.create_connection(("127.0.0.1", s.port), timeout=10)
    body = json.dumps(call("demo.countdown", {"steps": 1000, "interval_ms": 20}, token="t")).encode()
    sock.sendall(b"POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Accept: application/json, text/event-stream\r\nAuthorization: Bearer " + k.encode() +
                 b"\r\nMcp-Session-Id: " + session.encode() + b"\r\nContent-Length: " + str(len(body)).encode() +
                 b"\r\n\r\n" + body)
    got = b""
    while b"notifications/progress" not in got:
        chunk = sock.recv(4096)
        assert chunk, got
        got += chunk
    started = time.monotonic()
    s.proc.send_signal(signal.SIGTERM)
    while not got.endswith(b"\r\n0\r\n\r\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        got += chunk
    sock.close()
    assert got.endswith(b"\r\n0\r\n\r\n"), got[-300:]
    finals = [json.loads(l[len("data: "):]) for l in got.decode().split("\n")
              if l.startswith("data: ") and '"id":7' in l]
    assert len(finals) == 1
    assert finals[0]["result"]["isError"] is True
    assert "server_shutdown" in finals[0]["result"]["content"][0]["text"]
    assert s.proc.wait(10) == 0
    assert time.monotonic() - started < 8  # the drain timeout (10 s) was not waited for


def start_streaming_call(server, key, session, args, id_=7):
    """A tools/call on a raw socket, read until its first progress."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    body = json.dumps(call("demo.countdown", args, id_=id_, token="t")).encode()
    sock.sendall(b"POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Accept: application/json, text/event-stream\r\nAuthorization: Bearer " + key.encode() +
                 b"\r\nMcp-Session-Id: " + session.encode() + b"\r\nContent-Length: " + str(len(body)).encode() +
                 b"\r\n\r\n" + body)
    got = b""
    while b"notifications/progress" not in got:
        chunk = sock.recv(4096)
        assert chunk, got
        got += chunk
    return sock, got


def read_to_end(sock, got):
    # The last chunk is "0\r\n\r\n" after a CRLF. Without the leading CRLF a
    # head whose Mcp-Session-Id (hex) ends in 0 looks like the end (1 in 16).
    while not got.endswith(b"\r\n0\r\n\r\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        got += chunk
    return got


@pytest.mark.asyncio
async def test_a_websocket_client_of_the_agent_may_interrupt_an_mcp_call(server):
    from phx import PhxClient, ok

    k = server.create_key("mcp-ws-interrupt")
    session = open_session(server, k)
    sock, got = start_streaming_call(server, k, session, {"steps": 500, "interval_ms": 20}, id_=31)
    run = next(r for r in runs(server)["running"] if r["topic"] == "mcp" and r["ref"] == "mcp-31")
    c = await PhxClient.connect(server.ws(key=k))
    topic = f"cortex:{run['agent_id']}"
    ok(await c.join(topic))
    ok(await c.request(topic, "interrupt", {"run_id": run["id"], "reason": "from the websocket"}))
    await c.close()
    got = read_to_end(sock, got)
    sock.close()
    (final,) = [json.loads(l[len("data: "):]) for l in got.decode().split("\n")
                if l.startswith("data: ") and '"id":31' in l]
    assert final["result"]["isError"] is True
    assert final["result"]["content"][0]["text"] == "interrupted: from the websocket"


def test_a_request_pipelined_behind_a_streaming_call_is_answered_after_it(server, key, sid):
    first = json.dumps(call("demo.countdown", {"steps": 3, "interval_ms": 50}, id_=41, token="t")).encode()
    second = json.dumps({"jsonrpc": "2.0", "id": 42, "method": "ping"}).encode()

    def req(body):
        return (b"POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Accept: application/json, text/event-stream\r\nAuthorization: Bearer " + key.encode() +
                b"\r\nMcp-Session-Id: " + sid.encode() + b"\r\nContent-Length: " + str(len(body)).encode() +
                b"\r\n\r\n" + body)

    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(req(first) + req(second))  # both at once, on one connection
    got = b""
    while b'"id":42' not in got:
        chunk = sock.recv(4096)
        assert chunk, got
        got += chunk
    sock.close()
    stream_end = got.index(b"\r\n0\r\n\r\n")
    assert got.index(b'"id":41') < stream_end < got.index(b'"id":42')
    assert got.count(b"notifications/progress") == 3


def test_a_call_may_outlast_the_request_timeout(fresh_server):
    s = fresh_server({"--handshake-timeout-ms": "300"})
    k = s.create_key("mcp-long")
    session = open_session(s, k)
    started = time.monotonic()
    status, _, text = post(s, call("demo.countdown", {"steps": 4, "interval_ms": 250}), key=k, session=session)
    assert time.monotonic() - started >= 0.9
    assert status == 200 and sse_messages(text)[-1]["result"]["structuredContent"] == {"completed": 4}


def test_shutdown_ends_get_streams_without_waiting_for_the_drain_timeout(fresh_server):
    s = fresh_server({"--drain-timeout-ms": "10000"})
    k = s.create_key("mcp-get-shutdown")
    session = open_session(s, k)
    sock, head = open_get_stream(s, k, session)
    started = time.monotonic()
    s.proc.send_signal(signal.SIGTERM)
    got = read_to_end(sock, head)
    sock.close()
    assert got.endswith(b"\r\n0\r\n\r\n")
    assert s.proc.wait(10) == 0
    assert time.monotonic() - started < 8  # the drain timeout (10 s) was not waited for


def test_an_http_1_0_client_gets_its_stream_unchunked_ending_with_the_connection(server, key, sid):
    body = json.dumps(call("demo.countdown", {"steps": 2, "interval_ms": 10}, id_=51, token="z")).encode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(b"POST /mcp HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Accept: application/json, text/event-stream\r\nAuthorization: Bearer " + key.encode() +
                 b"\r\nMcp-Session-Id: " + sid.encode() + b"\r\nContent-Length: " + str(len(body)).encode() +
                 b"\r\n\r\n" + body)
    got = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            break
        got += chunk
    sock.close()
    head, _, rest = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Transfer-Encoding" not in head and b"Connection: close" in head
    msgs = sse_messages(rest.decode())
    assert [m.get("method") for m in msgs] == ["notifications/progress", "notifications/progress", None]
    assert msgs[-1]["id"] == 51 and msgs[-1]["result"]["structuredContent"] == {"completed": 2}


def read_until(sock, got, needle, timeout=5.0):
    """Reads `sock` until `needle` is in what was read (blocking, bounded)."""
    sock.settimeout(timeout)
    while needle not in got:
        chunk = sock.recv(4096)
        assert chunk, got
        got += chunk
    return got


@pytest.mark.asyncio
async def test_agent_worker_tools_are_listed_announced_and_called_through_mcp(server):
    import asyncio

    from phx import PhxClient, ok

    agent = "mcp-worker-agent"
    k = server.create_key(f"{agent}-client", "--agent", agent)
    wk = server.create_key(f"{agent}-worker", "--agent", agent, "--worker")
    session = open_session(server, k)
    listener, head = open_get_stream(server, k, session)

    # A worker joins with a tool of its own: the session's GET stream hears
    # that the list changed, and tools/list shows the tool with its schema.
    w = await PhxClient.connect(server.ws(key=wk))
    schema = {"type": "object", "required": ["q"], "properties": {"q": {"type": "string"}}}
    ok(await w.join(f"agent:{agent}", {"capacity": 2, "tools": [
        {"name": "acme.lookup", "description": "looks things up", "input_schema": schema}]}))
    await asyncio.to_thread(read_until, listener, head, b"notifications/tools/list_changed")
    status, _, body = rpc(server, {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, key=k, session=session)
    tools = {t["name"]: t for t in body["result"]["tools"]}
    assert tools["acme.lookup"]["inputSchema"] == schema and tools["acme.lookup"]["description"] == "looks things up"
    assert "memory.store" in tools
    # Another agent's client does not see it.
    other = server.create_key("mcp-worker-other")
    other_session = open_session(server, other)
    _, _, body = rpc(server, {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, key=other, session=other_session)
    assert "acme.lookup" not in {t["name"] for t in body["result"]["tools"]}

    # Arguments are checked against the worker's schema.
    _, _, body = rpc(server, call("acme.lookup", {}), key=k, session=session)
    assert body["error"]["code"] == -32602

    # A call goes to the worker; its progress and result come back on the stream.
    sock, first = await asyncio.to_thread(_start_call_raw, server, k, session, "acme.lookup", {"q": "heron"}, 61)
    run = await w.push_event(f"agent:{agent}", "run")
    p = run[4]
    assert (p["kind"], p["name"], p["args"]) == ("tool", "acme.lookup", {"q": "heron"})
    ok(await w.request(f"agent:{agent}", "progress", {"run_id": p["run_id"], "progress": 1, "total": 2}))
    ok(await w.request(f"agent:{agent}", "result", {"run_id": p["run_id"], "data": {"answer": 42}}))
    got = await asyncio.to_thread(read_to_end, sock, first)
    sock.close()
    msgs = sse_messages(got.split(b"\r\n\r\n", 1)[1].decode().replace("\r\n", "\n"))
    assert any(m.get("method") == "notifications/progress" and m["params"]["progress"] == 1 for m in msgs), got
    final = [m for m in msgs if m.get("id") == 61]
    assert final and final[0]["result"]["structuredContent"] == {"answer": 42}

    # A cancelled call reaches the worker as `cancel`.
    sock, first = await asyncio.to_thread(_start_call_raw, server, k, session, "acme.lookup", {"q": "x"}, 62)
    run = await w.push_event(f"agent:{agent}", "run")
    status, _, _ = post(server, {"jsonrpc": "2.0", "method": "notifications/cancelled",
                                 "params": {"requestId": 62, "reason": "changed my mind"}}, key=k, session=session)
    assert status == 202
    cancel = await w.push_event(f"agent:{agent}", "cancel")
    assert cancel[4]["run_id"] == run[4]["run_id"]
    got = await asyncio.to_thread(read_to_end, sock, first)
    sock.close()
    assert b'"id":62' not in got  # no response for a cancelled request

    # The worker leaves: its tool goes, and the listener hears of it again
    # (a second notification, read after the first).
    await w.close()
    await asyncio.to_thread(read_until, listener, b"", b"notifications/tools/list_changed")
    listener.close()
    _, _, body = rpc(server, {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, key=k, session=session)
    assert "acme.lookup" not in {t["name"] for t in body["result"]["tools"]}


def _start_call_raw(server, key, session, name, args, id_):
    """A tools/call on a raw socket, read until its head arrived."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    body = json.dumps(call(name, args, id_=id_, token="w")).encode()
    sock.sendall(b"POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Accept: application/json, text/event-stream\r\nAuthorization: Bearer " + key.encode() +
                 b"\r\nMcp-Session-Id: " + session.encode() + b"\r\nContent-Length: " + str(len(body)).encode() +
                 b"\r\n\r\n" + body)
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = sock.recv(4096)
        assert chunk, got
        got += chunk
    assert got.startswith(b"HTTP/1.1 200"), got
    return sock, got
