#!/usr/bin/env python3
"""Hook latency: connect, join and publish round trips against a synapse
server with the three backend hooks pointed at a loopback HTTP backend,
against the same server without hooks.

    /usr/bin/python3 bench/hook_latency.py [--n 300]

The backend is tests/integration/hook_backend.py (Python's threading
http.server answering {"allow": true}); its own time is part of what is
measured, as an application's would be. Prints p50/p99 in milliseconds.
"""
import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "harness"), str(ROOT / "tests" / "integration")]

import websockets  # noqa: E402

from hook_backend import HookBackend  # noqa: E402
from synapse_server import SynapseServer  # noqa: E402


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


async def measure(server, n):
    connect, join, publish = [], [], []
    url = server.ws()
    for i in range(n):
        t0 = time.perf_counter()
        ws = await websockets.connect(url, ping_interval=None)
        connect.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        await ws.send(json.dumps(["1", "1", f"bench:{i % 10}", "phx_join", {}]))
        while json.loads(await ws.recv())[1] != "1":
            pass
        join.append(time.perf_counter() - t0)
        for j in range(5):
            ref = str(j + 2)
            t0 = time.perf_counter()
            await ws.send(json.dumps(["1", ref, f"bench:{i % 10}", "m", {"j": j}]))
            while json.loads(await ws.recv())[1] != ref:
                pass
            publish.append(time.perf_counter() - t0)
        await ws.close()
    return {"connect": connect, "join": join, "publish": publish}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300, help="connections per case (each joins once, publishes 5 times)")
    args = ap.parse_args()
    backend = HookBackend()
    cases = {
        "no hooks": {},
        "hooks (loopback backend)": {"--hook-connect-url": backend.url("connect"),
                                     "--hook-join-url": backend.url("join"),
                                     "--hook-publish-url": backend.url("publish")},
    }
    print(f"{'case':<26} {'op':<8} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}  (n)")
    for name, flags in cases.items():
        with SynapseServer(flags={"--threads": "1", **flags}) as s:
            r = asyncio.run(measure(s, args.n))
        for op, xs in r.items():
            ms = [x * 1000 for x in xs]
            print(f"{name:<26} {op:<8} {pct(ms, 50):8.3f} {pct(ms, 99):8.3f} {statistics.mean(ms):8.3f}  ({len(ms)})")
    print(f"backend calls: {len(backend.calls)}")
    backend.close()


if __name__ == "__main__":
    main()
