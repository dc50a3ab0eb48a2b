"""Graceful shutdown on SIGTERM/SIGINT: not ready, no new upgrades, clients
closed with 1001, running work ended with its terminal event, exit 0."""
import asyncio
import signal
import time

import pytest

from phx import PhxClient, ok
from rawws import http_upgrade


@pytest.mark.asyncio
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_clients_get_1001_and_server_exits_0(fresh_server, sig):
    s = fresh_server()
    clients = [await PhxClient.connect(s.ws()) for _ in range(3)]
    for c in clients:
        ok(await c.join("room:bye"))
    started = time.monotonic()
    s.proc.send_signal(sig)
    codes = await asyncio.gather(*[c.wait_closed(5) for c in clients])
    assert codes == [1001, 1001, 1001]
    assert s.stop() == 0
    assert time.monotonic() - started < 10


@pytest.mark.asyncio
async def test_running_tool_ends_with_terminal_event_before_close(fresh_server):
    # A window shorter than the tool: the drain interrupts it
    # (test_graceful_drain.py covers runs that fit in the window).
    s = fresh_server({"--drain-timeout-ms": "300"})
    c = await PhxClient.connect(s.ws())
    ok(await c.join("cortex:admin"))
    reply = ok(await c.request("cortex:admin", "tool", {"tool": "demo.countdown", "args": {"steps": 100, "interval_ms": 100}}))
    await c.push_event("cortex:admin", "progress")
    s.proc.send_signal(signal.SIGTERM)
    end = await c.push_event("cortex:admin", "interrupted")
    assert {k: v for k, v in end[4].items() if k not in ("run_id", "seq")} == {"ref": reply["ref"], "reason": "server_shutdown"}
    assert await c.wait_closed(5) == 1001
    assert s.stop() == 0


def test_not_ready_and_no_upgrades_while_draining(fresh_server):
    s = fresh_server({"--drain-timeout-ms": "3000"})
    # A client that never reads: its close handshake cannot finish, which
    # holds the drain open for a while.
    status, _, _, stuck = http_upgrade(s.port, f"/cortex/websocket?api_key={s.admin_key}")
    assert status == 101
    stuck.setsockopt(__import__("socket").SOL_SOCKET, __import__("socket").SO_RCVBUF, 1024)
    s.proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    status, _, body = s.http("GET", "/health/ready")
    assert (status, body["status"]) == (503, "draining")
    status, hdrs, body, _ = http_upgrade(s.port, f"/cortex/websocket?api_key={s.admin_key}")
    assert status == 503 and body["error"] == "draining" and "retry-after" in hdrs
    assert s.stop(timeout=10) == 0
    stuck.close()
