"""Slow consumers: a client that stops reading is closed with 4008 once its
queue passes the byte bound; the server's memory stays bounded and other
subscribers keep receiving on time."""
import asyncio
import json
import socket
import statistics
import time

import pytest

from phx import PhxClient, ok
from rawws import client_frame, http_upgrade, read_frames
from synapse_server import wait_until


@pytest.mark.asyncio
@pytest.mark.slow
async def test_stalled_reader_closed_4008_memory_bounded_others_on_time(fresh_server):
    s = fresh_server({"--outbound-queue-bytes": str(1 << 20)})
    # The stalled client: joins, then never reads. Small socket buffers make
    # the backlog reach the server's queue quickly.
    status, _, rest, stalled = http_upgrade(s.port, f"/cortex/websocket?api_key={s.admin_key}")
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(client_frame(1, json.dumps(["1", "1", "room:slow", "phx_join", {}]).encode()))

    healthy = await PhxClient.connect(s.ws())
    ok(await healthy.join("room:slow"))
    pub = await PhxClient.connect(s.ws())
    ok(await pub.join("room:slow"))
    await asyncio.sleep(0.2)
    rss_before = s.rss_kib()

    blob = "x" * 32_000
    latencies = []
    peak = 0
    for i in range(300):  # ~9.6 MB in all, far past the 1 MiB bound
        sent = time.monotonic()
        await pub.send("room:slow", "m", {"i": i, "blob": blob})
        f = await healthy.push_event("room:slow", "m", timeout=10)
        latencies.append(time.monotonic() - sent)
        assert f[4]["i"] == i
        if i % 25 == 0:
            peak = max(peak, s.rss_kib())
    wait_until(lambda: s.metrics()['synapse_connections_closed_total{code="4008"}'] >= 1, timeout=10)
    peak = max(peak, s.rss_kib())
    # History holds 100 of these messages (~3.2 MB); the stalled queue at
    # most 1 MiB. Nothing near the 9.6 MB published may pile up.
    assert peak - rss_before < 8_000, (rss_before, peak)
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    assert p99 < 0.25, f"p99 {p99:.3f}s median {statistics.median(latencies):.4f}s"

    # Whatever the stalled client reads now ends with 4008 (or a reset, if
    # the close frame could never be written).
    frames, code = read_frames(stalled, rest, timeout=5)
    assert code in (4008, None)
    stalled.close()
    assert ok(await healthy.heartbeat()) == {}
    await healthy.close()
    await pub.close()
