#!/usr/bin/python3
"""permessage-deflate on and off: bytes on the wire and server CPU per delivery.

For each case a fresh server (`--threads 1`, pinned to core 0 with taskset
when there are two cores) gets SUBSCRIBERS websockets-10.4 clients on one
topic (compressed when the case says so) and one publisher that sends
MESSAGES pushes of a realistic JSON payload, paced in small bursts so no
queue overflows. Figures come from the server itself: the delta of
synapse_bytes_out_total and of its CPU time (every thread's /proc/PID/task/*/schedstat)
over the publish phase, divided by the deliveries (synapse_deliveries_total).
Every subscriber checks it received every message, in order.

  /usr/bin/python3 bench/deflate_cost.py [--subscribers 200] [--messages 200]

Runs in about a minute; prints a Markdown table (docs/performance.md).
"""
import argparse
import asyncio
import json
import os
import random
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "harness"))
sys.path.insert(0, str(REPO / "tests" / "integration"))

from synapse_server import SynapseServer  # noqa: E402
from phx import PhxClient, ok  # noqa: E402

VOCAB = ("the agent searched memory for deployment notes found matching entries ranked by recency "
         "importance before answering question about rollbacks canary release database migration "
         "latency budget exceeded retry queue worker tenant cache invalidated token stream partial "
         "result summary next step tool call returned error timeout recovered offset epoch").split()


def payload(size: int, i: int) -> dict:
    """An agent-ish message: a thought with varied text, ids and scores
    (compresses about as well as real JSON text does, not like a repeated
    string)."""
    rng = random.Random(i)
    text = ""
    while len(text) < size:
        r = rng.random()
        if r < 0.1:
            text += f"{rng.randrange(16 ** 8):08x} "
        elif r < 0.2:
            text += f"{rng.randrange(100000)} "
        else:
            text += rng.choice(VOCAB) + " "
    return {"i": i, "kind": "thought", "agent": "planner-7", "text": text[:size],
            "scores": [round(rng.random(), 3) for _ in range(8)]}


def metric(body: str, name: str) -> float:
    m = re.search(rf"^{name} ([0-9.e+]+)$", body, re.M)
    return float(m.group(1)) if m else 0.0


def cpu_s(pid: int) -> float:
    """CPU time of every thread of `pid`, in seconds, from schedstat (ns)."""
    total = 0
    for t in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((t / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total / 1e9


async def run_case(flags: dict, compression, size: int, subscribers: int, messages: int) -> dict:
    with SynapseServer(flags={"--threads": "1", **flags}) as s:
        if (os.cpu_count() or 1) >= 2:
            os.sched_setaffinity(s.proc.pid, {0})
        subs = [await PhxClient.connect(s.ws(), compression=compression) for _ in range(subscribers)]
        await asyncio.gather(*[c.join("room:bench") for c in subs])
        pub = await PhxClient.connect(s.ws(), compression=compression)
        ok(await pub.join("room:bench"))
        bodies = [payload(size, i) for i in range(messages)]
        frame_bytes = sum(len(json.dumps(b, separators=(",", ":"))) for b in bodies) / messages
        before = s.http("GET", "/metrics")[2]
        cpu0 = cpu_s(s.proc.pid)
        t0 = time.monotonic()

        async def collect(c):
            got = [await c.push_event("room:bench", "note", timeout=60) for _ in range(messages)]
            assert [f[4]["i"] for f in got] == list(range(messages)), "lost or reordered"

        waiters = asyncio.gather(*[collect(c) for c in subs])
        for i, b in enumerate(bodies):
            await pub.send("room:bench", "note", b)
            if i % 10 == 9:
                await asyncio.sleep(0.01)
        await waiters
        wall = time.monotonic() - t0
        cpu = cpu_s(s.proc.pid) - cpu0
        after = s.http("GET", "/metrics")[2]
        deliveries = metric(after, "synapse_deliveries_total") - metric(before, "synapse_deliveries_total")
        out_bytes = metric(after, "synapse_bytes_out_total") - metric(before, "synapse_bytes_out_total")
        for c in subs + [pub]:
            await c.close()
        return {"deliveries": int(deliveries), "payload": round(frame_bytes), "bytes": out_bytes / deliveries,
                "cpu_us": cpu / deliveries * 1e6, "wall_s": wall}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--subscribers", type=int, default=200)
    ap.add_argument("--messages", type=int, default=200)
    a = ap.parse_args()
    on = {"--permessage-deflate": "true"}
    cases = []
    for size in (300, 2000, 16000):
        cases.append((f"{size} B, off", {}, None, size))
        cases.append((f"{size} B, on (level 1)", on, "deflate", size))
        cases.append((f"{size} B, on (level 6)", {**on, "--deflate-level": "6"}, "deflate", size))
    print(f"{a.subscribers} subscribers x {a.messages} messages per case, server --threads 1"
          f"{' on core 0' if (os.cpu_count() or 1) >= 2 else ''}\n")
    # The last column is what compression added per message: (CPU per
    # delivery on - off) x subscribers. Compressing once per message keeps
    # it flat as subscribers grow; once per subscriber would grow with them.
    print("| case | payload (B) | bytes on the wire per delivery | server CPU per delivery (µs) | deliveries "
          "| added CPU per message (µs) |")
    print("| --- | --- | --- | --- | --- | --- |")
    off_cpu = {}
    for name, flags, comp, size in cases:
        r = await run_case(flags, comp, size, a.subscribers, a.messages)
        if comp is None:
            off_cpu[size] = r["cpu_us"]
            added = "-"
        else:
            added = f"{(r['cpu_us'] - off_cpu[size]) * a.subscribers:.0f}"
        print(f"| {name} | {r['payload']} | {r['bytes']:.0f} | {r['cpu_us']:.2f} | {r['deliveries']} | {added} |",
              flush=True)


if __name__ == "__main__":
    asyncio.run(main())
