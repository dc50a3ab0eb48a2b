"""Graceful drain on SIGTERM (issue 18 item 5), through the real binary:
admission stops at once, running queries and tools finish within
server.drain_timeout_ms and deliver their result, what is left is ended
with interrupted / server_shutdown, and every connection then closes with
1001; the process exits within the drain timeout plus the close bound."""
import asyncio
import signal
import time

import pytest

from phx import PhxClient, error, ok
from rawws import http_upgrade

# The close handshake's bound after the drain (server.cpp watch_close) plus
# process teardown on a loaded two-core machine.
EXIT_SLACK_S = 4.0


async def start_countdown(c: PhxClient, steps: int, interval_ms: int) -> dict:
    ok(await c.join("cortex:admin"))
    reply = ok(await c.request("cortex:admin", "tool",
                               {"tool": "demo.countdown", "args": {"steps": steps, "interval_ms": interval_ms}}))
    await c.push_event("cortex:admin", "progress")  # it is running on a worker
    return reply


async def frames_until_close(c: PhxClient, timeout: float):
    """Every frame up to the server's close, the close code, and when it came."""
    code = await c.wait_closed(timeout)
    return c.buffer, code, time.monotonic()


def wait_exit(s, timeout: float) -> int:
    rc = s.proc.wait(timeout)
    s.stop()
    return rc


@pytest.mark.asyncio
async def test_run_that_fits_in_the_window_delivers_its_result_then_1001(fresh_server):
    s = fresh_server({"--drain-timeout-ms": "8000"})
    runner = await PhxClient.connect(s.ws())
    idle = await PhxClient.connect(s.ws())
    ok(await idle.join("room:drain"))
    reply = await start_countdown(runner, steps=12, interval_ms=100)  # about 1.2 s
    t0 = time.monotonic()
    s.proc.send_signal(signal.SIGTERM)
    (frames, code, closed_at), (_, idle_code, idle_closed_at) = await asyncio.gather(
        frames_until_close(runner, 10), frames_until_close(idle, 10))
    events = [f[3] for f in frames if f[2] == "cortex:admin" and f[1] is None]
    assert "interrupted" not in events
    assert events[-1] == "result", events
    result = frames[[i for i, f in enumerate(frames) if f[3] == "result"][-1]][4]
    assert result["ref"] == reply["ref"] and result["status"] == "success"
    assert result["data"] == {"completed": 12}, result
    # The result came before the close frame (it is in the frames read before
    # the close), and the drain held every connection open until then.
    assert code == 1001 and idle_code == 1001
    assert idle_closed_at - t0 >= 0.5, "the idle client was closed before the run finished"
    # The drain ended when the run did, not at the timeout.
    assert wait_exit(s, EXIT_SLACK_S + 2) == 0
    assert time.monotonic() - t0 < 1.5 + EXIT_SLACK_S


@pytest.mark.asyncio
async def test_run_longer_than_the_window_is_interrupted_then_1001(fresh_server):
    s = fresh_server({"--drain-timeout-ms": "1000"})
    c = await PhxClient.connect(s.ws())
    reply = await start_countdown(c, steps=200, interval_ms=100)  # 20 s
    t0 = time.monotonic()
    s.proc.send_signal(signal.SIGTERM)
    end = await c.push_event("cortex:admin", "interrupted", timeout=10)
    interrupted_after = time.monotonic() - t0
    assert end[4]["ref"] == reply["ref"] and end[4]["reason"] == "server_shutdown"
    # It ran on through the window, then was interrupted.
    assert interrupted_after >= 0.9, interrupted_after
    frames, code, _ = await frames_until_close(c, 10)
    assert code == 1001
    assert not [f for f in frames if f[3] == "result"]
    assert wait_exit(s, 1.0 + EXIT_SLACK_S) == 0
    assert time.monotonic() - t0 < 1.0 + EXIT_SLACK_S


@pytest.mark.asyncio
async def test_not_ready_at_once_live_answers_and_nothing_new_is_admitted(fresh_server):
    s = fresh_server({"--drain-timeout-ms": "8000"})
    c = await PhxClient.connect(s.ws())
    await start_countdown(c, steps=30, interval_ms=100)  # holds the drain about 3 s
    s.proc.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.1)
    loop = asyncio.get_running_loop()
    status, _, body = await loop.run_in_executor(None, s.http, "GET", "/health/ready")
    assert (status, body["status"]) == (503, "draining")
    status, _, body = await loop.run_in_executor(None, s.http, "GET", "/health/live")
    assert (status, body["status"]) == (200, "ok")
    status, _, body = await loop.run_in_executor(None, s.http, "GET", "/health")
    assert (status, body["status"]) == (200, "draining")
    # New connections are refused while the drain runs...
    status, hdrs, body, _ = await loop.run_in_executor(
        None, lambda: http_upgrade(s.port, f"/cortex/websocket?api_key={s.admin_key}"))
    assert status == 503 and body["error"] == "draining" and "retry-after" in hdrs
    # ... and so are new runs on a connection already open, which still works.
    error(await c.request("cortex:admin", "tool", {"tool": "demo.countdown", "args": {"steps": 1, "interval_ms": 0}}),
          "draining")
    error(await c.request("cortex:admin", "query", {"q": "anything"}), "draining")
    ok(await c.heartbeat())
    frames, code, _ = await frames_until_close(c, 10)
    assert code == 1001 and [f for f in frames if f[3] == "result"]
    assert wait_exit(s, EXIT_SLACK_S) == 0


@pytest.mark.asyncio
async def test_zero_timeout_interrupts_at_once(fresh_server):
    s = fresh_server({"--drain-timeout-ms": "0"})
    c = await PhxClient.connect(s.ws())
    await start_countdown(c, steps=200, interval_ms=100)
    t0 = time.monotonic()
    s.proc.send_signal(signal.SIGTERM)
    end = await c.push_event("cortex:admin", "interrupted", timeout=5)
    assert end[4]["reason"] == "server_shutdown"
    assert time.monotonic() - t0 < 1.0
    assert await c.wait_closed(5) == 1001
    assert wait_exit(s, EXIT_SLACK_S) == 0
