#!/usr/bin/env python3
"""Retrieval agent: answers a query from the user's memories. It calls
Synapse's `memory.search` tool as the run's caller (so it sees that user's
memories, nobody else's), reports what it found as thoughts, then streams an
answer token by token and ends with {"text", "sources"}.

    SYNAPSE_WORKER_KEY=<a key from `synapse keys create --worker --agent ID`> \\
        python retrieval_agent.py --agent ID [--url ws://127.0.0.1:4000] [--capacity 4]

No model is involved: the "answer" is composed from the best memories, so
the example runs anywhere; put your model call where `compose` is."""
import argparse
import asyncio
import logging
import os
import re
import signal

from mimo_synapse import AgentWorker, Final
from mimo_synapse.worker import Thought


def compose(question, results):
    """The answer's text, from the memories found (a model would go here)."""
    if not results:
        return f"I have no memory about \"{question}\"."
    lines = [f"Here is what I remember about \"{question}\":"]
    for i, r in enumerate(results, 1):
        lines.append(f"{i}. {r['content']}")
    return "\n".join(lines)


def tokens(text):
    """Splits text into word-sized deltas that concatenate back to it."""
    return re.findall(r"\S+\s*|\s+", text)


async def answer(run):
    question = run.q or ""
    yield Thought(f"searching the memories of {run.agent_id} for: {question}", type="search")
    found = await run.call_tool("memory.search", {"query": question, "limit": run.limit or 3})
    results = (found or {}).get("results", [])
    yield Thought(f"{len(results)} memories found", type="recall",
                  extra={"ids": [r.get("id") for r in results]})
    for delta in tokens(compose(question, results)):
        yield delta
        await asyncio.sleep(0.01)  # the pace of a model's stream
    yield Final({"text": run.text, "sources": [r.get("id") for r in results]})


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default=os.environ.get("SYNAPSE_URL", "ws://127.0.0.1:4000"))
    ap.add_argument("--agent", required=True, help="the agent id the worker serves (its key's --agent)")
    ap.add_argument("--capacity", type=int, default=4, help="runs served at once")
    args = ap.parse_args()
    key = os.environ.get("SYNAPSE_WORKER_KEY")
    if not key:
        raise SystemExit("set SYNAPSE_WORKER_KEY to a worker key (synapse keys create --worker ...)")

    worker = AgentWorker(args.url, api_key=key, agent_id=args.agent, capacity=args.capacity)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await worker.start(answer)
    print(f"retrieval agent serving agent:{args.agent} as worker {worker.worker_id} (capacity {args.capacity})",
          flush=True)
    closed = asyncio.ensure_future(worker.wait_closed())
    await asyncio.wait([closed, asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    await worker.close()
    if closed.done() and closed.exception() is not None:
        raise SystemExit(f"the worker stopped: {closed.exception()}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(main())
