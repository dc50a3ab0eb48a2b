"""cluster: several synapse nodes sharing one Redis (`serve --redis URL`).
Pub/sub, offsets, history and recovery, presence and the per-key connection
limit hold across the nodes; revocation closes a key's connections on every
node; a node that dies without a goodbye is forgotten after its node TTL; a
Redis restart is survived, with local delivery while Redis is away.

Every node of a cluster shares one data directory (key store, JWT secret), so
the admin key the first node prints works everywhere. Each cluster has a
redis-server of its own (tests/harness/redis_server.py)."""
import asyncio
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from phx import PhxClient, ok
from rawws import http_upgrade
from redis_server import RedisServer
from synapse_server import SynapseServer, binary, free_port
from test_presence import View, metas

WS = "/cortex/websocket"
SMALL_TTL_MS = 3000  # node TTL for every test but the default-TTL one


class Cluster:
    """A redis-server and synapse nodes started on it, one shared data dir."""

    def __init__(self, flags=None):
        self.flags = {"--drain-timeout-ms": "2000", **(flags or {})}
        self.data_dir = tempfile.mkdtemp(prefix="synapse-cluster-")
        self.redis = RedisServer()
        self.nodes: list[SynapseServer] = []
        self.admin_key = None

    def start(self, names="abc") -> "Cluster":
        self.redis.start()
        for name in names:
            self.add_node(name)
        return self

    def add_node(self, name, flags=None, redis=True) -> SynapseServer:
        f = dict(self.flags)
        if redis:
            f.update({"--redis": self.redis.url(), "--node-id": name})
        f.update(flags or {})
        node = SynapseServer(data_dir=self.data_dir, flags=f)
        self.nodes.append(node)
        node.start()
        if self.admin_key is None:
            assert node.admin_key, "the first node printed no admin key:\n" + "\n".join(node.log_lines)
            self.admin_key = node.admin_key
        else:
            assert node.admin_key is None, "a later node printed a second admin key"
            node.admin_key = self.admin_key
        return node

    def __getitem__(self, i) -> SynapseServer:
        return self.nodes[i]

    def create_key(self, name, *extra) -> str:
        return self.nodes[0].create_key(name, *extra)

    def cleanup(self) -> None:
        problems = []
        for node in self.nodes:
            try:
                node.cleanup()
            except AssertionError as e:  # a sanitizer report
                problems.append(str(e))
        self.redis.cleanup()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        if problems:
            raise AssertionError("\n\n".join(problems))


@pytest.fixture(scope="module")
def cluster():
    """Three nodes a, b, c on one Redis with a short node TTL; shared by the
    tests that neither kill a node nor Redis."""
    c = Cluster({"--node-ttl-ms": str(SMALL_TTL_MS)})
    try:
        yield c.start()
    finally:
        c.cleanup()


@pytest.fixture
def new_cluster():
    """A cluster of the test's own: call it with flags and node names."""
    made = []

    def make(flags=None, names="abc"):
        c = Cluster(flags)
        made.append(c)
        return c.start(names)

    yield make
    for c in made:
        c.cleanup()


# -- helpers -------------------------------------------------------------------

async def member(node, topic, key=None, **join):
    c = await PhxClient.connect(node.ws(key=key))
    reply = ok(await c.join(topic, join or None))
    return c, reply


async def publish_many(client, topic, event, payloads):
    """Sends every publish at once, then returns the offsets of the replies, in order."""
    refs = [await client.send(topic, event, p) for p in payloads]
    return [ok(await client.reply(ref, timeout=10))["offset"] for ref in refs]


async def events(client, topic, event, n, timeout=10.0):
    return [await client.push_event(topic, event, timeout=timeout) for _ in range(n)]


async def no_more(client, topic, event, quiet=0.5):
    """Frames of `event` that arrive within `quiet` seconds (duplicates, echoes)."""
    return [f for f in await client.drain(quiet) if f[2] == topic and f[3] == event]


async def publish_until_received(pub, sub, topic, event, started, timeout):
    """Publishes `event` on `pub` until `sub` receives one (a cluster getting
    over a Redis restart); fails `timeout` s after `started`."""
    i = 0
    while True:
        assert time.monotonic() - started < timeout, f"no {event} from the publisher's node reached the " \
                                                     f"subscriber's node within {timeout} s"
        ok(await pub.request(topic, event, {"i": i}))
        try:
            return await sub.push_event(topic, event, timeout=0.25)
        except AssertionError:
            i += 1


async def view_until(view, cond, timeout, what):
    """View.until with a message that says what was awaited and what was seen."""
    try:
        return await view.until(cond, timeout=timeout)
    except AssertionError:
        raise AssertionError(f"presence: timed out after {timeout:.1f}s waiting for {what}; "
                             f"state seen: {view.state}") from None


async def until(pred, timeout, what):
    """Polls a blocking predicate without stalling the event loop."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        await asyncio.sleep(0.05)


def ready(node) -> int:
    return node.http("GET", "/health/ready")[0]


def upgrade(node, key):
    """(status, socket or None) of a raw WebSocket upgrade with `key`."""
    status, _, _, sock = http_upgrade(node.port, f"{WS}?api_key={key}")
    return status, sock


async def close_all(*clients):
    for c in clients:
        await c.close()


# -- pub/sub across nodes -------------------------------------------------------

@pytest.mark.asyncio
async def test_message_published_on_a_reaches_subscribers_on_a_b_and_c_once_each_in_order(cluster):
    a, b, c = cluster.nodes
    topic = "room:fanout"
    key = cluster.create_key("fan-publisher")
    # All joins at once: the topic's epoch is created by whichever node is first.
    joined = await asyncio.gather(member(a, topic, key=key), member(a, topic), member(b, topic), member(c, topic))
    (pub, _), *subs = joined
    epochs = {reply["epoch"] for _, reply in joined}
    assert len(epochs) == 1, f"nodes disagree on the topic's epoch: {epochs}"
    epoch = epochs.pop()

    offsets = await publish_many(pub, topic, "m", [{"i": i} for i in range(50)])
    assert offsets == list(range(offsets[0], offsets[0] + 50)), offsets
    for sub, _ in subs:
        got = await events(sub, topic, "m", 50)
        assert [f[4]["_meta"]["offset"] for f in got] == offsets
        assert [f[4]["i"] for f in got] == list(range(50))
        assert {f[4]["_meta"]["epoch"] for f in got} == {epoch}
        assert {f[4]["_meta"]["from"] for f in got} == {"fan-publisher"}
    for sub, _ in subs:
        assert await no_more(sub, topic, "m") == [], "duplicate deliveries"
    assert await no_more(pub, topic, "m", quiet=0.1) == [], "the publisher got its own messages back"
    await close_all(pub, *(s for s, _ in subs))


@pytest.mark.asyncio
async def test_concurrent_publishes_on_two_nodes_share_one_offset_sequence(cluster):
    a, b, c = cluster.nodes
    topic = "room:interleave"
    pa, _ = await member(a, topic)
    pb, _ = await member(b, topic)
    subs = [(await member(n, topic))[0] for n in (a, b, c)]
    oa, ob = await asyncio.gather(publish_many(pa, topic, "m", [{"p": "a", "i": i} for i in range(50)]),
                                  publish_many(pb, topic, "m", [{"p": "b", "i": i} for i in range(50)]))
    everything = sorted(oa + ob)
    assert everything == list(range(everything[0], everything[0] + 100)), "offsets are not one sequence"
    seqs = []
    for sub in subs:
        got = await events(sub, topic, "m", 100)
        seq = [(f[4]["_meta"]["offset"], f[4]["p"], f[4]["i"]) for f in got]
        assert [o for o, _, _ in seq] == everything, "delivered out of offset order"
        for p in ("a", "b"):
            assert [i for _, q, i in seq if q == p] == list(range(50))
        seqs.append(seq)
    assert seqs[0] == seqs[1] == seqs[2]
    for sub in subs:
        assert await no_more(sub, topic, "m", quiet=0.3) == []
    await close_all(pa, pb, *subs)


@pytest.mark.asyncio
async def test_client_leaves_node_b_misses_100_then_recovers_exactly_those_on_node_c(cluster):
    a, b, c = cluster.nodes
    topic = "room:cross-recover"
    pub, _ = await member(a, topic)
    sub, _ = await member(b, topic)
    ok(await pub.request(topic, "m", {"i": -1}))
    last = (await sub.push_event(topic, "m"))[4]["_meta"]
    await sub.close()

    offsets = await publish_many(pub, topic, "m", [{"i": i} for i in range(100)])  # exactly history_size
    n = last["offset"]
    assert offsets == list(range(n + 1, n + 101))

    sub, r = await member(c, topic, recover={"offset": n, "epoch": last["epoch"]})
    assert r["recovered"] is True and r["epoch"] == last["epoch"] and r["offset"] == n + 100, r
    ok(await pub.request(topic, "m", {"i": "live"}))
    got = await events(sub, topic, "m", 101)
    assert [f[4]["_meta"]["offset"] for f in got] == list(range(n + 1, n + 102))
    assert [f[4]["i"] for f in got] == list(range(100)) + ["live"]
    assert await no_more(sub, topic, "m", quiet=0.4) == []
    await close_all(pub, sub)


@pytest.mark.asyncio
async def test_node_configured_by_the_cluster_section_of_a_config_file_joins(cluster):
    a = cluster[0]
    config = Path(cluster.data_dir) / "node-d.toml"
    config.write_text(f'[cluster]\nredis = "{cluster.redis.url()}"\n')
    d = cluster.add_node("d", {"--config": str(config), "--node-ttl-ms": str(SMALL_TTL_MS)}, redis=False)
    try:
        topic = "room:from-config"
        pub, _ = await member(d, topic)
        sub, _ = await member(a, topic)
        offset = ok(await pub.request(topic, "m", {"v": 1}))["offset"]
        f = await sub.push_event(topic, "m")
        assert f[4]["v"] == 1 and f[4]["_meta"]["offset"] == offset
        await close_all(pub, sub)
    finally:
        cluster.nodes.remove(d)
        d.cleanup()


# -- presence --------------------------------------------------------------------

@pytest.mark.asyncio
async def test_presence_lists_members_of_all_nodes_and_a_killed_node_leaves_within_15s(new_cluster):
    cl = new_cluster()  # the default node TTL (10 s)
    a, b, c = cl.nodes
    topic = "room:who"
    agents = {"alice": a, "bob": b, "carol": c}
    clients = {}
    for name, node in agents.items():
        clients[name], _ = await member(node, topic, key=cl.create_key(name), presence=True, meta={"on": name})
    views = {name: View(cl_, topic) for name, cl_ in clients.items()}
    everyone = lambda s: all(len(metas(s, n)) == 1 for n in agents)  # noqa: E731
    for view in views.values():
        state = await view_until(view, everyone, 5, "the members of all three nodes")
        for name in agents:
            m = metas(state, name)[0]
            assert m["on"] == name and m["phx_ref"] and m["online_at"] > 0
    # A late joiner's presence_state already lists the members of every node.
    dave, _ = await member(c, topic, key=cl.create_key("dave"), presence=True)
    state = (await dave.push_event(topic, "presence_state"))[4]
    assert {"alice", "bob", "carol", "dave"} <= set(state), state
    assert metas(state, "bob")[0]["on"] == "bob"
    views["dave"] = View(dave, topic)
    views["dave"].apply(["", None, topic, "presence_state", state])

    b.kill()
    killed = time.monotonic()
    bob_gone = lambda s: "bob" not in s and "alice" in s and "carol" in s  # noqa: E731
    for name in ("alice", "carol", "dave"):
        await view_until(views[name], bob_gone, max(0.1, 15 - (time.monotonic() - killed)),
                         f"bob's leave (node b was killed) as seen by {name}")
    assert time.monotonic() - killed < 15
    await close_all(*(clients[n] for n in ("alice", "carol")), dave)


# -- limits and revocation ---------------------------------------------------------

@pytest.mark.asyncio
async def test_connection_limit_per_key_holds_across_nodes(new_cluster):
    cl = new_cluster({"--key-max-connections": "3", "--node-ttl-ms": str(SMALL_TTL_MS)})
    a, b, c = cl.nodes
    key = cl.create_key("three")
    held = {}
    for name, node in (("a1", a), ("a2", a), ("b1", b)):
        status, held[name] = upgrade(node, key)
        assert status == 101, name
    for node in (c, a, b):
        status, hdrs, body, _ = http_upgrade(node.port, f"{WS}?api_key={key}")
        assert status == 429 and body["error"] == "too_many_connections" and int(hdrs["retry-after"]) >= 1
    status, other = upgrade(c, cl.admin_key)
    assert status == 101  # another key is not affected
    other.close()

    # Closing one on a frees a slot on c ...
    held.pop("a1").close()
    held["c1"] = await until(lambda: upgrade(c, key)[1], 5, "the slot freed on a to be usable on c")
    # ... and only one.
    assert upgrade(c, key)[0] == 429

    # A node that dies gives its connections back after its TTL: b held one.
    b.kill()
    killed = time.monotonic()
    held["a3"] = await until(lambda: upgrade(a, key)[1], SMALL_TTL_MS / 1000 + 5, "the killed node's slot")
    assert time.monotonic() - killed < SMALL_TTL_MS / 1000 + 5
    assert upgrade(a, key)[0] == 429  # a1 gone, b1 released: a2, c1, a3 are the three
    for sock in held.values():
        if sock:
            sock.close()


@pytest.mark.asyncio
async def test_connection_limit_per_ip_holds_across_nodes(new_cluster):
    """Every test connection comes from 127.0.0.1: three per IP in all."""
    cl = new_cluster({"--ip-max-connections": "3", "--node-ttl-ms": str(SMALL_TTL_MS)}, names="ab")
    a, b = cl.nodes
    keys = [cl.create_key(f"ip{i}") for i in range(4)]  # different keys: only the IP limit applies
    held = []
    for node, key in ((a, keys[0]), (b, keys[1]), (a, keys[2])):
        status, sock = upgrade(node, key)
        assert status == 101
        held.append(sock)
    for node in (a, b):
        status, hdrs, body, _ = http_upgrade(node.port, f"{WS}?api_key={keys[3]}")
        assert status == 429 and body["error"] == "too_many_connections", (status, body)
    held.pop(1).close()  # the one on b
    held.append(await until(lambda: upgrade(a, keys[3])[1], 5, "the slot freed on b to be usable on a"))
    assert upgrade(b, keys[3])[0] == 429
    for sock in held:
        sock.close()


@pytest.mark.asyncio
async def test_node_killed_and_restarted_at_once_under_its_id_still_drops_its_old_members_and_counts(new_cluster):
    """A crashed node brought back at once by its supervisor, with the same
    --node-id, must not keep the dead process's members and connections alive."""
    cl = new_cluster({"--key-max-connections": "2", "--node-ttl-ms": str(SMALL_TTL_MS)}, names="ab")
    a, b = cl.nodes
    topic = "room:reborn"
    key = cl.create_key("reborn")
    watcher, _ = await member(a, topic, presence=True)
    view = View(watcher, topic)
    old = [(await member(b, topic, key=key, presence=True))[0] for _ in range(2)]
    await view_until(view, lambda s: len(metas(s, "reborn")) == 2, 5, "two metas of reborn")
    assert upgrade(a, key)[0] == 429
    b.kill()
    killed = time.monotonic()
    b.start()  # same --node-id, port and data dir, well within the TTL
    budget = SMALL_TTL_MS / 1000 + 5
    await view_until(view, lambda s: "reborn" not in s, budget, "the killed process's members to leave")
    sock = await until(lambda: upgrade(a, key)[1], max(0.1, budget - (time.monotonic() - killed)),
                       "the dead process's connection slots")
    sock.close()
    await close_all(watcher, *old)


@pytest.mark.asyncio
async def test_revoking_a_key_closes_its_connections_on_every_node_within_5s(cluster):
    a, b, c = cluster.nodes
    key = cluster.create_key("cluster-revoke")
    token = a.token(key=key, agent_id="cluster-revoke", ttl_s=600)  # minted on a, used on b and c
    conns = []
    for node in (a, b, c):
        conns.append((await member(node, "room:revoke", key=key))[0])
    for node in (b, c):
        conns.append((await PhxClient.connect(node.ws(token=token))))
    bystander, _ = await member(b, "room:revoke")
    result = a.keys_cli("revoke", key.split("_")[1])
    assert result.returncode == 0, result.stderr
    started = time.monotonic()
    codes = await asyncio.gather(*[conn.wait_closed(6) for conn in conns])
    assert codes == [4003] * 5 and time.monotonic() - started < 5
    for node in (a, b, c):
        assert http_upgrade(node.port, f"{WS}?api_key={key}")[0] == 401
        assert http_upgrade(node.port, f"{WS}?token={token}")[0] == 401
    assert ok(await bystander.heartbeat()) == {}  # the admin key's connection stays
    await bystander.close()


@pytest.mark.asyncio
async def test_revocation_announced_on_redis_reaches_a_node_with_its_own_key_database():
    """Nodes on different hosts each have their own synapse.db (here: a copy).
    `keys revoke --redis` on one host records the revocation in every node's
    database and closes the key's connections there within 5 s; a node that
    was down meanwhile catches up from the set when it starts."""
    redis = RedisServer().start()
    dirs = [tempfile.mkdtemp(prefix="synapse-host-") for _ in range(3)]
    nodes = []
    try:
        first = SynapseServer(data_dir=dirs[0])
        key = first.create_key("multi-host")
        key_id = key.split("_")[1]
        for d in dirs[1:]:
            shutil.copy(Path(dirs[0]) / "synapse.db", Path(d) / "synapse.db")
        flags = {"--redis": redis.url(), "--node-ttl-ms": str(SMALL_TTL_MS)}
        nodes = [SynapseServer(data_dir=d, flags=dict(flags, **{"--node-id": n})) for d, n in zip(dirs[:2], "ab")]
        for n in nodes:
            n.start()
        conns = [(await member(n, "room:hosts", key=key))[0] for n in nodes]
        result = first.keys_cli("revoke", key_id, "--redis", redis.url())
        assert result.returncode == 0, result.stderr
        assert "announced to the cluster" in result.stdout
        started = time.monotonic()
        codes = await asyncio.gather(*[c.wait_closed(6) for c in conns])
        assert codes == [4003, 4003] and time.monotonic() - started < 5, codes
        for n in nodes:
            assert http_upgrade(n.port, f"{WS}?api_key={key}")[0] == 401
        # Host c was down during the announcement; it starts with the key live
        # in its own copy of the database, and learns of it from Redis.
        late = SynapseServer(data_dir=dirs[2], flags=dict(flags, **{"--node-id": "c"}))
        nodes.append(late)
        late.start()
        await until(lambda: http_upgrade(late.port, f"{WS}?api_key={key}")[0] == 401, 5,
                    "the late node to refuse the revoked key")
        listed = late.keys_cli("list", "--json")
        assert any('"revoked_at":null' not in line and key_id in line for line in listed.stdout.splitlines())
    finally:
        for n in nodes:
            n.cleanup()
        redis.cleanup()
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)


# -- Redis going away ----------------------------------------------------------------

@pytest.mark.asyncio
async def test_redis_restart_is_survived_publish_a_to_b_works_again_within_10s(new_cluster):
    cl = new_cluster({"--node-ttl-ms": str(SMALL_TTL_MS)}, names="ab")
    a, b = cl.nodes
    topic = "room:redis-restart"
    pub, _ = await member(a, topic)
    sub, _ = await member(b, topic)
    assert ready(a) == ready(b) == 200
    ok(await pub.request(topic, "before", {}))
    before = (await sub.push_event(topic, "before"))[4]["_meta"]

    cl.redis.kill()
    await until(lambda: ready(a) == 503 and ready(b) == 503, 5, "/health/ready 503 on both nodes")
    await asyncio.sleep(0.5)
    assert ready(a) == ready(b) == 503
    cl.redis.restart()
    restarted = time.monotonic()

    # The same two connections: publish on a until b's subscriber sees one.
    f = await publish_until_received(pub, sub, topic, "after", restarted, 10)
    meta = f[4]["_meta"]
    assert meta.get("local") is not True and meta["offset"] >= 1
    # Within one epoch offsets only grow; Redis lost the history, so either
    # the offsets went on or the epoch changed.
    assert meta["offset"] > before["offset"] or meta["epoch"] != before["epoch"], (before, meta)
    await until(lambda: ready(a) == 200 and ready(b) == 200, max(0.1, 10 - (time.monotonic() - restarted)),
                "/health/ready 200 on both nodes after the restart")

    # Steady again: everything arrives, in order, once.
    sub.buffer.clear()
    await sub.drain(0.3)
    offsets = await publish_many(pub, topic, "steady", [{"k": k} for k in range(10)])
    assert [f[4]["_meta"]["offset"] for f in await events(sub, topic, "steady", 10)] == offsets
    assert await no_more(sub, topic, "steady", quiet=0.3) == []
    await close_all(pub, sub)


class RedisSession:
    """One connection to Redis kept open (it stays authenticated when new
    logins are refused)."""

    def __init__(self, redis):
        import socket as _socket
        from redis_server import _Reader
        self.sock = _socket.create_connection(("127.0.0.1", redis.port), timeout=2)
        self.reader = _Reader(self.sock)

    def command(self, *args):
        payload = f"*{len(args)}\r\n".encode()
        for a in args:
            b = str(a).encode()
            payload += f"${len(b)}\r\n".encode() + b + b"\r\n"
        self.sock.sendall(payload)
        return self.reader.reply()

    def kill_node(self, name):
        """Closes node `name`'s connections; returns how many."""
        listing = self.command("CLIENT", "LIST")
        listing = listing.decode() if isinstance(listing, bytes) else listing
        ids = [dict(kv.split("=", 1) for kv in line.split() if "=" in kv)["id"]
               for line in listing.splitlines() if f"name=synapse:{name}." in line]
        for i in ids:
            self.command("CLIENT", "KILL", "ID", i)
        return len(ids)

    def close(self):
        self.sock.close()


@pytest.mark.asyncio
async def test_messages_published_while_a_nodes_link_was_down_reach_its_members_after_it_reconnects(new_cluster):
    """Redis keeps running with its history; only node b loses its link (and
    cannot log in again for a while). What a published meanwhile reaches b's
    subscriber once b is back: every message, once, in order, before newer ones."""
    cl = new_cluster({"--node-ttl-ms": str(SMALL_TTL_MS)}, names="ab")
    a, b = cl.nodes
    topic = "room:link-gap"
    pub, _ = await member(a, topic)
    sub, _ = await member(b, topic)
    first = await publish_many(pub, topic, "m", [{"k": -1}])
    assert [f[4]["_meta"]["offset"] for f in await events(sub, topic, "m", 1)] == first

    admin = RedisSession(cl.redis)
    try:
        admin.command("ACL", "SETUSER", "default", "off")  # new logins fail; open connections go on
        assert admin.kill_node("b") == 2
        await until(lambda: ready(b) == 503, 5, "node b to notice it lost Redis")
        missed = await publish_many(pub, topic, "m", [{"k": k} for k in range(30)])
        assert missed == list(range(first[0] + 1, first[0] + 31))
        await asyncio.sleep(0.3)
        assert await no_more(sub, topic, "m", quiet=0.2) == [], "b delivered while it had no link"
        admin.command("ACL", "SETUSER", "default", "on")
    finally:
        admin.close()
    await until(lambda: ready(b) == 200, 10, "node b to reconnect")
    later = await publish_many(pub, topic, "m", [{"k": "later"}])
    got = [f[4]["_meta"]["offset"] for f in await events(sub, topic, "m", 31)]
    assert got == missed + later
    assert await no_more(sub, topic, "m", quiet=0.3) == []
    assert any("missed while the backend was away" in l for l in b.log_lines), "\n".join(b.log_lines[-20:])
    await close_all(pub, sub)


@pytest.mark.asyncio
async def test_what_a_node_missed_beyond_the_history_is_reported_as_a_gap_before_what_follows(new_cluster):
    """b loses its link while 30 messages are published; the history keeps 5.
    b's subscriber gets a phx_gap push (recovered: false, the epoch, the
    missing offsets), then the 5 the stream still holds, then newer ones:
    nothing missing goes unreported."""
    cl = new_cluster({"--node-ttl-ms": str(SMALL_TTL_MS), "--history-size": "5"}, names="ab")
    a, b = cl.nodes
    topic = "room:gap"
    pub, _ = await member(a, topic)
    sub, joined = await member(b, topic)
    first = await publish_many(pub, topic, "m", [{"k": -1}])
    assert [f[4]["_meta"]["offset"] for f in await events(sub, topic, "m", 1)] == first
    admin = RedisSession(cl.redis)
    try:
        admin.command("ACL", "SETUSER", "default", "off")
        assert admin.kill_node("b") == 2
        await until(lambda: ready(b) == 503, 5, "node b to notice it lost Redis")
        missed = await publish_many(pub, topic, "m", [{"k": k} for k in range(30)])
        admin.command("ACL", "SETUSER", "default", "on")
    finally:
        admin.close()
    await until(lambda: ready(b) == 200, 10, "node b to reconnect")
    later = await publish_many(pub, topic, "m", [{"k": "later"}])
    frames = []
    while not any(f[3] == "m" and f[4]["_meta"]["offset"] == later[0] for f in frames):
        frames.append(await sub.expect(lambda f: f[2] == topic and f[1] is None, 10, "pushes after the reconnect"))
    seq = [(f[3], f[4]) for f in frames if f[3] in ("m", "phx_gap")]
    assert seq[0] == ("phx_gap", {"recovered": False, "epoch": joined["epoch"], "from": missed[0], "to": missed[-6]})
    assert [p["_meta"]["offset"] for e, p in seq[1:]] == missed[-5:] + later
    assert await no_more(sub, topic, "m", quiet=0.3) == []
    await close_all(pub, sub)


@pytest.mark.asyncio
async def test_an_offset_that_went_back_in_redis_gets_a_new_epoch_instead_of_reusing_offsets(new_cluster):
    """Redis restored from older data: the topic's offset is behind what
    node b delivered, under the same epoch. When b reconnects it starts a new
    epoch, so the next message is offset 1 of that epoch, not a reused 3."""
    cl = new_cluster({"--node-ttl-ms": str(SMALL_TTL_MS)}, names="ab")
    a, b = cl.nodes
    topic = "room:rollback"
    pub, _ = await member(a, topic)
    sub, _ = await member(b, topic)
    await publish_many(pub, topic, "m", [{"k": k} for k in range(5)])
    seen = [f[4]["_meta"] for f in await events(sub, topic, "m", 5)]
    assert [m["offset"] for m in seen] == [1, 2, 3, 4, 5]

    admin = RedisSession(cl.redis)
    try:
        admin.command("ACL", "SETUSER", "default", "off")
        assert admin.kill_node("b") == 2
        await until(lambda: ready(b) == 503, 5, "node b to notice it lost Redis")
        admin.command("SET", f"synapse:0:o:{topic}", "2")  # as if restored from an older snapshot
        admin.command("ACL", "SETUSER", "default", "on")
    finally:
        admin.close()
    await until(lambda: ready(b) == 200, 10, "node b to reconnect")
    assert await publish_many(pub, topic, "m", [{"k": "after"}]) == [1]
    meta = (await sub.push_event(topic, "m"))[4]["_meta"]
    assert meta["offset"] == 1 and meta["epoch"] != seen[0]["epoch"], meta
    # A client recovering from the old epoch is told the history is gone.
    late = await PhxClient.connect(a.ws())
    r = ok(await late.join(topic, {"recover": {"offset": 5, "epoch": seen[0]["epoch"]}}))
    assert r["recovered"] is False and r["epoch"] == meta["epoch"]
    await close_all(pub, sub, late)


@pytest.mark.asyncio
async def test_a_hung_redis_is_noticed_without_tcp_closing_and_the_link_comes_back(new_cluster):
    """Redis stopped (SIGSTOP) keeps its sockets open: only the link's pings
    reveal it. Ready turns 503 within seconds; after SIGCONT the nodes
    recover and deliver across nodes again."""
    import os
    import signal as _signal
    cl = new_cluster({"--node-ttl-ms": str(SMALL_TTL_MS)}, names="ab")
    a, b = cl.nodes
    topic = "room:hung"
    pub, _ = await member(a, topic)
    sub, _ = await member(b, topic)
    os.kill(cl.redis.pid, _signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        await until(lambda: ready(a) == 503 and ready(b) == 503, 8, "/health/ready 503 with Redis hung")
        assert time.monotonic() - stopped < 8
    finally:
        os.kill(cl.redis.pid, _signal.SIGCONT)
    resumed = time.monotonic()
    await until(lambda: ready(a) == 200 and ready(b) == 200, 10, "/health/ready 200 after SIGCONT")
    await publish_until_received(pub, sub, topic, "after", resumed, 10)
    await close_all(pub, sub)


@pytest.mark.asyncio
async def test_local_delivery_keeps_working_while_redis_is_down(new_cluster):
    cl = new_cluster({"--node-ttl-ms": str(SMALL_TTL_MS)}, names="ab")
    a, b = cl.nodes
    topic = "room:local"
    key = cl.create_key("local-pub")
    pub, _ = await member(a, topic, key=key)
    near, _ = await member(a, topic)
    far, _ = await member(b, topic)
    ok(await pub.request(topic, "m", {"i": 0}))
    assert (await near.push_event(topic, "m"))[4]["_meta"]["offset"] >= 1

    cl.redis.kill()
    await until(lambda: ready(a) == 503, 5, "/health/ready 503 on a")
    for i in range(1, 4):
        assert ok(await pub.request(topic, "m", {"i": i})) == {"offset": 0, "local": True}
    got = await events(near, topic, "m", 3)
    assert [f[4]["i"] for f in got] == [1, 2, 3]
    for f in got:
        meta = f[4]["_meta"]
        assert meta["local"] is True and "offset" not in meta and meta["from"] == "local-pub", meta
    assert await no_more(near, topic, "m", quiet=0.3) == []
    assert await no_more(pub, topic, "m", quiet=0.1) == []  # still no self-echo

    # When Redis is back, publishes are global again.
    cl.redis.restart()
    f = await publish_until_received(pub, far, topic, "back", time.monotonic(), 10)
    assert f[4]["_meta"]["offset"] >= 1 and not f[4]["_meta"].get("local")
    reply = ok(await pub.request(topic, "back", {}))
    assert reply["offset"] > f[4]["_meta"]["offset"] and not reply.get("local")
    await close_all(pub, near, far)


def test_unreachable_redis_at_start_exits_1_with_a_clear_message():
    url = f"redis://127.0.0.1:{free_port()}"  # nothing listens there
    port = free_port()
    with tempfile.TemporaryDirectory() as d:
        r = subprocess.run([binary(), "serve", "--bind", "127.0.0.1", "--port", str(port), "--data-dir", d,
                            "--redis", url], capture_output=True, text=True, timeout=30)
    out = r.stdout + r.stderr
    assert r.returncode == 1, (r.returncode, out)
    # One line names Redis (besides the URL's scheme) and the URL.
    assert any(url in line and "redis" in line.replace(url, "").lower() for line in out.splitlines()), out
    assert "listening on" not in out


def test_malformed_redis_url_exits_2_naming_the_key():
    with tempfile.TemporaryDirectory() as d:
        r = subprocess.run([binary(), "serve", "--data-dir", d, "--redis", "http://127.0.0.1:6379"],
                           capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "cluster.redis" in r.stderr, (r.returncode, r.stdout, r.stderr)


# -- no silent loss: a paused node, an empty Redis (issue 20) -------------------------
#
# Each case runs ROUNDS times under a steady publish through node a and
# counts, per subscriber, every offset a acknowledged: it must arrive exactly
# once, in order, or lie in a `phx_gap` push (recovered: false) the subscriber
# got. A single silent loss fails the test.

ROUNDS = 10


async def steady_publish(pub, topic, rate, stop):
    """Publishes {"i": n} at `rate` per second until `stop` is set, without
    waiting for replies; returns every reply payload, in send order."""
    loop = asyncio.get_running_loop()
    refs, due = [], loop.time()
    while not stop.is_set():
        refs.append(await pub.send(topic, "m", {"i": len(refs)}))
        due += 1 / rate
        await asyncio.sleep(max(0.0, due - loop.time()))
    return [await pub.reply(ref, timeout=15) for ref in refs]


def acknowledged(replies):
    """Offsets a Redis confirmed, in send order (not local, not unavailable)."""
    return [r["response"]["offset"] for r in replies
            if r["status"] == "ok" and r["response"].get("offset", 0) > 0 and not r["response"].get("local")]


def split_epochs(offsets, epochs):
    """{epoch: offsets}: `offsets` in send order, a new epoch wherever they go back."""
    out, i = {}, 0
    for k, o in enumerate(offsets):
        if k and o <= offsets[k - 1]:
            i += 1
        assert i < len(epochs), f"more epochs acknowledged than {epochs}: {offsets}"
        out.setdefault(epochs[i], []).append(o)
    return out


def account(frames, topic):
    """(offsets received per epoch, in order; gaps reported as (epoch, from, to))."""
    got, gaps = {}, []
    for f in frames:
        if f[2] != topic or f[1] is not None:
            continue
        if f[3] == "phx_gap":
            p = f[4]
            assert p["recovered"] is False and isinstance(p["from"], int), p
            gaps.append((p["epoch"], p["from"], float("inf") if p["to"] is None else p["to"]))
        elif f[3] == "m" and not f[4]["_meta"].get("local"):
            got.setdefault(f[4]["_meta"]["epoch"], []).append(f[4]["_meta"]["offset"])
    return got, gaps


def silent_losses(frames, topic, acked):
    """Problems with one subscriber's deliveries: duplicates, disorder, and
    acknowledged offsets neither delivered nor inside a reported gap."""
    got, gaps = account(frames, topic)
    problems = []
    for ep, offs in got.items():
        if len(set(offs)) != len(offs):
            problems.append(f"epoch {ep}: duplicates {sorted(o for o in set(offs) if offs.count(o) > 1)[:10]}")
        if offs != sorted(offs):
            problems.append(f"epoch {ep}: out of order")
    for ep, offs in acked.items():
        seen = set(got.get(ep, []))
        lost = [o for o in offs if o not in seen and not any(g[0] == ep and g[1] <= o <= g[2] for g in gaps)]
        if lost:
            problems.append(f"epoch {ep}: {len(lost)} acknowledged offsets silently lost, e.g. {lost[:10]}")
    return problems


def covered(frames, topic, acked):
    """Whether every acknowledged offset has arrived or was reported as a gap."""
    got, gaps = account(frames, topic)
    return all(o in set(got.get(ep, [])) or any(g[0] == ep and g[1] <= o <= g[2] for g in gaps)
               for ep, offs in acked.items() for o in offs)


async def collect(sub, topic, acked, timeout=20.0):
    """The subscriber's frames once everything acknowledged is accounted for
    (or `timeout` passed), plus whatever comes in a short quiet period after
    (duplicates would)."""
    frames, sub.buffer = sub.buffer, []
    deadline = time.monotonic() + timeout
    while not covered(frames, topic, acked) and time.monotonic() < deadline:
        try:
            frames.append(await sub._next(max(0.05, deadline - time.monotonic())))
        except asyncio.TimeoutError:
            break
    return frames + await sub.drain(0.3)


def count_lines(node, text):
    return sum(text in line for line in node.log_lines)


async def paused_node_rounds(cl, pause_s, rate):
    import os
    import signal as _signal
    a, b = cl.nodes
    totals = {"acked": 0, "gaps": 0}
    for rnd in range(ROUNDS):
        topic = f"room:pause-{pause_s}-{rnd}"
        pub, _ = await member(a, topic)
        subs = [await member(b, topic), await member(b, topic), await member(a, topic)]
        epoch = subs[0][1]["epoch"]
        downs = count_lines(b, "lost the connection to Redis")
        pauses = count_lines(b, "did not run for")
        stop = asyncio.Event()
        task = asyncio.ensure_future(steady_publish(pub, topic, rate, stop))
        await asyncio.sleep(0.5)
        os.kill(b.pid, _signal.SIGSTOP)
        try:
            await asyncio.sleep(pause_s)
        finally:
            os.kill(b.pid, _signal.SIGCONT)
        await asyncio.sleep(0.6)  # live publishes after the resume, behind what waited
        stop.set()
        acked = {epoch: acknowledged(await task)}
        assert len(acked[epoch]) >= rate * pause_s * 0.8, "the publisher fell behind its rate"
        for i, (sub, _) in enumerate(subs):
            frames = await collect(sub, topic, acked)
            problems = silent_losses(frames, topic, acked)
            assert not problems, f"round {rnd}, subscriber {i} on {'bba'[i]}: {problems}"
            totals["gaps"] += len(account(frames, topic)[1])
        assert count_lines(b, "lost the connection to Redis") == downs, \
            f"round {rnd}: b declared Redis down because it was paused:\n" + "\n".join(b.log_lines[-10:])
        assert count_lines(b, "did not run for") > pauses, "b did not notice its own pause"
        totals["acked"] += len(acked[epoch])
        await close_all(pub, *(s for s, _ in subs))
    return totals


@pytest.mark.slow
@pytest.mark.soak
@pytest.mark.asyncio
async def test_a_node_paused_5s_under_50_msgs_loses_no_acknowledged_message_10_rounds(new_cluster):
    """SIGSTOP node b for 5 s while a publishes at 50 msg/s (250 messages,
    more than the 100 kept in the history): on SIGCONT b does not declare
    Redis down (its own pause is not an unanswered ping) and reads what
    waited in its subscriber socket, so its subscribers get every offset."""
    cl = new_cluster({"--node-ttl-ms": str(SMALL_TTL_MS), "--idle-timeout-ms": "0"}, names="ab")
    totals = await paused_node_rounds(cl, 5, 50)
    assert totals["gaps"] == 0, totals  # nothing was lost, so nothing is reported lost


@pytest.mark.slow
@pytest.mark.soak
@pytest.mark.asyncio
async def test_a_node_paused_13s_under_20_msgs_loses_no_acknowledged_message_10_rounds(new_cluster):
    """As above, 13 s at 20 msg/s: longer than b's node TTL, so b is also
    reaped meanwhile and registers itself again when it resumes."""
    cl = new_cluster({"--node-ttl-ms": str(SMALL_TTL_MS), "--idle-timeout-ms": "0"}, names="ab")
    totals = await paused_node_rounds(cl, 13, 20)
    assert totals["gaps"] == 0, totals


@pytest.mark.slow
@pytest.mark.soak
@pytest.mark.asyncio
async def test_redis_restarted_empty_under_steady_publish_every_node_gets_the_new_epoch_from_1_10_rounds(
        new_cluster):
    """SIGKILL Redis and start it empty while a publishes at 50 msg/s. The new
    epoch starts at offset 1; whichever node subscribes again later reads
    the new epoch's start from the stream: every subscriber on a and b gets
    every acknowledged offset of both epochs once, in order; only the old
    epoch's tail that went with Redis (if any) may be reported as a gap. In
    odd rounds b is also frozen for 2 s as Redis comes back, so it certainly
    subscribes again ~100 messages into the new epoch."""
    import os
    import signal as _signal
    cl = new_cluster({"--node-ttl-ms": str(SMALL_TTL_MS), "--idle-timeout-ms": "0",
                      "--history-size": "2000"}, names="ab")
    a, b = cl.nodes
    for rnd in range(ROUNDS):
        topic = f"room:empty-redis-{rnd}"
        pub, _ = await member(a, topic)
        subs = [await member(b, topic), await member(b, topic), await member(a, topic)]
        old = subs[0][1]["epoch"]
        stop = asyncio.Event()
        task = asyncio.ensure_future(steady_publish(pub, topic, 50, stop))
        await asyncio.sleep(0.7)
        backfills = count_lines(b, "missed while the backend was away")
        late = rnd % 2 == 1
        cl.redis.kill()
        if late:
            await until(lambda: ready(b) == 503, 5, "b to notice Redis is gone")
            os.kill(b.pid, _signal.SIGSTOP)
        try:
            await asyncio.sleep(0.3)
            cl.redis.restart()
            if late:
                await until(lambda: ready(a) == 200, 10, "a ready after the restart")
                await asyncio.sleep(2.0)
        finally:
            if late:
                os.kill(b.pid, _signal.SIGCONT)
        await until(lambda: ready(a) == 200 and ready(b) == 200, 10, "both nodes ready after the restart")
        await asyncio.sleep(1.5)
        stop.set()
        offsets = acknowledged(await task)
        new = cl.redis.command("GET", f"synapse:0:e:{topic}").decode()
        assert new != old
        acked = split_epochs(offsets, [old, new])
        assert len(acked.get(new, [])) >= 50, ("too few publishes in the new epoch", offsets)
        assert acked[new][0] == 1, acked[new][:5]
        for i, (sub, _) in enumerate(subs):
            frames = await collect(sub, topic, acked)
            problems = silent_losses(frames, topic, acked)
            assert not problems, f"round {rnd}, subscriber {i} on {'bba'[i]}: {problems}"
            got, gaps = account(frames, topic)
            # The stream holds the whole new epoch: none of it may be skipped.
            assert got.get(new, []) == acked[new], f"round {rnd}, subscriber {i}: {got.get(new, [])[:5]}"
            assert all(g[0] == old and g[2] == float("inf") for g in gaps), gaps
        if late:
            assert count_lines(b, "missed while the backend was away") > backfills, \
                f"round {rnd}: b did not read the new epoch's start from the stream"
        await close_all(pub, *(s for s, _ in subs))
