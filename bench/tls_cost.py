#!/usr/bin/python3
"""TLS against plain TCP on the fan-out path: burst deliveries/s and server CPU.

For each round and each case a fresh server (`--threads 1`, pinned to core 0
with taskset, every limit off as in scripts/run-bench) gets
`synapse-bench message_throughput --only burst` (pinned to core 1): a
1,000-message burst written back to back to 100 and then to 1,000
subscribers. Cases: `plain` (ws://), `tls` (wss://, a P-256 certificate made
here with the openssl command line, TLS 1.3 AES-128-GCM), and, with
--baseline BIN, `plain-base`: the same plain run on another build (the one
before TLS, to show the plain path did not regress). Cases alternate inside
each round so that machine noise spreads over all of them; the table gives
the median over the rounds of deliveries/s and of the server's CPU seconds
for the burst (synapse-bench reads /proc/PID), and write syscalls per
delivery from the server's /metrics.

  /usr/bin/python3 bench/tls_cost.py [--rounds 3] [--baseline /path/to/old/synapse]

Binaries: $SYNAPSE_BIN / $SYNAPSE_BENCH_BIN, or build/release/. About 15 s a
case per round. Prints a Markdown table (docs/performance.md, "TLS").
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "harness"))
from synapse_server import free_port  # noqa: E402

SYNAPSE = os.environ.get("SYNAPSE_BIN", str(REPO / "build" / "release" / "synapse"))
BENCH = os.environ.get("SYNAPSE_BENCH_BIN", str(REPO / "build" / "release" / "synapse-bench"))
FLAGS = ["--threads", "1", "--messages-per-min", "0", "--queries-per-min", "0", "--ip-max-connections", "0",
         "--ip-max-sockets", "0", "--ip-new-per-min", "0", "--key-max-connections", "0", "--max-topics", "0",
         "--outbound-queue-bytes", "0", "--idle-timeout-ms", "0", "--drain-timeout-ms", "2000",
         "--log-level", "warn"]


def pin(core):
    return ["taskset", "-c", core] if shutil.which("taskset") and (os.cpu_count() or 1) >= 2 else []


def run_case(binary, tls, certdir):
    data = tempfile.mkdtemp(prefix="synapse-tls-bench-")
    try:
        key = subprocess.run([binary, "keys", "create", "--name", "bench", "--unlimited", "--data-dir", data],
                             capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        port = free_port()
        cmd = pin("0") + [binary, "serve", "--bind", "127.0.0.1", "--port", str(port), "--data-dir", data] + FLAGS
        if tls:
            cmd += ["--tls-cert", str(certdir / "cert.pem"), "--tls-key", str(certdir / "key.pem")]
        server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            for line in server.stdout:
                if line.startswith("listening on"):
                    break
            url = f"{'wss' if tls else 'ws'}://127.0.0.1:{port}"
            out = subprocess.run(pin("1") + [BENCH, "message_throughput", "--url", url, "--key", key,
                                             "--server-pid", str(server.pid), "--only", "burst",
                                             "--burst-subs", "100,1000", "--label", "tls" if tls else "plain"],
                                 capture_output=True, text=True, timeout=240)
            line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
            if not line:
                raise RuntimeError("no RESULT line:\n" + out.stdout[-2000:] + out.stderr[-2000:])
            return json.loads(line[7:])["result"]["phases"]
        finally:
            server.terminate()
            server.wait(20)
    finally:
        shutil.rmtree(data, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--baseline", help="another synapse binary, run plain as plain-base")
    args = ap.parse_args()
    certdir = Path(tempfile.mkdtemp(prefix="synapse-tls-cert-"))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(certdir / "key.pem"), "-out", str(certdir / "cert.pem"), "-days", "2",
                    "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)
    cases = [("plain", SYNAPSE, False), ("tls", SYNAPSE, True)]
    if args.baseline:
        cases.insert(0, ("plain-base", args.baseline, False))
    rows = {}  # (case, subs) -> list of (deliveries/s, server cpu s, writes/delivery)
    print(f"uptime before: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}",
          file=sys.stderr)
    for r in range(args.rounds):
        for name, binary, tls in cases:
            for ph in run_case(binary, tls, certdir):
                if not ph.get("complete") or ph.get("lost"):
                    raise RuntimeError(f"{name}: incomplete burst {ph}")
                sc = ph.get("server_syscalls") or {}
                rows.setdefault((name, ph["subscribers"]), []).append(
                    (ph["deliveries_per_s"], ph["phase"]["server_cpu_s"], sc.get("write_syscalls_per_delivery")))
            print(f"round {r + 1}: {name} done", file=sys.stderr)
    print(f"uptime after: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}",
          file=sys.stderr)
    shutil.rmtree(certdir, ignore_errors=True)
    print("| case | subscribers | deliveries/s (median) | each round | server CPU s per burst (median) "
          "| µs CPU per delivery | write syscalls per delivery |")
    print("| --- | ---: | ---: | --- | ---: | ---: | ---: |")
    for (name, subs), v in rows.items():
        rate = statistics.median(x[0] for x in v)
        cpu = statistics.median(x[1] for x in v)
        writes = [x[2] for x in v if x[2] is not None]
        per = cpu / (subs * 1000) * 1e6
        print(f"| {name} | {subs:,} | {rate:,.0f} | {', '.join(f'{x[0]:,.0f}' for x in v)} | {cpu:.3f} "
              f"| {per:.3f} | {statistics.median(writes) if writes else float('nan'):.4f} |")


if __name__ == "__main__":
    main()
