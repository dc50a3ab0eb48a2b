"""Identity-provider tokens (issue 15 item 1): RS256, ES256 and EdDSA tokens
verified against a JWKS served over real HTTP on loopback (or a file), with
iss/aud/leeway checks, key rotation through an unknown kid, and every
algorithm trap: alg none, HS/RS confusion, kid as a path or URL, jku/x5u,
forged claims."""
import asyncio
import hashlib
import hmac
import json
import shutil
import time

import pytest

from idp_keys import JwksServer, Key, b64url, claims, workdir
from phx import PhxClient, error, ok
from rawws import http_upgrade
from synapse_server import SynapseServer, wait_until

WS = "/cortex/websocket"


def status_of(server, token):
    status, _, body, sock = http_upgrade(server.port, f"{WS}?vsn=2.0.0&token={token}")
    if sock:
        sock.close()
    return status, body


@pytest.fixture(scope="module")
def idp():
    d = workdir()
    keys = {alg: Key(alg, f"{alg.lower()}-1", d) for alg in ("RS256", "ES256", "EdDSA")}
    jwks = JwksServer()
    jwks.document = {"keys": [k.jwk() for k in keys.values()]}
    server = SynapseServer(flags={"--jwks-url": jwks.url, "--issuer": "https://idp.test", "--audience": "synapse",
                                  "--leeway-s": "30", "--jwks-min-refresh-ms": "300"}).start()
    yield server, jwks, keys, d
    server.cleanup()
    jwks.close()
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_each_algorithm_connects(idp, alg):
    server, _, keys, _ = idp
    assert status_of(server, keys[alg].token(claims()))[0] == 101


@pytest.mark.asyncio
async def test_idp_token_acts_as_its_sub_with_its_claims(idp):
    server, _, keys, _ = idp
    tok = keys["ES256"].token(claims(sub="bob", topics=["room:*"]))
    c = await PhxClient.connect(server.ws(token=tok))
    ok(await c.join("cortex:bob"))
    error(await c.join("cortex:admin"), "forbidden")
    ok(await c.join("room:1"))
    error(await c.join("other:1"), "forbidden")
    # The identity provider decides session length: no self refresh.
    error(await c.request("phoenix", "refresh", {}), "refresh_not_allowed")
    # A new token from it is accepted.
    r = ok(await c.request("phoenix", "refresh", {"token": keys["RS256"].token(claims(sub="bob", ttl=900))}))
    assert r["expires_at"] >= int(time.time()) + 800
    await c.close()


def test_issuer_audience_and_time(idp):
    server, _, keys, _ = idp
    k = keys["RS256"]
    assert status_of(server, k.token(claims(iss="https://evil.test")))[0] == 401
    assert status_of(server, k.token(claims(iss=None)))[0] == 401
    assert status_of(server, k.token(claims(aud="someone-else")))[0] == 401
    assert status_of(server, k.token(claims(aud=None)))[0] == 401
    assert status_of(server, k.token(claims(aud=["x", "synapse"])))[0] == 101
    # Leeway: 10 s past exp still in (30 s), 60 s past is not; nbf likewise.
    assert status_of(server, k.token(claims(ttl=-10)))[0] == 101
    status, body = status_of(server, k.token(claims(ttl=-60)))
    assert (status, body["error"]) == (401, "token_expired")
    assert status_of(server, k.token(claims(nbf=int(time.time()) + 10)))[0] == 101
    assert status_of(server, k.token(claims(nbf=int(time.time()) + 120)))[0] == 401
    # A payload kid naming an API key is ignored: it borrows nothing.
    assert status_of(server, k.token(claims(kid="kdoesnotexist")))[0] == 101


def test_algorithm_traps(idp):
    server, _, keys, d = idp
    rs = keys["RS256"]
    body = claims()
    p = b64url(json.dumps(body).encode())
    # alg none, with and without a signature.
    for h in ({"alg": "none", "kid": rs.kid}, {"alg": "None", "kid": rs.kid}):
        hh = b64url(json.dumps(h).encode())
        for sig in ("", "AAAA"):
            assert status_of(server, f"{hh}.{p}.{sig}")[0] == 401
    # HS/RS confusion: HS256 signed with the RSA public key (PEM) as the secret.
    hh = b64url(json.dumps({"alg": "HS256", "kid": rs.kid}).encode())
    sig = b64url(hmac.new(rs.pem_public, f"{hh}.{p}".encode(), hashlib.sha256).digest())
    assert status_of(server, f"{hh}.{p}.{sig}")[0] == 401
    # The header's alg must be the key's: an ES256 token naming the RSA kid.
    es = keys["ES256"]
    assert status_of(server, es.token(body, {"kid": rs.kid}))[0] == 401
    assert status_of(server, rs.token(body, {"alg": "RS384"}))[0] == 401
    assert status_of(server, rs.token(body, {"alg": "PS256"}))[0] == 401
    # A kid that names a file or a URL is only ever a map key.
    for kid in ("../../../../etc/passwd", f"{d}/rs256-1.pem", "http://127.0.0.1:1/jwks.json", ""):
        assert status_of(server, rs.token(body, {"kid": kid}))[0] == 401, kid
    # jku / x5u / an embedded jwk pointing at the attacker's key are never used.
    evil = Key("RS256", "rs256-1", d)  # same kid, another key
    for extra in ({"jku": "http://127.0.0.1:1/evil.json"}, {"x5u": "http://127.0.0.1:1/evil.pem"},
                  {"jwk": evil.jwk()}):
        assert status_of(server, evil.token(body, extra))[0] == 401
    # crit is refused; a forged payload under a real signature fails.
    assert status_of(server, rs.token(body, {"crit": ["exp"]}))[0] == 401
    good = rs.token(body)
    h0, _, s0 = good.split(".")
    forged = b64url(json.dumps(dict(body, sub="admin")).encode())
    assert status_of(server, f"{h0}.{forged}.{s0}")[0] == 401
    # A token with no kid at all.
    assert status_of(server, rs.token(body, {"kid": None}))[0] == 401


def test_rotation_unknown_kid_refreshes_once_per_interval(idp):
    server, jwks, keys, d = idp
    new = Key("EdDSA", "eddsa-2", d)
    before = jwks.requests
    jwks.document = {"keys": [k.jwk() for k in keys.values()] + [new.jwk()]}
    time.sleep(0.35)  # past the min refresh interval of the earlier tests
    # The first token with the new kid waits for one refresh and is admitted.
    assert status_of(server, new.token(claims()))[0] == 101
    assert jwks.requests == before + 1
    # Invented kids in a burst: at most one more fetch in the interval.
    before = jwks.requests
    for i in range(20):
        assert status_of(server, new.token(claims(), {"kid": f"invented-{i}"}))[0] == 401
    assert jwks.requests - before <= 1


def test_a_broken_jwks_keeps_the_last_good_keys(idp):
    server, jwks, keys, _ = idp
    good = jwks.document
    try:
        jwks.document = b"<html>not json</html>"
        time.sleep(0.35)
        # The unknown kid triggers a refresh that fetches garbage...
        assert status_of(server, keys["RS256"].token(claims(), {"kid": "nope"}))[0] == 401
        # ...and the keys from before still verify.
        assert status_of(server, keys["RS256"].token(claims()))[0] == 101
        jwks.status = 500
        time.sleep(0.35)
        assert status_of(server, keys["ES256"].token(claims(), {"kid": "nope2"}))[0] == 401
        assert status_of(server, keys["ES256"].token(claims()))[0] == 101
        assert server.saw_log(lambda l: "keeping the previous keys" in l)
    finally:
        jwks.status = 200
        jwks.document = good


def test_removed_key_stops_working_after_refresh(idp):
    server, jwks, keys, _ = idp
    good = jwks.document
    try:
        jwks.document = {"keys": [keys["RS256"].jwk(), keys["EdDSA"].jwk()]}  # ES256 withdrawn
        time.sleep(0.35)
        assert status_of(server, keys["RS256"].token(claims(), {"kid": "unknown-x"}))[0] == 401  # refresh
        assert status_of(server, keys["ES256"].token(claims()))[0] in (101, 401)
        # The refresh was triggered by the unknown kid; now ES256's kid is gone.
        wait_until(lambda: status_of(server, keys["ES256"].token(claims()))[0] == 401, timeout=3,
                   what="withdrawn key refused")
    finally:
        jwks.document = good
        time.sleep(0.35)
        status_of(server, keys["ES256"].token(claims()))  # unknown -> refresh back


def test_hs256_unchanged_beside_jwks(idp):
    server, _, _, _ = idp
    tok = server.token(agent_id="admin", ttl_s=60)
    assert status_of(server, tok)[0] == 101


def test_jwks_file_and_untrusted_key_types():
    d = workdir()
    try:
        ed = Key("EdDSA", "file-ed", d)
        # An oct (symmetric) key and a JWK whose alg disagrees with its type are skipped.
        secret = b"s" * 48
        doc = {"keys": [ed.jwk(), {"kty": "oct", "kid": "sym", "k": b64url(secret)},
                        Key("ES256", "mismatch", d).jwk(alg="RS256")]}
        path = f"{d}/jwks.json"
        with open(path, "w") as f:
            json.dump(doc, f)
        with SynapseServer(flags={"--jwks-file": path}) as server:
            assert status_of(server, ed.token(claims()))[0] == 101
            hh = b64url(json.dumps({"alg": "HS256", "kid": "sym"}).encode())
            p = b64url(json.dumps(claims()).encode())
            sig = b64url(hmac.new(secret, f"{hh}.{p}".encode(), hashlib.sha256).digest())
            assert status_of(server, f"{hh}.{p}.{sig}")[0] == 401
            assert server.saw_log(lambda l: "skipped" in l)
    finally:
        shutil.rmtree(d, ignore_errors=True)


# -- browsers: Origin patterns, actionable refusals, CORS for /api/token ------

@pytest.fixture(scope="module")
def browser_server():
    with SynapseServer(flags={"--allowed-origins": "http://localhost:*,https://*.example.com,https://app.test"}) as s:
        yield s


def origin_status(server, origin):
    status, _, body, sock = http_upgrade(server.port, f"{WS}?vsn=2.0.0&api_key={server.admin_key}",
                                         headers={"Origin": origin})
    if sock:
        sock.close()
    return status, body


def test_origin_patterns(browser_server):
    s = browser_server
    for origin in ("http://localhost:3000", "http://localhost", "https://a.example.com", "https://a.b.example.com",
                   "https://APP.test", "HTTPS://x.Example.COM"):
        assert origin_status(s, origin)[0] == 101, origin
    for origin in ("https://localhost:3000", "https://example.com", "https://evilexample.com",
                   "https://example.com.evil.test", "https://a.example.com:8443", "https://app.test:443",
                   "http://a.example.com", "null", "https://a.example.com/path", "https://x@a.example.com",
                   "http://localhost.evil.test:3000"):
        status, body = origin_status(s, origin)
        assert (status, body["error"]) == (403, "forbidden_origin"), origin
    status, body = origin_status(s, "https://evil.test")
    assert "https://evil.test" in body["reason"] and "allowed_origins" in body["reason"]
    assert s.saw_log(lambda l: "refused" in l and "https://evil.test" in l and "--allowed-origins" in l)


def test_token_endpoint_cors(browser_server):
    s = browser_server
    status, hdrs, _ = s.http("OPTIONS", "/api/token", headers={"Origin": "http://localhost:5173",
                                                                "Access-Control-Request-Method": "POST"})
    assert status == 204
    assert hdrs["Access-Control-Allow-Origin"] == "http://localhost:5173"
    assert "POST" in hdrs["Access-Control-Allow-Methods"] and "Authorization" in hdrs["Access-Control-Allow-Headers"]
    status, _, body = s.http("OPTIONS", "/api/token", headers={"Origin": "https://evil.test"})
    assert (status, body["error"]) == (403, "forbidden_origin") and "allowed_origins" in body["reason"]
    status, hdrs, body = s.http("POST", "/api/token", {"ttl_s": 60}, key=s.admin_key,
                                headers={"Origin": "https://a.example.com"})
    assert status == 200 and hdrs["Access-Control-Allow-Origin"] == "https://a.example.com"
    status, _, body = s.http("POST", "/api/token", {"ttl_s": 60}, key=s.admin_key, headers={"Origin": "https://evil.test"})
    assert status == 403
    # Without an Origin (a backend, curl) nothing changes.
    assert s.http("POST", "/api/token", {"ttl_s": 60}, key=s.admin_key)[0] == 200


def test_default_same_host_refusal_names_the_option(browser_server):
    with SynapseServer() as s:
        status, body = origin_status(s, "http://localhost:3000")
        assert status == 403 and "--allowed-origins" in body["reason"] and "own host" in body["reason"]
