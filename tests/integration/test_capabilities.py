"""Channel capabilities (issue 15 item 2): per key (`keys create --can-*`)
and per token (`caps` claim), which topics a holder may subscribe to,
publish on, appear in presence on, and recover history from; the HTTP API
follows the same rules; forged claims do not widen anything."""
import base64
import json

import pytest

from phx import PhxClient, error, ok
from rawws import b64url, http_upgrade, server_secret, sign
from synapse_server import SynapseServer


@pytest.fixture(scope="module")
def server():
    with SynapseServer() as s:
        yield s


@pytest.mark.asyncio
async def test_subscribe_only_key_receives_but_cannot_publish(server):
    reader = server.create_key("reader", "--can-subscribe", "room:*", "--publish")
    pub = await PhxClient.connect(server.ws())
    sub = await PhxClient.connect(server.ws(key=reader))
    ok(await pub.join("room:a"))
    ok(await sub.join("room:a"))
    error(await sub.join("other:a"), "forbidden")
    ok(await pub.request("room:a", "msg", {"n": 1}))
    f = await sub.push_event("room:a", "msg")
    assert f[4]["n"] == 1
    r = error(await sub.request("room:a", "msg", {"n": 2}), "forbidden")
    assert "publish" in r["message"]
    # No presence or history capability: meta, presence and recover are refused.
    error(await sub.join("room:b", {"presence": True}), "forbidden")
    error(await sub.join("room:b", {"meta": {"x": 1}}), "forbidden")
    error(await sub.join("room:b", {"recover": {"offset": 0, "epoch": "x"}}), "forbidden")
    # The HTTP API follows the key's capabilities (it has --publish, but no publish capability).
    status, _, body = server.http("POST", "/api/broadcast", {"topic": "room:a", "event": "e", "payload": {}}, key=reader)
    assert (status, body["error"]) == (403, "forbidden")
    status, _, body = server.http("GET", "/api/presence/room:a", key=reader)
    assert status == 200
    # It may not track itself: a member of room:a, yet listed nowhere, while
    # the publisher (no caps) is listed.
    assert "reader" not in body["presence"], body
    assert "admin" in body["presence"], body
    status, _, _ = server.http("GET", "/api/presence/other:a", key=reader)
    assert status == 403
    await pub.close()
    await sub.close()


@pytest.mark.asyncio
async def test_key_with_patterns_per_capability(server):
    k = server.create_key("mixed", "--can-subscribe", "room:*", "--can-publish", "room:chat",
                          "--can-presence", "room:chat", "--can-history", "room:log", "--publish")
    c = await PhxClient.connect(server.ws(key=k))
    ok(await c.join("room:chat", {"presence": True, "meta": {"s": 1}}))
    ok(await c.request("room:chat", "msg", {}))
    ok(await c.join("room:log", {"recover": {"offset": 0, "epoch": ""}}))
    error(await c.request("room:log", "msg", {}), "forbidden")
    error(await c.join("room:other", {"presence": True}), "forbidden")
    status, _, _ = server.http("POST", "/api/broadcast", {"topic": "room:chat", "event": "e", "payload": {}}, key=k)
    assert status == 200
    listed = [json.loads(l) for l in server.keys_cli("list", "--json").stdout.splitlines()]
    mixed = next(x for x in listed if x["name"] == "mixed")
    assert mixed["caps"]["publish"] == ["room:chat"] and mixed["caps"]["history"] == ["room:log"]
    await c.close()


@pytest.mark.asyncio
async def test_token_caps_claim(server):
    tok = server.token(agent_id="admin", caps={"subscribe": ["feed:*"]})
    c = await PhxClient.connect(server.ws(token=tok))
    ok(await c.join("feed:1"))
    error(await c.request("feed:1", "msg", {}), "forbidden")
    error(await c.join("room:1"), "forbidden")
    # A self-refreshed token keeps the claim.
    r = ok(await c.request("phoenix", "refresh", {}))
    c2 = await PhxClient.connect(server.ws(token=r["token"]))
    error(await c2.join("room:2"), "forbidden")
    await c.close()
    await c2.close()


@pytest.mark.asyncio
async def test_token_cannot_exceed_its_key(server):
    reader = server.create_key("reader2", "--can-subscribe", "room:*")
    # The key asks for publish rights in the token's claim: the key's layer still refuses.
    tok = server.token(key=reader, caps={"subscribe": ["*"], "publish": ["*"]})
    c = await PhxClient.connect(server.ws(token=tok))
    ok(await c.join("room:x"))
    error(await c.join("other:x"), "forbidden")
    error(await c.request("room:x", "msg", {}), "forbidden")
    await c.close()


def test_bad_caps_refused_by_token_endpoint(server):
    for caps in ({"subscribe": "room:*"}, {"write": ["*"]}, {"publish": [1]}, ["room:*"]):
        status, _, body = server.http("POST", "/api/token", {"caps": caps}, key=server.admin_key)
        assert (status, body["error"]) == (400, "invalid_payload"), caps


@pytest.mark.asyncio
async def test_forged_caps_claim_fails_signature(server):
    tok = server.token(agent_id="admin", caps={"subscribe": ["feed:*"]})
    h, p, s = tok.split(".")
    claims = json.loads(base64.urlsafe_b64decode(p + "=="))
    claims["caps"] = {"subscribe": ["*"], "publish": ["*"]}
    forged = f"{h}.{b64url(json.dumps(claims).encode())}.{s}"
    status = http_upgrade(server.port, f"/cortex/websocket?vsn=2.0.0&token={forged}")[0]
    assert status == 401
    # A malformed caps claim under a valid signature is refused, not ignored.
    bad = sign({"alg": "HS256"}, dict(claims, caps={"subscribe": "x"}), server_secret(server.data_dir))
    assert http_upgrade(server.port, f"/cortex/websocket?vsn=2.0.0&token={bad}")[0] == 401


@pytest.mark.asyncio
async def test_admin_and_unrestricted_keys_keep_everything(server):
    plain = server.create_key("plain")
    for key in (server.admin_key, plain):
        c = await PhxClient.connect(server.ws(key=key))
        ok(await c.join("any:topic", {"presence": True, "meta": {}, "recover": {"offset": 0, "epoch": ""}}))
        ok(await c.request("any:topic", "msg", {}))
        await c.close()
