"""A cluster node (serve --redis) that loses Redis keeps delivering its own
publishes locally: the SDK hands those unnumbered messages (_meta.local, no
offset) to subscribers, and the publish returns offset 0 (protocol §9)."""
import urllib.request

import pytest

from mimo_synapse import MimoSynapse
from redis_server import RedisServer
from sdk_helpers import eventually, unique
from synapse_server import SynapseServer


def ready(server: SynapseServer) -> int:
    try:
        with urllib.request.urlopen(server.http_url + "/health/ready", timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.mark.asyncio
async def test_local_delivery_while_redis_is_down_reaches_subscribers_with_offset_0():
    topic = unique("room:sdk-cluster")
    with RedisServer() as redis, SynapseServer(flags={"--redis": redis.url(), "--node-id": "py"}) as server:
        got = []
        async with MimoSynapse(server.ws_url, api_key=server.admin_key) as a, \
                MimoSynapse(server.ws_url, api_key=server.admin_key) as b:
            subscription = await a.subscribe(topic, got.append)
            numbered = await b.publish(topic, "m", {"n": 1})
            assert numbered >= 1
            await eventually(lambda: len(got) == 1, what="the numbered message")

            redis.kill()
            await eventually(lambda: ready(server) == 503, what="/health/ready 503 without Redis")
            assert await b.publish(topic, "m", {"n": 2}) == 0
            await eventually(lambda: len(got) == 2, what="the local message")
            assert got[1].payload == {"n": 2} and got[1].offset is None
            assert got[0].offset == numbered
            # A local message moves no recovery position.
            assert subscription.offset == numbered
