#!/usr/bin/python3
"""A tour of Synapse over WebSocket with the Python SDK (mimo_synapse).

    make run                                   # terminal 1: prints the admin key once
    export SYNAPSE_API_KEY=syn_...             # terminal 2
    /usr/bin/python3 examples/websocket/client.py

SYNAPSE_URL overrides the server (default ws://127.0.0.1:4000/cortex/websocket).

It stores two memories with the memory.store tool, runs a query and prints
its streamed thoughts, interrupts a demo.countdown, and publishes to a topic
it subscribed to from a second connection. Exit status 0 when every step
worked, 1 when one did not, 2 when SYNAPSE_API_KEY is missing.
"""
from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
import uuid
from pathlib import Path
from typing import List

if importlib.util.find_spec("mimo_synapse") is None:  # run from a checkout: the SDK next to this file
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "clients" / "python"))

from mimo_synapse import Message, MimoSynapse, RunInterrupted, SynapseError  # noqa: E402

URL = os.environ.get("SYNAPSE_URL", "ws://127.0.0.1:4000/cortex/websocket")


class StepFailed(Exception):
    pass


def check(ok: bool, what: str) -> None:
    if not ok:
        raise StepFailed(what)


async def memories_and_query(syn: MimoSynapse) -> None:
    tag = uuid.uuid4().hex[:6]
    facts = [f"Project {tag} ships the lighthouse dashboard on Friday",
             f"Project {tag} uses a teal colour palette for the dashboard"]
    for fact in facts:
        stored = await syn.tool("memory.store", {"content": fact, "tags": ["example"], "importance": 0.8}).result()
        print(f"stored memory #{stored.data['id']}: {fact}")

    handle = syn.query(f"when does project {tag} ship the dashboard", limit=3)
    print(f"query {handle.ref}:")
    seqs: List[int] = []
    async for thought in handle:
        seqs.append(thought.seq)
        print(f"  thought {thought.seq} [{thought.type}] {thought.content}")
    result = await handle.result()
    found = [r["content"] for r in result.data.get("results", [])]
    for text in found:
        print(f"  result: {text}")
    check(bool(seqs) and seqs == sorted(seqs), "the query streamed its thoughts in order")
    check(facts[0] in found, "the query found the stored memory")


async def interrupted_countdown(syn: MimoSynapse) -> None:
    handle = syn.tool("demo.countdown", {"steps": 100, "interval_ms": 50})
    steps = 0
    async for progress in handle:
        steps += 1
        print(f"countdown {progress.message}")
        if steps == 3:
            await handle.interrupt("the example has seen enough")
    try:
        await handle.result()
    except RunInterrupted as e:
        print(f"countdown interrupted after {steps} steps: {e.reason}")
        check(steps < 100, "the countdown stopped early")
        return
    raise StepFailed("the countdown was interrupted")


async def publish_and_subscribe(syn: MimoSynapse, api_key: str) -> None:
    topic = f"example:{uuid.uuid4().hex[:8]}"
    received: "asyncio.Queue[Message]" = asyncio.Queue()
    unsubscribe = await syn.subscribe(topic, received.put_nowait)
    async with MimoSynapse(URL, api_key=api_key) as publisher:  # a second connection
        offset = await publisher.publish(topic, "greeting", {"text": "hello from the example"})
        print(f"published to {topic} at offset {offset}")
        message = await asyncio.wait_for(received.get(), 10)
    print(f"received {message.event} {message.payload} from {message.sender} at offset {message.offset}")
    check(message.payload == {"text": "hello from the example"} and message.offset == offset,
          "the subscriber got the published message")
    await unsubscribe()


async def main() -> int:
    api_key = os.environ.get("SYNAPSE_API_KEY")
    if not api_key:
        print("set SYNAPSE_API_KEY (make run prints an admin key at first start)", file=sys.stderr)
        return 2
    try:
        async with MimoSynapse(URL, api_key=api_key, request_timeout=15) as syn:
            await asyncio.wait_for(memories_and_query(syn), 60)
            await asyncio.wait_for(interrupted_countdown(syn), 60)
            await asyncio.wait_for(publish_and_subscribe(syn, api_key), 60)
    except StepFailed as e:
        print(f"FAILED: expected that {e}", file=sys.stderr)
        return 1
    except (SynapseError, asyncio.TimeoutError) as e:
        print(f"FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print("all steps worked")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
