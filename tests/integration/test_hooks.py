"""Backend hooks (issue 15 item 3) against a real HTTP backend on loopback:
connect/join/publish allow and deny with a reason, data attached at connect
and sent to later hooks, publish payload rewrites, publish order kept, a
hook that hangs (timeout -> failure policy, deny or allow), and answers that
are garbage (not JSON, HTTP 500, no "allow", a payload that breaks the rules)."""
import hashlib
import hmac
import time

import pytest

from hook_backend import HookBackend
from phx import PhxClient, error, ok
from rawws import http_upgrade
from synapse_server import SynapseServer

WS = "/cortex/websocket"


@pytest.fixture(scope="module")
def backend():
    b = HookBackend()
    yield b
    b.close()


@pytest.fixture(scope="module")
def hooked(backend):
    flags = {"--hook-connect-url": backend.url("connect"), "--hook-join-url": backend.url("join"),
             "--hook-publish-url": backend.url("publish"), "--hook-timeout-ms": "300",
             "--hook-secret": "s" * 32}
    with SynapseServer(flags=flags) as s:
        yield s


@pytest.fixture(autouse=True)
def clean(backend):
    backend.reset()


def upgrade(server, key):
    status, _, body, sock = http_upgrade(server.port, f"{WS}?vsn=2.0.0&api_key={key}")
    if sock:
        sock.close()
    return status, body


def test_connect_deny_with_reason(hooked, backend):
    backend.answers["connect"] = {"allow": False, "reason": "account suspended"}
    status, body = upgrade(hooked, hooked.admin_key)
    assert (status, body["error"], body["reason"]) == (403, "forbidden", "account suspended")
    call = backend.of("connect")[0]
    assert call["agent_id"] == "admin" and call["peer_ip"] == "127.0.0.1"
    # Signed with the hook secret.
    h = backend.headers[0]
    assert h["x-synapse-signature"] == "sha256=" + hmac.new(b"s" * 32, h["_raw"], hashlib.sha256).hexdigest()


@pytest.mark.asyncio
async def test_data_attached_at_connect_reaches_join_and_publish(hooked, backend):
    backend.answers["connect"] = {"allow": True, "data": {"plan": "pro", "uid": 7}}
    c = await PhxClient.connect(hooked.ws())
    ok(await c.join("room:1", {"meta": {"m": 1}}))
    ok(await c.request("room:1", "msg", {"x": 1}))
    assert backend.of("join")[0]["data"] == {"plan": "pro", "uid": 7}
    assert backend.of("join")[0]["payload"] == {"meta": {"m": 1}}
    assert backend.of("publish")[0]["data"] == {"plan": "pro", "uid": 7}
    assert backend.of("publish")[0]["payload"] == {"x": 1}
    await c.close()


@pytest.mark.asyncio
async def test_join_and_publish_deny(hooked, backend):
    backend.answers["join"] = lambda b: {"allow": b["topic"] != "room:secret", "reason": "members only"}
    backend.answers["publish"] = lambda b: {"allow": b["event"] != "spam", "reason": "no spam"}
    c = await PhxClient.connect(hooked.ws())
    r = error(await c.join("room:secret"), "forbidden")
    assert r["message"] == "members only"
    ok(await c.join("room:open"))
    r = error(await c.request("room:open", "spam", {}), "forbidden")
    assert r["message"] == "no spam"
    ok(await c.request("room:open", "hello", {}))
    # cortex joins are not pub/sub joins: no join hook.
    before = len(backend.of("join"))
    ok(await c.join("cortex:admin"))
    assert len(backend.of("join")) == before
    await c.close()


@pytest.mark.asyncio
async def test_publish_rewrite_and_order(hooked, backend):
    def rewrite(b):
        if b["payload"].get("n") == 2:
            time.sleep(0.05)  # a slow answer must not let later publishes overtake it
        return {"allow": True, "payload": {"n": b["payload"]["n"], "clean": True}}
    backend.answers["publish"] = rewrite
    pub = await PhxClient.connect(hooked.ws())
    sub = await PhxClient.connect(hooked.ws())
    ok(await pub.join("room:r"))
    ok(await sub.join("room:r"))
    refs = [await pub.send("room:r", "m", {"n": i}) for i in range(1, 6)]
    offsets = [ok(await pub.reply(r))["offset"] for r in refs]
    assert offsets == sorted(offsets)
    got = [(await sub.push_event("room:r", "m"))[4] for _ in range(5)]
    assert [g["n"] for g in got] == [1, 2, 3, 4, 5]
    assert all(g["clean"] for g in got) and all("_meta" in g for g in got)
    # A rewrite that sets _meta is unusable.
    backend.answers["publish"] = {"allow": True, "payload": {"_meta": {"from": "forged"}}}
    error(await pub.request("room:r", "m", {"n": 9}), "internal")
    await pub.close()
    await sub.close()


@pytest.mark.asyncio
async def test_hang_and_garbage_follow_deny_policy(hooked, backend):
    # A hook that hangs: the 300 ms timeout applies, the policy (deny) decides.
    backend.delay["connect"] = 2.0
    t0 = time.monotonic()
    status, body = upgrade(hooked, hooked.admin_key)
    assert status == 403 and "did not answer" in body["reason"] and "timeout" in body["reason"]
    assert time.monotonic() - t0 < 1.5
    backend.reset()
    c = await PhxClient.connect(hooked.ws())
    for garbage in (b"not json", b"[1,2]", b'{"allow": "yes"}', b"{}"):
        backend.answers["join"] = garbage
        r = error(await c.join("room:g"), "forbidden")
        assert "did not answer" in r["message"]
    backend.answers["join"] = {"allow": True}
    backend.status["join"] = 500
    error(await c.join("room:g"), "forbidden")
    backend.status.clear()
    ok(await c.join("room:g"))
    backend.answers["publish"] = {"allow": True, "payload": "replacement"}
    error(await c.request("room:g", "m", {}), "forbidden")
    # Other connections go on meanwhile: a hanging hook blocks no I/O thread.
    backend.delay["publish"] = 1.0
    ref = await c.send("room:g", "m", {})
    other = await PhxClient.connect(hooked.ws())
    t0 = time.monotonic()
    ok(await other.heartbeat())
    assert time.monotonic() - t0 < 0.2
    error(await c.reply(ref, timeout=3), "forbidden")
    await c.close()
    await other.close()


@pytest.mark.asyncio
async def test_allow_policy_when_backend_is_down():
    # Nothing listens on the hook's port: every call fails at once.
    from synapse_server import free_port
    dead = f"http://127.0.0.1:{free_port()}/hook"
    flags = {"--hook-connect-url": dead, "--hook-join-url": dead, "--hook-publish-url": dead,
             "--hook-connect-failure": "allow", "--hook-join-failure": "allow", "--hook-publish-failure": "deny",
             "--hook-timeout-ms": "300"}
    with SynapseServer(flags=flags) as s:
        c = await PhxClient.connect(s.ws())
        ok(await c.join("room:1"))
        error(await c.request("room:1", "m", {}), "forbidden")
        await c.close()
        assert s.saw_log(lambda l: "hook publish failed" in l)


@pytest.mark.asyncio
async def test_no_hook_configured_makes_no_request(backend):
    with SynapseServer() as s:
        c = await PhxClient.connect(s.ws())
        ok(await c.join("room:1"))
        ok(await c.request("room:1", "m", {}))
        await c.close()
    assert backend.calls == []
