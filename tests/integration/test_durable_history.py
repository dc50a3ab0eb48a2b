"""Durable history on one node (issue 18 item 4): with
`--history-store disk`, a topic's recoverable window survives SIGKILL and a
restart, with the same epoch and offsets, so a client that recovers gets
exactly what it missed; with the default (memory) it does not."""
from __future__ import annotations

import signal
import sqlite3
from pathlib import Path

import pytest

from phx import PhxClient, ok


async def publish_many(url: str, topic: str, n: int, start: int = 0) -> list[int]:
    c = await PhxClient.connect(url)
    ok(await c.join(topic))
    offsets = [ok(await c.request(topic, "note", {"n": start + i}))["offset"] for i in range(n)]
    await c.close()
    return offsets


async def recover(url: str, topic: str, offset: int, epoch: str):
    c = await PhxClient.connect(url)
    r = ok(await c.join(topic, {"recover": {"offset": offset, "epoch": epoch}}))
    got = [f for f in await c.drain(0.3) if f[2] == topic and f[3] == "note"]
    await c.close()
    return r, got


@pytest.mark.asyncio
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
async def test_disk_history_survives_a_restart_with_the_same_epoch(fresh_server, sig):
    s = fresh_server({"--history-store": "disk", "--history-size": "50"})
    topic = "room:durable"
    watcher = await PhxClient.connect(s.ws())
    joined = ok(await watcher.join(topic))
    epoch = joined["epoch"]
    await watcher.close()
    offsets = await publish_many(s.ws(), topic, 30)
    assert offsets == list(range(1, 31))

    s.stop(sig)
    s.restart()

    # A client that had seen offset 10 gets 11..30, in order, once each.
    r, got = await recover(s.ws(), topic, 10, epoch)
    assert r["recovered"] is True and r["epoch"] == epoch and r["offset"] == 30
    assert [f[4]["_meta"]["offset"] for f in got] == list(range(11, 31))
    assert [f[4]["n"] for f in got] == list(range(10, 30))
    assert all(f[4]["_meta"]["epoch"] == epoch for f in got)

    # Offsets go on from where they were, in the same epoch.
    more = await publish_many(s.ws(), topic, 3, start=30)
    assert more == [31, 32, 33]
    r, got = await recover(s.ws(), topic, 30, epoch)
    assert r["recovered"] is True and [f[4]["_meta"]["offset"] for f in got] == [31, 32, 33]


@pytest.mark.asyncio
async def test_disk_history_keeps_its_window_and_drops_the_rest(fresh_server):
    s = fresh_server({"--history-store": "disk", "--history-size": "10"})
    topic = "room:window"
    watcher = await PhxClient.connect(s.ws())
    epoch = ok(await watcher.join(topic))["epoch"]
    await watcher.close()
    await publish_many(s.ws(), topic, 200)
    s.kill()
    # The file holds the window (and at most one trim step more), not all 200.
    rows = sqlite3.connect(str(Path(s.data_dir) / "history.db")).execute(
        "SELECT COUNT(*) FROM history_messages").fetchone()[0]
    assert 10 <= rows <= 10 + 64, rows
    s.restart()
    r, got = await recover(s.ws(), topic, 190, epoch)
    assert r["recovered"] is True and [f[4]["_meta"]["offset"] for f in got] == list(range(191, 201))
    r, got = await recover(s.ws(), topic, 100, epoch)  # older than the window: a gap, said so
    assert r["recovered"] is False and got == []


@pytest.mark.asyncio
async def test_memory_history_is_gone_after_a_crash(fresh_server):
    s = fresh_server()
    topic = "room:volatile"
    watcher = await PhxClient.connect(s.ws())
    epoch = ok(await watcher.join(topic))["epoch"]
    await watcher.close()
    await publish_many(s.ws(), topic, 5)
    s.kill()
    s.restart()
    r, got = await recover(s.ws(), topic, 2, epoch)
    assert r["recovered"] is False and r["epoch"] != epoch and got == []


def test_a_bad_history_store_value_is_refused(fresh_server):
    with pytest.raises(RuntimeError, match="'tape' is not memory or disk"):
        fresh_server({"--history-store": "tape"})
