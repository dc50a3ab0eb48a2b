"""auth: who may connect and what they may join; tokens, refresh, revocation."""
import asyncio
import time

import pytest

from phx import PhxClient, error, ok
from rawws import b64url, http_upgrade, server_secret, sign, token_for
from synapse_server import wait_until

WS = "/cortex/websocket"


def upgrade_status(server, query):
    status, _, body, sock = http_upgrade(server.port, f"{WS}?vsn=2.0.0&{query}")
    if sock:
        sock.close()
    return status, body


def test_valid_key_connects(server):
    assert upgrade_status(server, f"api_key={server.admin_key}")[0] == 101


def test_invalid_key_refused(server):
    status, body = upgrade_status(server, "api_key=" + server.admin_key[:-2] + "xx")
    assert (status, body["error"]) == (401, "unauthorized")


def test_expired_token_refused(server):
    status, body = upgrade_status(server, "token=" + token_for(server.data_dir, "admin", ttl=-1))
    assert (status, body["error"]) == (401, "token_expired")


def test_alg_none_refused(server):
    now = int(time.time())
    header = b64url(b'{"alg":"none","typ":"JWT"}')
    claims = b64url(f'{{"sub":"admin","exp":{now + 600}}}'.encode())
    for token in (f"{header}.{claims}.", f"{header}.{claims}.AAAA"):
        status, body = upgrade_status(server, f"token={token}")
        assert (status, body["error"]) == (401, "unauthorized"), token


def test_token_signed_with_another_key_refused(server):
    now = int(time.time())
    token = sign({"alg": "HS256"}, {"sub": "admin", "exp": now + 600}, b"x" * 48)
    assert upgrade_status(server, f"token={token}")[0] == 401


def test_hs512_refused_even_with_the_right_secret(server):
    import hashlib, hmac
    now = int(time.time())
    h = b64url(b'{"alg":"HS512"}')
    p = b64url(f'{{"sub":"admin","exp":{now + 600}}}'.encode())
    sig = b64url(hmac.new(server_secret(server.data_dir), f"{h}.{p}".encode(), hashlib.sha512).digest())
    assert upgrade_status(server, f"token={h}.{p}.{sig}")[0] == 401


def test_token_endpoint(server):
    status, _, body = server.http("POST", "/api/token", {"agent_id": "admin", "ttl_s": 120}, key=server.admin_key)
    assert status == 200 and body["expires_at"] - time.time() == pytest.approx(120, abs=5)
    assert server.http("POST", "/api/token", {"ttl_s": 120})[0] == 401
    assert server.http("POST", "/api/token", {"ttl_s": 0}, key=server.admin_key)[0] == 400
    assert server.http("POST", "/api/token", {"ttl_s": 10**9}, key=server.admin_key)[0] == 400
    assert server.http("GET", "/api/token", key=server.admin_key)[0] == 405


def test_only_admin_mints_tokens_for_other_agents(server):
    key = server.create_key("minter")
    status, _, body = server.http("POST", "/api/token", {"agent_id": "someone-else"}, key=key)
    assert (status, body["error"]) == (403, "forbidden")
    assert server.http("POST", "/api/token", {}, key=key)[0] == 200  # its own agent
    assert server.http("POST", "/api/token", {"agent_id": "someone-else"}, key=server.admin_key)[0] == 200


@pytest.mark.asyncio
async def test_token_for_agent_a_cannot_join_cortex_b(server):
    c = await PhxClient.connect(server.ws(token=server.token(agent_id="agent-a", ttl_s=60)))
    ok(await c.join("cortex:agent-a"))
    error(await c.join("cortex:agent-b"), "forbidden")
    await c.close()


@pytest.mark.asyncio
async def test_key_for_agent_a_cannot_join_cortex_b_but_admin_can(server):
    key = server.create_key("agent-a")
    c = await PhxClient.connect(server.ws(key=key))
    ok(await c.join("cortex:agent-a"))
    error(await c.join("cortex:agent-b"), "forbidden")
    await c.close()
    admin = await PhxClient.connect(server.ws())
    assert ok(await admin.join("cortex:agent-b"))["agent_id"] == "agent-b"
    await admin.close()


@pytest.mark.asyncio
async def test_token_topics_claim_limits_joins(server):
    token = server.token(agent_id="admin", ttl_s=60, topics=["room:*", "news:daily"])
    c = await PhxClient.connect(server.ws(token=token))
    ok(await c.join("room:1"))
    ok(await c.join("news:daily"))
    error(await c.join("news:weekly"), "forbidden")
    error(await c.join("secret:x"), "forbidden")
    await c.close()


@pytest.mark.asyncio
async def test_token_expiring_push_then_4001_at_exp(fresh_server):
    s = fresh_server({"--token-warning-s": "1"})
    token = s.token(agent_id="admin", ttl_s=2)
    c = await PhxClient.connect(s.ws(token=token))
    started = time.monotonic()
    push = await c.push_event("phoenix", "token_expiring", timeout=4)
    assert 0 < push[4]["expires_in_ms"] <= 1100
    assert await c.wait_closed(5) == 4001
    assert time.monotonic() - started < 3.5


@pytest.mark.asyncio
async def test_refresh_with_new_token_keeps_connection_past_first_exp(fresh_server):
    s = fresh_server({"--token-warning-s": "1"})
    c = await PhxClient.connect(s.ws(token=s.token(agent_id="admin", ttl_s=2)))
    ok(await c.join("room:r"))
    await c.push_event("phoenix", "token_expiring", timeout=4)
    reply = ok(await c.request("phoenix", "refresh", {"token": s.token(agent_id="admin", ttl_s=30)}))
    assert reply["expires_at"] > time.time() + 20
    await asyncio.sleep(2.5)  # past the first token's exp
    assert ok(await c.heartbeat()) == {}
    await c.close()


@pytest.mark.asyncio
async def test_self_refresh_keeps_connection_alive(fresh_server):
    s = fresh_server({"--token-warning-s": "1"})
    c = await PhxClient.connect(s.ws(token=s.token(agent_id="admin", ttl_s=2)))
    reply = ok(await c.request("phoenix", "refresh", {}))
    assert reply["token"].count(".") == 2 and reply["expires_at"] > time.time() + 60
    await asyncio.sleep(2.5)
    assert ok(await c.heartbeat()) == {}
    await c.close()


@pytest.mark.asyncio
async def test_refresh_refusals(fresh_server):
    s = fresh_server({"--self-refresh": "false"})
    c = await PhxClient.connect(s.ws(token=s.token(agent_id="admin", ttl_s=60)))
    error(await c.request("phoenix", "refresh", {}), "refresh_not_allowed")
    error(await c.request("phoenix", "refresh", {"token": s.token(agent_id="other", ttl_s=60)}), "forbidden")
    error(await c.request("phoenix", "refresh", {"token": "a.b.c"}), "unauthorized")
    error(await c.request("phoenix", "refresh", {"token": token_for(s.data_dir, "admin", ttl=-5)}), "token_expired")
    error(await c.request("phoenix", "refresh", {"token": 5}), "invalid_payload")
    await c.close()
    k = await PhxClient.connect(s.ws())
    error(await k.request("phoenix", "refresh", {}), "invalid_payload")  # key sockets have nothing to refresh
    await k.close()


@pytest.mark.asyncio
async def test_revoked_key_live_connection_closed_4003_within_5s(server):
    key = server.create_key("to-revoke")
    c = await PhxClient.connect(server.ws(key=key))
    ok(await c.join("room:rev"))
    key_id = key.split("_")[1]
    result = server.keys_cli("revoke", key_id)
    assert result.returncode == 0, result.stderr
    started = time.monotonic()
    assert await c.wait_closed(6) == 4003
    assert time.monotonic() - started < 5
    status, _, body, _ = http_upgrade(server.port, f"{WS}?api_key={key}")
    assert (status, body["error"]) == (401, "unauthorized")


@pytest.mark.asyncio
async def test_tokens_die_with_the_key_that_minted_them(server):
    key = server.create_key("minter-2")
    token = server.token(key=key)
    c = await PhxClient.connect(server.ws(token=token))
    assert server.keys_cli("revoke", key.split("_")[1]).returncode == 0
    assert await c.wait_closed(6) == 4003
    status, _, _, _ = http_upgrade(server.port, f"{WS}?token={token}")
    assert status == 401


def test_forbidden_origin(fresh_server):
    s = fresh_server({"--allowed-origins": "https://app.example"})
    q = f"{WS}?api_key={s.admin_key}"
    status, _, body, _ = http_upgrade(s.port, q, {"Origin": "https://evil.example"})
    assert (status, body["error"]) == (403, "forbidden_origin")
    status, _, _, sock = http_upgrade(s.port, q, {"Origin": "https://app.example"})
    assert status == 101
    sock.close()
    status, _, _, sock = http_upgrade(s.port, q)  # no Origin: not a browser, not affected
    assert status == 101
    sock.close()


def test_default_origin_policy_is_same_host(server):
    q = f"{WS}?api_key={server.admin_key}"
    status, _, _, sock = http_upgrade(server.port, q, {"Origin": f"http://127.0.0.1:{server.port}"})
    assert status == 101
    sock.close()
    assert http_upgrade(server.port, q, {"Origin": "http://attacker.example"})[0] == 403


def test_keys_cli(server):
    out = server.keys_cli("list")
    assert out.returncode == 0 and "admin" in out.stdout
    assert server.keys_cli("revoke", "k_nonexistent").returncode == 1
    import subprocess
    from synapse_server import binary
    r = subprocess.run([binary(), "keys", "create", "--data-dir", server.data_dir], capture_output=True, text=True)
    assert r.returncode == 2 and "--name" in r.stderr
    r = subprocess.run([binary(), "keys", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "create" in r.stdout
