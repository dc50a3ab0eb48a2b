"""An agent worker as a separate process, for tests/integration/test_agent_workers.py.

It speaks the worker protocol of docs/protocol.md section 10 over a raw
WebSocket (python3-websockets, no SDK), and reports what it sees on stdout,
one JSON object per line, each with `t` (time.time() when it happened), so
the test can measure from the worker's side (e.g. when `cancel` arrived):

  {"ev": "joined", "reply": {...}}      the join reply
  {"ev": "run", "run": {...}}           a `run` push
  {"ev": "cancel", "run_id", "reason"}  a `cancel` push
  {"ev": "reply", "ref", "event", "run_id", "reply"}  a reply to an event it sent (other than ok {})
  {"ev": "result_acked", "run_id", "reply"}  the reply to its result
  {"ev": "closed", "code"}              the server closed the connection

Modes (--mode):
  stream   each run: --thoughts thoughts, --tokens tokens (--interval-ms apart), then result
  hold     each run: one token, then nothing until cancel; after a cancel, one more token
           (its reply must be {"dropped": true})
  silent   takes runs and never answers them
  tools    kind tool: result {"tool", "args"}; kind query: call_tool memory.store {content: q},
           then memory.search {query: q}, result {"stored", "found"}
  hostile  at its first run: a malformed frame, events for runs it was never given, an unknown
           event, a token without text, repeated --hostile-count times
"""
import argparse
import asyncio
import itertools
import json
import sys
import time

import websockets


def log(**kw):
    kw["t"] = time.time()
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()


class Worker:
    def __init__(self, args):
        self.args = args
        self.refs = itertools.count(100)  # "1" is the join's ref
        self.join_ref = None
        self.pending = {}  # ref -> (event, run_id)
        self.calls = {}  # ref -> future of the call_tool reply
        self.cancelled = set()
        self.tasks = set()

    async def send(self, event, payload, want_reply=True):
        ref = str(next(self.refs)) if want_reply else None
        if ref:
            self.pending[ref] = (event, payload.get("run_id"))
        await self.ws.send(json.dumps([self.join_ref, ref, self.args.topic, event, payload]))
        return ref

    async def call_tool(self, run_id, name, args):
        ref = str(next(self.refs))
        fut = asyncio.get_running_loop().create_future()
        self.calls[ref] = fut
        await self.ws.send(json.dumps([self.join_ref, ref, self.args.topic, "call_tool",
                                       {"run_id": run_id, "name": name, "args": args}]))
        return await asyncio.wait_for(fut, 10)

    async def serve_run(self, run):
        a = self.args
        rid = run["run_id"]
        mode = a.mode
        if mode == "silent":
            return
        if mode == "hold":
            await self.send("token", {"run_id": rid, "text": "first "})
            return
        if mode == "tools":
            if run["kind"] == "tool":
                await self.send("result", {"run_id": rid, "data": {"tool": run["name"], "args": run["args"]}})
                return
            stored = await self.call_tool(rid, "memory.store", {"content": run["q"]})
            found = await self.call_tool(rid, "memory.search", {"query": run["q"]})
            await self.send("result", {"run_id": rid, "data": {"stored": stored, "found": found}})
            return
        # stream
        for i in range(a.thoughts):
            await self.send("thought", {"run_id": rid, "thought": f"thinking {i}"})
        for i in range(a.tokens):
            if rid in self.cancelled:
                return
            text = f"w{i} "
            if a.token_bytes > len(text):
                text += "x" * (a.token_bytes - len(text))
            await self.send("token", {"run_id": rid, "text": text})
            if a.interval_ms:
                await asyncio.sleep(a.interval_ms / 1000)
        await self.send("result", {"run_id": rid, "data": {"answer": run.get("q"), "worker": a.name}})

    async def hostile(self):
        for i in range(self.args.hostile_count):
            if self.args.hostile_malformed:
                await self.ws.send("this is not a frame")
            await self.send("token", {"run_id": f"run_not_mine_{i}", "text": "x"})
            await self.send("no_such_event", {"run_id": "x"})
            await self.send("token", {"text": "no run id"})

    async def main(self):
        a = self.args
        async with websockets.connect(a.url, ping_interval=None, max_size=None, max_queue=None) as ws:
            self.ws = ws
            self.join_ref = "1"
            payload = {"capacity": a.capacity}
            if a.tools_json:
                payload["tools"] = json.loads(a.tools_json)
            await ws.send(json.dumps(["1", "1", a.topic, "phx_join", payload]))
            heartbeat = asyncio.create_task(self.heartbeats())
            try:
                async for raw in ws:
                    await self.on_frame(json.loads(raw))
            except websockets.ConnectionClosed:
                pass
            finally:
                heartbeat.cancel()
            code = ws.close_code
            log(ev="closed", code=code)

    async def heartbeats(self):
        while True:
            await asyncio.sleep(5)
            await self.ws.send(json.dumps([None, "hb", "phoenix", "heartbeat", {}]))

    def spawn(self, coro):
        t = asyncio.create_task(coro)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    async def on_frame(self, f):
        join_ref, ref, topic, event, payload = f
        if event == "phx_reply":
            if ref == "1" and topic == self.args.topic:
                log(ev="joined", reply=payload)
                return
            if ref in self.calls:
                self.calls.pop(ref).set_result(payload)
                return
            if ref in self.pending:
                ev, rid = self.pending.pop(ref)
                if ev == "result":
                    log(ev="result_acked", run_id=rid, reply=payload)
                if payload.get("status") != "ok" or payload.get("response"):
                    log(ev="reply", ref=ref, event=ev, run_id=rid, reply=payload)
            return
        if event == "run":
            log(ev="run", run=payload)
            if self.args.mode == "hostile":
                self.spawn(self.hostile())
            else:
                self.spawn(self.serve_run(payload))
        elif event == "cancel":
            rid = payload["run_id"]
            self.cancelled.add(rid)
            log(ev="cancel", run_id=rid, reason=payload.get("reason"))
            if self.args.mode == "hold":
                # Anything sent for a cancelled run is dropped by Synapse.
                self.spawn(self.send("token", {"run_id": rid, "text": "after cancel"}))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--name", default="w")
    p.add_argument("--capacity", type=int, default=1)
    p.add_argument("--mode", default="stream")
    p.add_argument("--thoughts", type=int, default=2)
    p.add_argument("--tokens", type=int, default=5)
    p.add_argument("--interval-ms", type=float, default=0)
    p.add_argument("--token-bytes", type=int, default=0, help="pad each token to this size")
    p.add_argument("--tools-json", default="")
    p.add_argument("--hostile-count", type=int, default=50)
    p.add_argument("--hostile-malformed", type=int, default=1, help="0: no malformed frames, only bad events")
    args = p.parse_args()
    try:
        asyncio.run(Worker(args).main())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
