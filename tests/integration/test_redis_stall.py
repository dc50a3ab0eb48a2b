"""No I/O thread waits on Redis (issue 18 item 3): in cluster mode joins,
admissions, `POST /api/broadcast` and remote presence complete
asynchronously on the connection's own thread, so a Redis that stops
answering (SIGSTOP) stalls only the requests that need it. Every node here
runs one I/O thread (`--threads 1`): every connection shares it.

Also: joins racing a steady stream of publishes (the asynchronous join holds
what arrives while it is pending and replays it filtered by the join's
offset) get every later offset exactly once, in order."""
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from phx import PhxClient, ok
from test_cluster import Cluster, acknowledged, member, new_cluster, steady_publish  # noqa: F401 (a fixture)

HERE = Path(__file__).resolve().parent
STALL_S = 2.0
# The timing bound is the release build's; a sanitizer build is several
# times slower at everything.
ASAN = "debug" in os.environ.get("SYNAPSE_BIN", "")
P99_MS = 15.0 if ASAN else 5.0
MAX_MS = 250.0  # well under the stall


def quantile(xs, q):
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


class Prober:
    """tests/integration/heartbeat_prober.py: sequential heartbeats on one
    connection, timed in a process of its own."""

    def __init__(self, node, key, seconds):
        self.proc = subprocess.Popen([sys.executable, str(HERE / "heartbeat_prober.py"), str(node.port), key,
                                      str(seconds)], stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line.strip() == "ready", f"the prober did not connect: {line!r}"

    def samples(self, timeout=30):
        out, _ = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, f"the prober failed (exit {self.proc.returncode})"
        return json.loads(out.strip().splitlines()[-1])


@pytest.fixture
def stall_cluster():
    # Per-key connection limits on: every admission asks Redis's counts.
    c = Cluster({"--threads": "1", "--key-max-connections": "1000", "--idle-timeout-ms": "0"})
    try:
        yield c.start("ab")
    finally:
        c.cleanup()


def stop_redis(cl):
    os.kill(cl.redis.pid, signal.SIGSTOP)


def resume_redis(cl):
    os.kill(cl.redis.pid, signal.SIGCONT)


async def send_join(client, topic, payload=None):
    ref = client.next_ref()
    client.join_refs[topic] = ref
    await client.send(topic, "phx_join", payload, ref=ref, join_ref=ref)
    return ref


def offsets_of(frames, topic, event="m"):
    return [f[4]["_meta"]["offset"] for f in frames if f[2] == topic and f[3] == event and f[1] is None]


@pytest.mark.asyncio
async def test_a_stopped_redis_does_not_stall_connections_that_do_not_need_it(stall_cluster):
    cl = stall_cluster
    a, b = cl.nodes
    key = cl.create_key("stall", "--publish")
    loop = asyncio.get_running_loop()

    # Before the stall: the connections that will join (a connection is
    # itself an admission, which now needs Redis), a member of the
    # broadcast's topic, and the heartbeat prober.
    joiners = [await PhxClient.connect(a.ws(key=key)) for _ in range(3)]
    leaver = await PhxClient.connect(a.ws(key=key))
    closer = await PhxClient.connect(a.ws(key=key))
    bc_sub, _ = await member(a, "room:stall-bc", key=key)
    prober = Prober(a, key, seconds=0.8 + STALL_S + 1.2)
    await asyncio.sleep(0.8)  # a baseline before the stall

    stop_redis(cl)
    t_stop = time.monotonic()
    try:
        # Joins of new topics (each subscribes and waits for Redis), with presence.
        joins = []
        for i, c in enumerate(joiners):
            for j in range(3):
                topic = f"room:stall-{i}-{j}"
                joins.append((c, topic, await send_join(c, topic, {"presence": True, "meta": {"j": j}})))
        # A pending join cancelled by phx_leave, and one whose connection closes.
        left_ref = await send_join(leaver, "room:stall-left")
        leave_ref = await leaver.send("room:stall-left", "phx_leave", {})
        await send_join(closer, "room:stall-closed", {"presence": True, "meta": {"who": "closer"}})
        await closer.close()
        # Admissions: new connections count themselves in Redis.
        connects = [asyncio.ensure_future(PhxClient.connect(a.ws(key=key))) for _ in range(3)]
        # Remote presence (nobody on a is in the topic) and a broadcast.
        presence = loop.run_in_executor(None, a.http, "GET", "/api/presence/room:stall-nobody", None, key)
        broadcast = loop.run_in_executor(None, a.http, "POST", "/api/broadcast",
                                         {"topic": "room:stall-bc", "event": "bc", "payload": {"x": 1}}, key)
        await asyncio.sleep(max(0.0, STALL_S - (time.monotonic() - t_stop)))
    finally:
        resume_redis(cl)
    t_cont = time.monotonic()

    # The prober's connection never touched Redis: its heartbeats went on.
    samples = await loop.run_in_executor(None, prober.samples)
    window = [rtt for t, rtt in samples if t_stop <= t <= t_cont]
    assert len(window) >= 100, f"only {len(window)} heartbeats while Redis was stopped"
    p99, worst = quantile(window, 0.99), max(window)
    print(f"heartbeats while Redis was stopped: n={len(window)} p50={quantile(window, 0.5):.2f} ms "
          f"p99={p99:.2f} ms max={worst:.2f} ms")
    assert p99 < P99_MS, f"heartbeat p99 {p99:.2f} ms while Redis was stopped (max {worst:.1f} ms)"
    assert worst < MAX_MS, f"a heartbeat took {worst:.1f} ms while Redis was stopped"

    # The joins completed once Redis answered, or failed with `unavailable`
    # after call_timeout; a failed one joins now.
    joined, outcomes = [], []
    for c, topic, ref in joins:
        r = await c.reply(ref, timeout=10)
        outcomes.append(r["status"])
        if r["status"] == "error":
            assert r["response"]["reason"] == "unavailable", r
            r = await c.join(topic, {"presence": True})
        resp = ok(r)
        assert resp["epoch"], resp
        state = await c.push_event(topic, "presence_state")
        assert state[4], f"{topic}: the joiner is not in its own presence_state"
        joined.append((c, topic))

    print(f"joins made while Redis was stopped: {outcomes.count('ok')} ok, {outcomes.count('error')} unavailable")

    # The cancelled join was never answered; its leave was.
    ok(await leaver.reply(leave_ref, timeout=10))
    rest = await leaver.drain(0.5)
    assert not [f for f in rest if f[1] == left_ref], f"a cancelled join was answered: {rest}"
    ok(await leaver.join("room:stall-left"))

    # The admissions went through (on this node's counts if Redis was late).
    conns = await asyncio.wait_for(asyncio.gather(*connects), 15)
    for c in conns:
        ok(await c.heartbeat())

    status, _, body = await presence
    assert (status, body.get("error")) == (503, "unavailable") or (status == 200 and body["presence"] == {}), \
        (status, body)
    status, _, body = await broadcast
    if status == 200:
        got = await bc_sub.push_event("room:stall-bc", "bc", timeout=10)
        assert got[4]["_meta"]["offset"] == body["offset"], (got, body)
    else:
        assert (status, body["error"]) == (503, "unavailable"), (status, body)

    # The closed connection's pending join left nothing behind.
    watcher = await PhxClient.connect(a.ws(key=key))
    ok(await watcher.join("room:stall-closed", {"presence": True}))
    state = (await watcher.push_event("room:stall-closed", "presence_state"))[4]
    assert not any(m.get("who") == "closer" for e in state.values() for m in e["metas"]), state

    # Exactly once afterwards: messages published on b reach every member on a.
    pub = await PhxClient.connect(b.ws(key=key))
    for c, topic in joined:
        ok(await pub.join(topic))
    sent = {topic: [ok(await pub.request(topic, "m", {"i": i}))["offset"] for i in range(5)] for _, topic in joined}
    for c in joiners:
        frames = await c.drain(1.0)
        for topic in [t for cc, t in joined if cc is c]:
            assert offsets_of(frames, topic) == sent[topic], (topic, offsets_of(frames, topic), sent[topic])

    for c in [*joiners, leaver, bc_sub, watcher, pub, *conns]:
        await c.close()
    assert a.proc.poll() is None and b.proc.poll() is None


@pytest.mark.asyncio
async def test_joins_racing_publishes_get_every_later_offset_exactly_once(new_cluster):
    """Node b publishes 300 msg/s; on node a clients join one after another
    (some recovering from an earlier joiner's offset), and a burst joins a
    fresh topic at once (the first subscribes, the others wait at its
    gate). Each gets exactly the offsets after its join (or after its
    recover offset), in order, none twice."""
    cl = new_cluster({"--threads": "1"}, names="ab")
    a, b = cl.nodes
    topic, burst_topic = "room:race", "room:race-burst"
    pub, _ = await member(b, topic)
    pub2, _ = await member(b, burst_topic)
    stop = asyncio.Event()
    task = asyncio.ensure_future(steady_publish(pub, topic, 300, stop))
    burst_task = asyncio.ensure_future(steady_publish(pub2, burst_topic, 100, stop))
    await asyncio.sleep(0.3)

    members = []  # (client, topic, first offset owed)
    prev = None
    for i in range(10):
        c = await PhxClient.connect(a.ws())
        payload = {"presence": True} if i % 2 else None
        if prev is not None and i % 3 == 2:
            payload = {"recover": {"offset": prev["offset"], "epoch": prev["epoch"]}}
        r = ok(await c.join(topic, payload))
        if payload and "recover" in payload:
            assert r["recovered"] is True, r
            members.append((c, topic, payload["recover"]["offset"] + 1))
        else:
            members.append((c, topic, r["offset"] + 1))
        prev = r
        await asyncio.sleep(0.03)
    burst = [await PhxClient.connect(a.ws()) for _ in range(6)]
    replies = await asyncio.gather(*(c.join(burst_topic) for c in burst))
    for c, r in zip(burst, replies):
        members.append((c, burst_topic, ok(r)["offset"] + 1))

    await asyncio.sleep(0.5)
    stop.set()
    acked = {topic: acknowledged(await task), burst_topic: acknowledged(await burst_task)}
    for t, offs in acked.items():
        assert offs == list(range(offs[0], offs[0] + len(offs))), f"{t}: publishes were not all acknowledged"
    for i, (c, t, first) in enumerate(members):
        last = acked[t][-1]
        want = list(range(first, last + 1))
        frames = []
        deadline = time.monotonic() + 15
        while len(offsets_of(frames, t)) < len(want) and time.monotonic() < deadline:
            frames += [f for f in await c.drain(0.2) if f[2] == t]
        frames += [f for f in await c.drain(0.3) if f[2] == t]
        got = offsets_of(frames, t)
        assert got == want, f"member {i} of {t}: first owed {first}, got {got[:5]}..{got[-5:]} ({len(got)}), " \
                            f"want {len(want)}; duplicates {len(got) - len(set(got))}"
    for c, _, _ in members:
        await c.close()
    await pub.close()
    await pub2.close()


@pytest.mark.asyncio
async def test_joins_pending_in_a_short_stall_complete_when_redis_answers_with_every_later_message_once(
        stall_cluster):
    """Redis stopped for 0.5 s (under call_timeout) while node a's clients
    join a topic a already has a member of, a fresh topic (the first
    subscribes), and a second fresh topic twice at once (one waits at the
    other's gate), and node b keeps publishing to all three: once Redis
    runs again every join answers ok, and each joiner gets every message
    after its offset exactly once, in order."""
    cl = stall_cluster
    a, b = cl.nodes
    key = cl.create_key("short-stall", "--publish")
    topics = ["room:short-old", "room:short-new", "room:short-gate"]
    old_member, _ = await member(a, topics[0], key=key)
    pubs = [(await member(b, t, key=key))[0] for t in topics]
    joiners = [await PhxClient.connect(a.ws(key=key)) for _ in range(4)]
    plan = [(joiners[0], topics[0]), (joiners[1], topics[1]), (joiners[2], topics[2]), (joiners[3], topics[2])]
    stop = asyncio.Event()
    tasks = [asyncio.ensure_future(steady_publish(p, t, 100, stop)) for p, t in zip(pubs, topics)]
    await asyncio.sleep(0.3)

    stop_redis(cl)
    try:
        refs = [await send_join(c, t, {"presence": True}) for c, t in plan]
        # An event sent before the join's reply waits for it and is handled after.
        early = await joiners[1].send(topics[1], "early", {"x": 1})
        await asyncio.sleep(0.5)
    finally:
        resume_redis(cl)
    starts = []
    for (c, t), ref in zip(plan, refs):
        starts.append(ok(await c.reply(ref, timeout=5))["offset"] + 1)
    early_offset = ok(await joiners[1].reply(early, timeout=5))["offset"]
    assert early_offset >= starts[1], (early_offset, starts[1])
    got_early = await pubs[1].push_event(topics[1], "early", timeout=5)
    assert got_early[4]["_meta"]["offset"] == early_offset
    await asyncio.sleep(0.5)
    stop.set()
    acked = {t: acknowledged(await task) for t, task in zip(topics, tasks)}
    for (c, t), first in zip(plan, starts):
        want = [o for o in acked[t] if o >= first]
        frames = []
        deadline = time.monotonic() + 10
        while len(offsets_of(frames, t)) < len(want) and time.monotonic() < deadline:
            frames += await c.drain(0.2)
        frames += await c.drain(0.3)
        got = offsets_of(frames, t)
        assert got == want, f"{t}: first owed {first}, got {got[:5]}..{got[-5:]} ({len(got)}), want {len(want)}"
    for c in [old_member, *pubs, *joiners]:
        await c.close()
