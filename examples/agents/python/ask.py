#!/usr/bin/env python3
"""Asks an agent a question through Synapse and prints its answer as it
streams: thoughts on stderr, tokens on stdout, then the result's data.

    SYNAPSE_API_KEY=<a user key of the agent> python ask.py [--store TEXT]... "your question"

`--store TEXT` first saves TEXT as a memory of the agent (the built-in
`memory.store` tool), so the retrieval agent has something to find."""
import argparse
import asyncio
import json
import os
import sys

from mimo_synapse import MimoSynapse, Snapshot, Thought, Token


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("question")
    ap.add_argument("--url", default=os.environ.get("SYNAPSE_URL", "ws://127.0.0.1:4000"))
    ap.add_argument("--store", action="append", default=[], metavar="TEXT", help="store a memory first")
    args = ap.parse_args()
    key = os.environ.get("SYNAPSE_API_KEY")
    if not key:
        raise SystemExit("set SYNAPSE_API_KEY to the key of a user of the agent")

    async with MimoSynapse(args.url, api_key=key) as syn:
        for text in args.store:
            stored = await syn.tool("memory.store", {"content": text}).result(timeout=30)
            print(f"[stored memory {stored.data['id']}]", file=sys.stderr)
        handle = syn.query(args.question)
        async for item in handle:
            if isinstance(item, Thought):
                print(f"[{item.type}] {item.content}", file=sys.stderr, flush=True)
            elif isinstance(item, Token):
                print(item.delta, end="", flush=True)
            elif isinstance(item, Snapshot):
                print(item.text, end="", flush=True)
        result = await handle.result(timeout=60)
        print()
        print(json.dumps(result.data, sort_keys=True))


if __name__ == "__main__":
    asyncio.run(main())
