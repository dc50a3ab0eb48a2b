"""Connection limits (protocol section 7): refused before the upgrade with 429
and Retry-After; every close path gives its counts back."""
import json
import random
import socket
import struct

import pytest

from rawws import client_frame, http_upgrade, read_frames
from synapse_server import wait_until

WS = "/cortex/websocket"


def upgrade_from(port, target, source_ip="127.0.0.1"):
    return http_upgrade(port, target, source_ip=source_ip)


def test_eleventh_connection_of_one_key_is_refused(fresh_server):
    s = fresh_server({"--key-max-connections": "10", "--ip-new-per-min": "0"})
    key = s.create_key("ten")
    socks = []
    for _ in range(10):
        status, _, _, sock = upgrade_from(s.port, f"{WS}?api_key={key}")
        assert status == 101
        socks.append(sock)
    status, hdrs, body, _ = upgrade_from(s.port, f"{WS}?api_key={key}")
    assert status == 429 and body["error"] == "too_many_connections" and int(hdrs["retry-after"]) >= 1
    # Another key is not affected, and a slot comes back when one closes.
    assert upgrade_from(s.port, f"{WS}?api_key={s.admin_key}")[0] == 101
    socks.pop().close()
    wait_until(lambda: upgrade_status_closing(s.port, f"{WS}?api_key={key}") == 101, timeout=5)
    for sock in socks:
        sock.close()


def upgrade_status_closing(port, target):
    status, _, _, sock = upgrade_from(port, target)
    if sock:
        sock.close()
    return status


def test_unlimited_keys_skip_the_per_key_limit(fresh_server):
    s = fresh_server({"--key-max-connections": "2", "--ip-new-per-min": "0"})
    key = s.create_key("wide", "--unlimited")
    socks = [upgrade_from(s.port, f"{WS}?api_key={key}")[3] for _ in range(5)]
    assert all(socks)
    for sock in socks:
        sock.close()


def test_token_connections_count_against_their_sub(fresh_server):
    s = fresh_server({"--key-max-connections": "2", "--ip-new-per-min": "0"})
    token = s.token(agent_id="admin", ttl_s=60)
    socks = [upgrade_from(s.port, f"{WS}?token={token}")[3] for _ in range(2)]
    assert upgrade_from(s.port, f"{WS}?token={token}")[0] == 429
    for sock in socks:
        sock.close()


def test_hundred_and_first_from_one_ip_is_refused(fresh_server):
    s = fresh_server({"--ip-max-connections": "100", "--ip-new-per-min": "0", "--key-max-connections": "0"})
    socks = []
    for _ in range(100):
        status, _, _, sock = upgrade_from(s.port, f"{WS}?api_key={s.admin_key}")
        assert status == 101
        socks.append(sock)
    status, hdrs, body, _ = upgrade_from(s.port, f"{WS}?api_key={s.admin_key}")
    assert status == 429 and body["error"] == "too_many_connections" and "retry-after" in hdrs
    # Another address is counted on its own.
    assert upgrade_from(s.port, f"{WS}?api_key={s.admin_key}", "127.0.0.2")[0] == 101
    for sock in socks:
        sock.close()


def test_eleventh_new_connection_in_a_minute_is_refused(fresh_server):
    s = fresh_server({"--ip-new-per-min": "10"}, relaxed=False)
    for _ in range(10):
        assert upgrade_status_closing(s.port, f"{WS}?api_key={s.admin_key}") == 101
    status, hdrs, body, _ = upgrade_from(s.port, f"{WS}?api_key={s.admin_key}")
    assert status == 429 and body["error"] == "connection_rate_exceeded"
    assert 1 <= int(hdrs["retry-after"]) <= 6  # one token every 6 s
    assert upgrade_status_closing(s.port, f"{WS}?api_key={s.admin_key}") == 429
    # Plain HTTP requests are not counted.
    assert s.http("GET", "/health")[0] == 200


def test_counters_return_to_zero_after_1000_varied_closes(fresh_server):
    s = fresh_server({"--ip-max-connections": "2000", "--ip-new-per-min": "0", "--key-max-connections": "2000",
                      "--idle-timeout-ms": "1000"}, relaxed=False)
    key = s.create_key("churn", "--msgs-per-min", "0")
    target = f"{WS}?api_key={key}"
    rng = random.Random(7)
    ways = ["close_frame", "reset", "fin", "violation", "too_big", "idle", "malformed_storm", "token_expired"]
    token = s.token(key=key, ttl_s=1)
    idle = []
    counts = {w: 0 for w in ways}
    for i in range(1000):
        way = ways[i % len(ways)]
        counts[way] += 1
        tgt = f"{WS}?token={token}" if way == "token_expired" else target
        status, _, _, sock = upgrade_from(s.port, tgt, f"127.0.0.{1 + rng.randrange(3)}")
        if status != 101:
            assert way == "token_expired" and status == 401  # the 1 s token ran out mid-loop
            continue
        sock.sendall(client_frame(1, json.dumps(["1", "1", f"room:churn{i % 7}", "phx_join", {"presence": True}]).encode()))
        if way == "close_frame":
            sock.sendall(client_frame(8, b"\x03\xe8"))
            read_frames(sock, timeout=2)
            sock.close()
        elif way == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        elif way == "fin":
            sock.shutdown(socket.SHUT_WR)
            sock.close()
        elif way == "violation":
            sock.sendall(client_frame(1, b"unmasked", mask=False))
            read_frames(sock, timeout=2)
            sock.close()
        elif way == "too_big":
            sock.sendall(client_frame(1, b"", length=1 << 30)[:14])
            read_frames(sock, timeout=2)
            sock.close()
        elif way == "malformed_storm":
            for _ in range(11):
                sock.sendall(client_frame(1, b"nope"))
            read_frames(sock, timeout=2)
            sock.close()
        else:  # idle and token_expired: left open for the server to close
            idle.append(sock)
    wait_until(lambda: s.metrics()["synapse_connections_open"] == 0, timeout=15, what="all connections closed")
    m = s.metrics()
    assert m["synapse_limiter_ip_connections"] == 0
    assert m["synapse_limiter_key_connections"] == 0
    assert m["synapse_topic_members"] == 0
    assert m['synapse_connections_closed_total{code="4000"}'] >= 1
    assert m['synapse_connections_closed_total{code="1009"}'] == counts["too_big"]
    assert m['synapse_connections_closed_total{code="1008"}'] == counts["malformed_storm"]
    assert m['synapse_connections_closed_total{code="1002"}'] == counts["violation"]
    for sock in idle:
        sock.close()
