"""The memory engine end to end: hostile text is data, scopes are private,
tenants are separate."""
import pytest

from phx import PhxClient, ok
from rawws import token_for
from test_query import TOPIC, run_to_end, store

HOSTILE = ['"', "*", "OR", "NEAR(", "'; DROP TABLE memories; --", "a\" OR \"1\"=\"1", "content:*", "^start",
           "x AND NOT y", "(((", "Robert'); DROP TABLE students;--"]


async def tool(c, topic, name, args):
    ref = ok(await c.request(topic, "tool", {"tool": name, "args": args}))["ref"]
    end = (await run_to_end_topic(c, topic, ref))[-1]
    return end


async def run_to_end_topic(c, topic, ref):
    events = []
    while True:
        f = await c.expect(lambda f: f[2] == topic and f[1] is None and f[4].get("ref") == ref)
        events.append(f)
        if f[3] in ("result", "error", "interrupted"):
            return events


@pytest.mark.asyncio
async def test_injection_strings_are_stored_and_found_literally(fresh_server):
    s = fresh_server()
    c = await PhxClient.connect(s.ws())
    ok(await c.join(TOPIC))
    ids = {}
    for h in HOSTILE:
        ids[h] = await store(c, f"hostile sample {h}")
    for h in HOSTILE:
        end = await tool(c, TOPIC, "memory.search", {"query": h, "limit": 50})
        contents = [r["content"] for r in end[4]["data"]["results"]]
        assert f"hostile sample {h}" in contents, (h, contents)
        ref = ok(await c.request(TOPIC, "query", {"q": h}))["ref"]
        assert (await run_to_end(c, ref))[-1][3] == "result"
    stats = (await tool(c, TOPIC, "memory.stats", {}))[4]["data"]
    assert stats["visible"] == len(HOSTILE)
    await c.close()
    # The database is intact: the same rows, and SQLite's own check passes.
    import sqlite3
    db = sqlite3.connect(f"{s.data_dir}/synapse.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT COUNT(*) FROM memories").fetchone()[0] == len(HOSTILE)
    assert db.execute("INSERT INTO memories_fts(memories_fts) VALUES('integrity-check')").fetchall() == []
    db.close()


@pytest.mark.asyncio
async def test_agent_scope_is_private_and_shared_is_tenant_wide(fresh_server):
    s = fresh_server()
    alice = await PhxClient.connect(s.ws(key=s.create_key("alice", "--tenant", "acme")))
    bob = await PhxClient.connect(s.ws(key=s.create_key("bob", "--tenant", "acme")))
    eve = await PhxClient.connect(s.ws(key=s.create_key("eve", "--tenant", "other")))
    for c, agent in ((alice, "alice"), (bob, "bob"), (eve, "eve")):
        ok(await c.join(f"cortex:{agent}"))
    a_private = (await tool(alice, "cortex:alice", "memory.store", {"content": "alice private zebra"}))[4]["data"]["id"]
    await tool(alice, "cortex:alice", "memory.store", {"content": "team shared zebra", "scope": "shared"})

    def contents(end):
        return sorted(r["content"] for r in end[4]["data"]["results"])

    assert contents(await tool(alice, "cortex:alice", "memory.search", {"query": "zebra"})) == \
        ["alice private zebra", "team shared zebra"]
    assert contents(await tool(bob, "cortex:bob", "memory.search", {"query": "zebra"})) == ["team shared zebra"]
    assert contents(await tool(eve, "cortex:eve", "memory.search", {"query": "zebra"})) == []
    # Bob cannot forget Alice's private memory; it is not visible to him.
    end = await tool(bob, "cortex:bob", "memory.forget", {"id": a_private})
    assert end[3] == "error" and end[4]["reason"] == "tool_error"
    end = await tool(alice, "cortex:alice", "memory.forget", {"id": a_private})
    assert end[4]["data"] == {"id": a_private, "forgotten": True}
    for c in (alice, bob, eve):
        await c.close()


@pytest.mark.asyncio
async def test_token_carries_the_tenant_of_its_key(fresh_server):
    s = fresh_server()
    key = s.create_key("carol", "--tenant", "acme")
    keyc = await PhxClient.connect(s.ws(key=key))
    ok(await keyc.join("cortex:carol"))
    await tool(keyc, "cortex:carol", "memory.store", {"content": "acme only fact", "scope": "shared"})
    tok = await PhxClient.connect(s.ws(token=s.token(key=key)))
    ok(await tok.join("cortex:carol"))
    end = await tool(tok, "cortex:carol", "memory.search", {"query": "fact"})
    assert [r["content"] for r in end[4]["data"]["results"]] == ["acme only fact"]
    # A token without a tenant claim (not minted by a key) lands in "default".
    other = await PhxClient.connect(s.ws(token=token_for(s.data_dir, "carol")))
    ok(await other.join("cortex:carol"))
    end = await tool(other, "cortex:carol", "memory.search", {"query": "fact"})
    assert end[4]["data"]["results"] == []
    for c in (keyc, tok, other):
        await c.close()
