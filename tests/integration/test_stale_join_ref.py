"""Messages carrying a stale join_ref (of an earlier join of the topic) are
not handed to the channel, as Phoenix does: they are answered as an
unmatched topic, a stale phx_leave does not end the current join, and
messages of the current join (or without a join_ref) go through."""
import json

import pytest

from phx import PhxClient, error, ok


@pytest.mark.asyncio
async def test_a_stale_join_ref_is_dropped_and_the_current_join_keeps_working(server):
    c = await PhxClient.connect(server.ws())
    topic = "room:stale"
    b = await PhxClient.connect(server.ws())
    ok(await b.join(topic))
    await c.send(topic, "phx_join", {}, ref="j1", join_ref="j1")
    ok(await c.reply("j1"))
    # Rejoining closes the first join (phx_close with its join_ref) and opens the second.
    await c.send(topic, "phx_join", {}, ref="j2", join_ref="j2")
    ok(await c.reply("j2"))
    await c.expect(lambda f: f[3] == "phx_close" and f[0] == "j1")
    # A publish of the old join: refused, nothing delivered.
    await c.send(topic, "shout", {"n": 1}, ref="p1", join_ref="j1")
    error(await c.reply("p1"), "unmatched_topic")
    # A stale phx_leave does not leave the current join.
    await c.send(topic, "phx_leave", {}, ref="l1", join_ref="j1")
    error(await c.reply("l1"), "unmatched_topic")
    await c.send(topic, "shout", {"n": 2}, ref="p2", join_ref="j2")
    ok(await c.reply("p2"))
    # Without a join_ref a message is taken as the current join's.
    await c.send(topic, "shout", {"n": 3}, ref="p3", join_ref=None)
    ok(await c.reply("p3"))
    frames = await b.drain(0.3)
    assert [f[4]["n"] for f in frames if f[3] == "shout"] == [2, 3]
    # The current join's leave works.
    await c.send(topic, "phx_leave", {}, ref="l2", join_ref="j2")
    ok(await c.reply("l2"))
    await c.close()
    await b.close()
