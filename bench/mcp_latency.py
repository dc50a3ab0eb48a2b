#!/usr/bin/env python3
"""MCP tool latency: `tool` round trips (request to terminal event) of
everything.echo, a tool of the real @modelcontextprotocol/server-everything
run as a child over stdio, against memory.stats, a built-in tool on a cortex
worker, on one synapse server; and how long after `listening` the MCP tools
were ready.

    /usr/bin/python3 bench/mcp_latency.py [--n 300]

Needs tests/mcp installed (scripts/install-deps). Prints p50/p99 in ms.
"""
import argparse
import asyncio
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "harness"), str(ROOT / "tests" / "integration")]

from synapse_server import SynapseServer  # noqa: E402
from test_mcp_tools import EVERYTHING, call, config_file, server_table, up, wait_tools  # noqa: E402
from test_query import cortex, run_to_end  # noqa: E402


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


async def main(n):
    cfg = config_file(server_table("everything", EVERYTHING, ["stdio"]))
    try:
        with SynapseServer(flags={"--config": cfg}) as s:
            c = await cortex(s)
            t0 = time.monotonic()
            await wait_tools(c, up("everything.echo"))
            print(f"MCP tools ready {1000 * (time.monotonic() - t0):.0f} ms after the server listened")
            for tool, args in (("everything.echo", {"message": "x"}), ("memory.stats", {})):
                lat = []
                for _ in range(n):
                    t = time.perf_counter()
                    events = await run_to_end(c, await call(c, tool, args))
                    assert events[-1][3] == "result", events[-1]
                    lat.append(1000 * (time.perf_counter() - t))
                print(f"{tool:16} {n} sequential calls: p50 {pct(lat, 50):.2f} ms, p99 {pct(lat, 99):.2f} ms")
            await c.close()
    finally:
        Path(cfg).unlink()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    asyncio.run(main(ap.parse_args().n))
