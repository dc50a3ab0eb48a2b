#!/usr/bin/env python3
"""/mcp round trips: ping, tools/list and tools/call memory.store on one
keep-alive HTTP connection (a session opened first), against a fresh synapse
server started by the test harness. Sequential requests, so this is latency,
not throughput.

    /usr/bin/python3 bench/mcp_server_latency.py [--n 500]

Prints p50/p99 in milliseconds per request kind.
"""
import argparse
import http.client
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "harness")]

from synapse_server import SynapseServer  # noqa: E402


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500)
    n = min(max(ap.parse_args().n, 1), 10_000)  # bounded
    with SynapseServer() as s:
        key = s.create_key("mcp-bench")
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
                   "Authorization": f"Bearer {key}"}

        def rpc(msg):
            conn.request("POST", "/mcp", json.dumps(msg), headers)
            r = conn.getresponse()
            body = r.read()
            assert r.status in (200, 202), (r.status, body)
            return r, body

        r, _ = rpc({"jsonrpc": "2.0", "id": 0, "method": "initialize",
                    "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                               "clientInfo": {"name": "bench", "version": "1"}}})
        headers["Mcp-Session-Id"] = r.getheader("Mcp-Session-Id")
        rpc({"jsonrpc": "2.0", "method": "notifications/initialized"})
        kinds = {
            "ping": lambda i: {"jsonrpc": "2.0", "id": i, "method": "ping"},
            "tools/list": lambda i: {"jsonrpc": "2.0", "id": i, "method": "tools/list"},
            "tools/call memory.store": lambda i: {
                "jsonrpc": "2.0", "id": i, "method": "tools/call",
                "params": {"name": "memory.store", "arguments": {"content": f"bench memory {i}"}}},
        }
        for name, make in kinds.items():
            times = []
            for i in range(n):
                t0 = time.perf_counter()
                rpc(make(i + 1))
                times.append((time.perf_counter() - t0) * 1000)
            print(f"{name:26s} n={n}  p50={pct(times, 50):.3f} ms  p99={pct(times, 99):.3f} ms")
        conn.close()


if __name__ == "__main__":
    main()
