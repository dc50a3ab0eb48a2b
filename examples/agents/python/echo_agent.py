#!/usr/bin/env python3
"""Echo agent: the smallest agent worker. It serves `cortex:<agent>` queries
by streaming the question back word by word (one `token` per word), after
one thought, and ends with the result {"text": <the echo>}.

    SYNAPSE_WORKER_KEY=<a key from `synapse keys create --worker --agent ID`> \\
        python echo_agent.py --agent ID [--url ws://127.0.0.1:4000] [--capacity 4]

Interrupting a query on the client cancels the handler (asyncio task
cancellation); Ctrl-C stops the worker. See examples/agents/README.md."""
import argparse
import asyncio
import logging
import os
import signal

from mimo_synapse import AgentWorker
from mimo_synapse.worker import Thought


async def echo(run):
    """One run: `run.q` is the question (a tool run has `run.name`/`run.args`)."""
    text = run.q if run.kind == "query" else f"{run.name} {run.args}"
    words = text.split()
    yield Thought(f"echoing {len(words)} words for {run.agent_id}", type="plan")
    for i, word in enumerate(words):
        yield word if i == len(words) - 1 else word + " "
        await asyncio.sleep(0.02)  # a real agent waits for its model here
    # No Final(...): the result is {"text": <every token, concatenated>}.


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
    await worker.start(echo)
    print(f"echo agent serving agent:{args.agent} as worker {worker.worker_id} (capacity {args.capacity})",
          flush=True)
    closed = asyncio.ensure_future(worker.wait_closed())
    await asyncio.wait([closed, asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    await worker.close()
    if closed.done() and closed.exception() is not None:
        raise SystemExit(f"the worker stopped: {closed.exception()}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(main())
