#!/usr/bin/env python3
"""What the run log costs (issue 13 item 5): bytes kept per token, and the
token relay throughput and latency with the log on (`--run-log true`, the
default) against off (`--run-log false`: events relayed, not kept).

1. Bytes per token: one `demo.tokens` run of --tokens deltas on a fresh
   server; synapse_run_log_bytes (/metrics) after it ended, divided by the
   events it logged.
2. Relay: synapse-bench agent_relay (agent workers streaming to clients),
   the server on core 0 with --threads 1, the bench on core 1, for each
   setting.

    /usr/bin/python3 bench/run_log_cost.py [--tokens 2000] [--duration 5]

Needs build/release/synapse and build/release/synapse-bench.
"""
import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "harness"), str(ROOT / "tests" / "integration")]

from phx import PhxClient, ok  # noqa: E402
from synapse_server import SynapseServer, binary  # noqa: E402

BENCH = os.environ.get("SYNAPSE_BENCH_BIN") or str(ROOT / "build" / "release" / "synapse-bench")
OPEN = {"--ip-max-connections": "0", "--ip-max-sockets": "0", "--ip-new-per-min": "0",
        "--messages-per-min": "0", "--queries-per-min": "0", "--key-max-connections": "0",
        "--log-level": "warn"}


async def bytes_per_token(n: int) -> dict:
    with SynapseServer() as s:
        before = s.metrics().get("synapse_run_log_bytes", 0.0)
        c = await PhxClient.connect(s.ws())
        ok(await c.join("cortex:admin"))
        r = ok(await c.request("cortex:admin", "tool", {"tool": "demo.tokens", "args": {"count": n}}))
        text_bytes = 0
        while True:
            f = await c.expect(lambda f: f[4].get("run_id") == r["run_id"], 30)
            if f[3] == "token":
                text_bytes += len(f[4]["delta"].encode())
            if f[3] in ("result", "error", "interrupted"):
                break
        await c.close()
        kept = s.metrics()["synapse_run_log_bytes"] - before
        return {"tokens": n, "log_bytes": int(kept), "bytes_per_token": round(kept / (n + 1), 1),
                "delta_bytes_per_token": round(text_bytes / n, 1)}


def relay(run_log: bool, duration: float) -> dict:
    data = tempfile.mkdtemp(prefix="synapse-runlog-")
    def key(*extra):
        out = subprocess.run([binary(), "keys", "create", "--data-dir", data, *extra], check=True,
                             capture_output=True, text=True).stdout
        return out.strip().splitlines()[-1]
    user = key("--name", "bench", "--unlimited")
    worker = key("--name", "bench-worker", "--worker", "--agent", "bench", "--unlimited")
    flags = {**OPEN, "--threads": "1", "--cortex-backend": "workers", "--run-log": "true" if run_log else "false"}
    s = SynapseServer(flags=flags, relaxed=False, data_dir=data)
    # The server on core 0, the load generator on core 1.
    s.start()
    subprocess.run(["taskset", "-apc", "0", str(s.proc.pid)], check=True, capture_output=True)
    try:
        out = tempfile.mktemp(suffix=".json")
        subprocess.run(["taskset", "-c", "1", BENCH, "agent_relay", "--url", f"ws://127.0.0.1:{s.port}",
                        "--key", user, "--worker-key", worker, "--server-pid", str(s.proc.pid),
                        "--label", f"run_log={run_log}", "--duration", str(duration), "--json-out", out],
                       check=True, capture_output=True, text=True, timeout=120)
        res = json.loads(Path(out).read_text())["result"]
        Path(out).unlink()
        return res
    finally:
        s.stop()
        s.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=2000)
    ap.add_argument("--duration", type=float, default=5)
    a = ap.parse_args()
    b = asyncio.run(bytes_per_token(a.tokens))
    print(f"run log: {b['log_bytes']} bytes for {b['tokens']} token deltas of {b['delta_bytes_per_token']} bytes: "
          f"{b['bytes_per_token']} bytes kept per token")
    for on in (True, False):
        r = relay(on, a.duration)
        p, m = r["paced"], r["max"]
        print(f"run_log={'on ' if on else 'off'}: paced {p['runs']} runs x "
              f"{p['offered_tokens_per_s'] / p['runs']:.0f} tokens/s: added latency p50 "
              f"{p['token_latency']['p50_ms']:.3f} ms, p99 {p['token_latency']['p99_ms']:.3f} ms, "
              f"server CPU {p['phase']['server_cpu_pct']:.0f} %; max {m['tokens_per_s']:.0f} tokens/s at server CPU "
              f"{m['phase']['server_cpu_pct']:.0f} %; lost/dup/reordered {r['lost']}/{r['duplicated']}/{r['reordered']}")


if __name__ == "__main__":
    main()
