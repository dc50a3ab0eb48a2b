#!/usr/bin/env python3
"""A scripted MCP stdio server that misbehaves on request, for
test_mcp_tools.py: each tool is one way for a server to go wrong.

Speaks newline-delimited JSON-RPC 2.0 (MCP protocol 2025-06-18) on stdin and
stdout. Options:
  --hang-initialize   never answer initialize
  --pages N           split tools/list into N pages linked by nextCursor
  --state FILE        append one JSON line per event (start, cancelled) to FILE

Tools: echo {text}, fail {}, hang {}, freeze {}, garbage {}, crash {},
add_tool {}, slow {ms}, stderr_flood {lines}, cancellations {},
ticker {steps, interval_ms}.
"""
import argparse
import json
import os
import sys
import threading
import time

parser = argparse.ArgumentParser()
parser.add_argument("--hang-initialize", action="store_true")
parser.add_argument("--pages", type=int, default=1)
parser.add_argument("--state")
opts = parser.parse_args()

out_lock = threading.Lock()
cancelled = []  # requestIds of notifications/cancelled received
params_meta = {}  # request id -> the call's _meta
extra_tools = []


def record(event: dict) -> None:
    if opts.state:
        with open(opts.state, "a") as f:
            f.write(json.dumps(event) + "\n")


def send(msg: dict) -> None:
    with out_lock:
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()


def text(t: str) -> dict:
    return {"content": [{"type": "text", "text": t}]}


def schema(props=None, required=None) -> dict:
    s = {"type": "object", "properties": props or {}}
    if required:
        s["required"] = required
    return s


TOOLS = [
    {"name": "echo", "description": "Echoes text", "inputSchema": schema({"text": {"type": "string"}}, ["text"])},
    {"name": "fail", "description": "Answers isError: true", "inputSchema": schema()},
    {"name": "hang", "description": "Never answers this call (still answers others)", "inputSchema": schema()},
    {"name": "freeze", "description": "Stops reading and answering anything", "inputSchema": schema()},
    {"name": "garbage", "description": "Writes a line that is not JSON", "inputSchema": schema()},
    {"name": "crash", "description": "Exits at once", "inputSchema": schema()},
    {"name": "add_tool", "description": "Adds the tool `added` and says so", "inputSchema": schema()},
    {"name": "slow", "description": "Answers after ms", "inputSchema": schema({"ms": {"type": "integer"}}, ["ms"])},
    {"name": "stderr_flood", "description": "Writes lines to stderr",
     "inputSchema": schema({"lines": {"type": "integer"}}, ["lines"])},
    {"name": "cancellations", "description": "The requestIds cancelled so far", "inputSchema": schema()},
    {"name": "ticker", "description": "Sends progress every interval_ms, answers after steps",
     "inputSchema": schema({"steps": {"type": "integer"}, "interval_ms": {"type": "integer"}}, ["steps"])},
]


def call(msg_id, name: str, args: dict) -> None:
    if name == "echo":
        send({"jsonrpc": "2.0", "id": msg_id, "result": text(args.get("text", ""))})
    elif name == "fail":
        send({"jsonrpc": "2.0", "id": msg_id, "result": {**text("it failed on purpose"), "isError": True}})
    elif name == "hang":
        pass
    elif name == "freeze":
        while True:
            time.sleep(3600)
    elif name == "garbage":
        with out_lock:
            sys.stdout.write("this is not JSON-RPC\n")
            sys.stdout.flush()
    elif name == "crash":
        sys.stderr.write("crashing on purpose\n")
        sys.stderr.flush()
        os._exit(3)
    elif name == "ticker":
        token = (params_meta.get(msg_id) or {}).get("progressToken")

        def tick():
            steps = args.get("steps", 1)
            for i in range(1, steps + 1):
                time.sleep(args.get("interval_ms", 100) / 1000.0)
                send({"jsonrpc": "2.0", "method": "notifications/progress",
                      "params": {"progressToken": token, "progress": i, "total": steps}})
            send({"jsonrpc": "2.0", "id": msg_id, "result": text(f"ticked {steps}")})
        threading.Thread(target=tick, daemon=True).start()
    elif name == "add_tool":
        extra_tools.append({"name": "added", "description": "Added at run time", "inputSchema": schema()})
        send({"jsonrpc": "2.0", "id": msg_id, "result": text("added")})
        send({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
    elif name == "slow":
        threading.Timer(args.get("ms", 0) / 1000.0,
                        lambda: send({"jsonrpc": "2.0", "id": msg_id, "result": text("slow done")})).start()
    elif name == "stderr_flood":
        for i in range(args.get("lines", 1)):
            sys.stderr.write(f"flood line {i}\n")
        sys.stderr.flush()
        send({"jsonrpc": "2.0", "id": msg_id, "result": text("flooded")})
    elif name == "cancellations":
        send({"jsonrpc": "2.0", "id": msg_id, "result": {**text("ok"), "structuredContent": {"ids": cancelled}}})
    elif any(t["name"] == name for t in extra_tools):
        send({"jsonrpc": "2.0", "id": msg_id, "result": text(name)})
    else:
        send({"jsonrpc": "2.0", "id": msg_id, "error": {"code": -32602, "message": f"unknown tool {name}"}})


def main() -> None:
    record({"event": "start", "pid": os.getpid()})
    for line in sys.stdin:
        if not line.strip():
            continue
        msg = json.loads(line)
        method, msg_id = msg.get("method"), msg.get("id")
        params = msg.get("params") or {}
        if method == "initialize":
            if opts.hang_initialize:
                continue
            send({"jsonrpc": "2.0", "id": msg_id, "result": {
                "protocolVersion": "2025-06-18", "capabilities": {"tools": {"listChanged": True}},
                "serverInfo": {"name": "misbehaving", "version": "1"}}})
        elif method == "tools/list":
            tools = TOOLS + extra_tools
            per = max(1, -(-len(tools) // opts.pages))
            start = int(params.get("cursor") or 0)
            result = {"tools": tools[start:start + per]}
            if start + per < len(tools):
                result["nextCursor"] = str(start + per)
            send({"jsonrpc": "2.0", "id": msg_id, "result": result})
        elif method == "tools/call":
            params_meta[msg_id] = params.get("_meta")
            call(msg_id, params.get("name"), params.get("arguments") or {})
        elif method == "ping":
            send({"jsonrpc": "2.0", "id": msg_id, "result": {}})
        elif method == "notifications/cancelled":
            cancelled.append(params.get("requestId"))
            record({"event": "cancelled", "requestId": params.get("requestId"), "reason": params.get("reason")})
        elif msg_id is not None:
            send({"jsonrpc": "2.0", "id": msg_id, "error": {"code": -32601, "message": f"no method {method}"}})


if __name__ == "__main__":
    main()
