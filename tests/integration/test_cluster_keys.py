"""API keys shared across cluster hosts (issue 15 item 4): with --redis, a
key created (`keys create --redis`) or revoked (`keys revoke --redis`) on any
host works, or stops working, on every host within a second, without copying
SQLite rows. Each host keeps its own data directory (as separate machines
would); the JWT secret is shared through config."""
import asyncio
import json
import shutil
import subprocess
import tempfile
import time

import pytest

from phx import PhxClient, error, ok
from rawws import http_upgrade
from redis_server import RedisServer
from synapse_server import SynapseServer, binary

WS = "/cortex/websocket"
SECRET = "k" * 48


def status(node, key):
    s, _, _, sock = http_upgrade(node.port, f"{WS}?vsn=2.0.0&api_key={key}")
    if sock:
        sock.close()
    return s


def keys_cli(data_dir, *args):
    return subprocess.run([binary(), "keys", *args, "--data-dir", data_dir], capture_output=True, text=True)


def wait_status(node, key, want, timeout=1.0):
    """Seconds until the upgrade answers `want` (fails past `timeout`)."""
    t0 = time.monotonic()
    while True:
        if status(node, key) == want:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"key still not {want} on port {node.port} after {timeout}s")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def hosts():
    redis = RedisServer().start()
    dirs = [tempfile.mkdtemp(prefix=f"synapse-host{i}-") for i in range(3)]
    flags = {"--redis": redis.url(), "--jwt-secret": SECRET, "--revocation-poll-ms": "200"}
    nodes = [SynapseServer(data_dir=dirs[i], flags=dict(flags, **{"--node-id": f"h{i}"})).start() for i in range(2)]
    yield redis, dirs, nodes, flags
    for n in nodes:
        n.cleanup()
    redis.cleanup()
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


def create(data_dir, redis, name, *extra):
    r = keys_cli(data_dir, "create", "--name", name, "--redis", redis.url(), *extra)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().splitlines()[-1]


@pytest.mark.asyncio
async def test_key_created_on_one_host_works_on_another_within_a_second(hosts):
    redis, dirs, (a, b), _ = hosts
    key = create(dirs[0], redis, "shared", "--can-subscribe", "room:*")
    assert wait_status(a, key, 101) < 1.0
    assert wait_status(b, key, 101) < 1.0
    # Its capabilities travel with it.
    c = await PhxClient.connect(b.ws(key=key))
    ok(await c.join("room:1"))
    error(await c.request("room:1", "m", {}), "forbidden")
    await c.close()
    # The row in Redis carries the hash, never the secret.
    row = json.loads(redis.command("HGET", "synapse:0:keys", key.split("_")[1]))
    assert key not in json.dumps(row) and len(row["hash"]) == 64
    # A token minted on host a for that key is accepted on host b.
    s, _, body = a.http("POST", "/api/token", {"ttl_s": 60}, key=key)
    assert s == 200
    st, _, _, sock = http_upgrade(b.port, f"{WS}?vsn=2.0.0&token={body['token']}")
    sock and sock.close()
    assert st == 101


@pytest.mark.asyncio
async def test_revoked_on_any_host_stops_everywhere(hosts):
    redis, dirs, (a, b), _ = hosts
    key = create(dirs[0], redis, "doomed")
    wait_status(b, key, 101)
    live = await PhxClient.connect(a.ws(key=key))
    ok(await live.heartbeat())
    # Revoked from host b's data directory, where the row only arrived through Redis.
    r = keys_cli(dirs[1], "revoke", key.split("_")[1], "--redis", redis.url())
    assert r.returncode == 0, r.stderr
    assert wait_status(a, key, 401) < 1.0
    assert wait_status(b, key, 401) < 1.0
    assert await live.wait_closed(timeout=3) == 4003


def test_host_that_was_away_catches_up(hosts):
    redis, dirs, _, flags = hosts
    created = create(dirs[0], redis, "while-away")
    revoked = create(dirs[0], redis, "revoked-while-away")
    assert keys_cli(dirs[0], "revoke", revoked.split("_")[1], "--redis", redis.url()).returncode == 0
    late = SynapseServer(data_dir=dirs[2], flags=dict(flags, **{"--node-id": "late"})).start()
    try:
        assert wait_status(late, created, 101, timeout=2) < 2
        assert status(late, revoked) == 401
    finally:
        late.stop()


def test_forged_rows_are_ignored(hosts):
    redis, _, (a, _), _ = hosts
    for junk in ("not json", json.dumps({"id": "kx", "name": "x"}),
                 json.dumps({"id": "kevil", "name": "e", "agent_id": "admin", "tenant": "default",
                             "hash": "zz" * 32, "admin": True})):
        redis.command("PUBLISH", "synapse:0:keys", junk)
    time.sleep(0.2)
    assert any("malformed key row" in l for l in a.log_lines)
    assert not any("key kevil learned" in l for l in a.log_lines)
