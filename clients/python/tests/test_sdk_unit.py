"""Pieces of the SDK that need no server: URLs, backoff, JWT claims,
presence sync, offset bookkeeping of pub/sub deliveries."""
import asyncio
import base64
import json
import random

import pytest

from mimo_synapse import MimoSynapse, sync_diff, sync_state
from mimo_synapse._util import full_jitter, http_base, jwt_claims, websocket_url
from mimo_synapse.client import _Sub


def test_websocket_url_normalisation():
    assert websocket_url("ws://127.0.0.1:4000") == "ws://127.0.0.1:4000/cortex/websocket?vsn=2.0.0"
    assert websocket_url("http://127.0.0.1:4000/") == "ws://127.0.0.1:4000/cortex/websocket?vsn=2.0.0"
    assert websocket_url("https://h/cortex") == "wss://h/cortex/websocket?vsn=2.0.0"
    assert websocket_url("ws://h:1/cortex/websocket?vsn=9&api_key=leak&x=1") == \
        "ws://h:1/cortex/websocket?vsn=2.0.0&x=1"
    assert http_base("wss://h:8443/cortex/websocket?vsn=2.0.0") == "https://h:8443"
    with pytest.raises(ValueError):
        websocket_url("ftp://h")


def test_exactly_one_credential():
    with pytest.raises(ValueError):
        MimoSynapse("ws://127.0.0.1:4000")
    with pytest.raises(ValueError):
        MimoSynapse("ws://127.0.0.1:4000", api_key="a", token="b")


def test_full_jitter_backoff_is_bounded_and_capped_at_30s():
    rng = random.Random(7)
    for attempt in range(12):
        ceiling = min(30.0, 0.2 * 2 ** attempt)
        draws = [full_jitter(attempt, 0.2, 30.0, rng) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in draws)
        assert max(draws) > ceiling * 0.8 and min(draws) < ceiling * 0.2  # full jitter, not fixed
    assert max(full_jitter(1000, 0.2, 30.0, rng) for _ in range(500)) <= 30.0


def test_jwt_claims():
    body = base64.urlsafe_b64encode(json.dumps({"sub": "ann", "exp": 5}).encode()).rstrip(b"=").decode()
    assert jwt_claims(f"xx.{body}.sig") == {"sub": "ann", "exp": 5}
    assert jwt_claims("syn_not_a_jwt") == {}


def test_presence_sync_state_and_diff():
    state = sync_state({"a": {"metas": [{"phx_ref": "1", "x": 1}]}})
    sync_diff(state, {"joins": {"a": {"metas": [{"phx_ref": "2"}]}, "b": {"metas": [{"phx_ref": "3"}]}},
                      "leaves": {}})
    assert [m["phx_ref"] for m in state["a"]["metas"]] == ["1", "2"]
    assert set(state) == {"a", "b"}
    sync_diff(state, {"joins": {}, "leaves": {"a": {"metas": [{"phx_ref": "1"}]}, "b": {"metas": [{"phx_ref": "3"}]}}})
    assert state == {"a": {"metas": [{"phx_ref": "2"}]}}
    # a leave and a join of the same connection in one coalesced diff
    sync_diff(state, {"joins": {"c": {"metas": [{"phx_ref": "4"}]}}, "leaves": {"c": {"metas": [{"phx_ref": "4"}]}}})
    assert "c" not in state


def push(topic, offset, epoch="e1", **body):
    return json.dumps([None, None, topic, "m", {**body, "_meta": {"offset": offset, "epoch": epoch, "from": "x",
                                                                 "ts": 1}}])


@pytest.mark.asyncio
async def test_deliveries_at_or_below_the_last_offset_are_dropped():
    client = MimoSynapse("ws://127.0.0.1:1", api_key="k")
    try:
        await check_dedup(client)
    finally:
        await client.close()


async def check_dedup(client):
    sub = _Sub("room:unit", None, False)
    client._subs[sub.topic] = sub
    got = []
    sub.listeners[1] = got.append
    sub.worker = client._spawn(client._dispatch(sub))
    sub.epoch, sub.last_offset = "e1", 3  # as a join reply at offset 3 leaves it
    for off in (2, 3, 4, 4, 5, 3, 7, 6, 8):
        client._on_text(push("room:unit", off))
    # a new epoch (history lost) starts over
    client._on_text(push("room:unit", 1, epoch="e2"))
    client._on_text(push("room:unit", 1, epoch="e2"))
    client._on_text(push("room:unit", 2, epoch="e2"))
    # pushes for other topics, replies nobody waits for and garbage are ignored
    client._on_text(push("room:other", 99))
    client._on_text(json.dumps([None, "77", "room:unit", "phx_reply", {"status": "ok", "response": {}}]))
    client._on_text("not json")
    client._on_text(json.dumps({"not": "a frame"}))
    for _ in range(50):
        if len(got) == 7:
            break
        await asyncio.sleep(0.01)
    assert [(m.epoch, m.offset) for m in got] == [("e1", 4), ("e1", 5), ("e1", 7), ("e1", 8),
                                                   ("e2", 1), ("e2", 2)][:len(got)]
    assert len(got) == 6
    assert sub.stats["duplicates"] == 6 and sub.stats["missed"] == 1
    assert sub.last_offset == 2 and sub.epoch == "e2"


@pytest.mark.asyncio
async def test_join_payload_carries_recover_from_the_last_delivered_offset():
    sub = _Sub("room:j", {"role": "x"}, True)
    assert sub.join_payload(False) == {"meta": {"role": "x"}, "presence": True}
    sub.epoch, sub.last_offset = "ep", 41
    assert sub.join_payload(False)["recover"] == {"offset": 41, "epoch": "ep"}
    assert sub.join_payload(True)["recover"] == {"offset": 0, "epoch": "ep"}


@pytest.mark.asyncio
async def test_calls_before_connect_fail_clearly():
    client = MimoSynapse("ws://127.0.0.1:1", api_key="k")
    with pytest.raises(Exception) as ei:
        await client.publish("room:x", "e", {})
    assert getattr(ei.value, "reason", None) == "not_connected"
    handle = client.query("hi")
    with pytest.raises(Exception) as ei2:
        await handle.result(timeout=5)
    assert getattr(ei2.value, "reason", None) == "not_connected"


@pytest.mark.asyncio
async def test_own_publishes_replayed_by_a_recover_are_skipped():
    client = MimoSynapse("ws://127.0.0.1:1", api_key="k")
    try:
        sub = _Sub("room:own", None, False)
        client._subs[sub.topic] = sub
        got = []
        sub.listeners[1] = got.append
        sub.worker = client._spawn(client._dispatch(sub))
        sub.epoch, sub.last_offset = "e1", 1
        sub.published(3)  # our publish got offset 3 while offset 2 was still on its way to us
        assert sub.last_offset == 1 and sub.own == {3}
        sub.published(5)
        client._on_text(push("room:own", 2))  # someone else's: delivered, and we move past our 3
        assert sub.last_offset == 3 and sub.own == {5}
        # a recover from offset 3 replays 4 (theirs) and 5 (ours)
        client._on_text(push("room:own", 4))
        client._on_text(push("room:own", 5))
        client._on_text(push("room:own", 6))
        for _ in range(50):
            if len(got) == 3:
                break
            await asyncio.sleep(0.01)
        assert [m.offset for m in got] == [2, 4, 6]
        assert sub.stats["missed"] == 0 and sub.own == set() and sub.last_offset == 6
        # a new epoch forgets old own offsets
        sub.published(8)
        client._on_text(push("room:own", 1, epoch="e2"))
        assert sub.own == set() and sub.last_offset == 1
    finally:
        await client.close()


@pytest.mark.asyncio
async def test_a_phx_gap_push_counts_as_missed_moves_past_the_gap_and_never_reaches_callbacks():
    """A cluster node reports offsets it cannot deliver (docs/protocol.md section 9)."""
    client = MimoSynapse("ws://127.0.0.1:1", api_key="k")
    try:
        sub = _Sub("room:gap", None, False)
        client._subs[sub.topic] = sub
        got = []
        sub.listeners[1] = got.append
        sub.worker = client._spawn(client._dispatch(sub))
        sub.epoch, sub.last_offset = "e1", 4
        gap = {"recovered": False, "epoch": "e1", "from": 5, "to": 9}
        client._on_text(json.dumps([None, None, "room:gap", "phx_gap", gap]))
        assert sub.last_offset == 9 and sub.stats["missed"] == 5
        client._on_text(push("room:gap", 10))
        for _ in range(50):
            if got:
                break
            await asyncio.sleep(0.01)
        assert [m.offset for m in got] == [10] and sub.stats["missed"] == 5
        # another epoch's gap, or an open-ended one, moves nothing
        client._on_text(json.dumps([None, None, "room:gap", "phx_gap", dict(gap, epoch="e0", to=20)]))
        client._on_text(json.dumps([None, None, "room:gap", "phx_gap", dict(gap, to=None)]))
        assert sub.last_offset == 10 and sub.stats["missed"] == 5
    finally:
        await client.close()


@pytest.mark.asyncio
async def test_run_handle_keeps_each_seq_once_and_folds_tokens_and_snapshots_into_text():
    from mimo_synapse import Snapshot, Token
    from mimo_synapse.handles import AttachedRun
    h = AttachedRun(None, "r1")
    tok = lambda seq, d: Token.from_payload({"ref": "r1", "run_id": "run_x", "seq": seq, "delta": d})
    h._snapshot(Snapshot.from_payload({"run_id": "run_x", "ref": "r1", "seq": 3, "status": "running",
                                       "text": "a b c ", "thoughts": [{"type": "t", "content": "x"}]}))
    for seq, d in ((2, "b "), (3, "c "), (4, "d "), (4, "d "), (5, "e ")):  # a backlog overlapping the snapshot
        h._token(tok(seq, d))
    assert h.text == "a b c d e " and h.last_seq == 5
    items = [h._queue.get_nowait() for _ in range(h._queue.qsize())]
    assert isinstance(items[0], Snapshot) and items[0].thoughts == [{"type": "t", "content": "x"}]
    assert [i.seq for i in items[1:]] == [4, 5]
    assert not h._fresh(5) and h._fresh(6)
