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


@pytest.mark.asyncio
async def test_run_resumes_exactly_once_when_the_client_reconnects_to_another_node():
    """Issue 13 in cluster mode: the client's link to node A is cut while a
    run streams there; its reconnect lands on node B (the proxy now points
    there, as a load balancer might), the SDK re-attaches on B from its last
    seq, and every token arrives once, in order, while the run goes on on A.
    Then node A dies under a second run followed from B: node_lost."""
    import shutil
    import tempfile

    from sdk_helpers import TcpProxy
    from mimo_synapse import RunError
    data = tempfile.mkdtemp(prefix="synapse-sdk-cluster-")
    try:
        await _hop(data)
    finally:
        shutil.rmtree(data, ignore_errors=True)


async def _hop(data):
    from sdk_helpers import TcpProxy
    from mimo_synapse import RunError
    flags = {"--node-ttl-ms": "2000", "--detach-grace-s": "30"}
    with RedisServer() as redis, \
            SynapseServer(data_dir=data, flags={**flags, "--redis": redis.url(), "--node-id": "a"}) as a:
        key = a.create_key(unique("hop"))
        with SynapseServer(data_dir=data, flags={**flags, "--redis": redis.url(), "--node-id": "b"}) as b:
            proxy = await TcpProxy(a.port).start()
            try:
                async with MimoSynapse(proxy.url, api_key=key, backoff_base=0.05) as syn:
                    handle = syn.tool("demo.tokens", {"count": 200, "interval_ms": 5})
                    items = []
                    async for item in handle:
                        items.append(item)
                        if len(items) == 30:
                            proxy.target_port = b.port  # the next connection goes to node B
                            proxy.sever()
                    result = await handle.result(timeout=15)
                    assert [i.seq for i in items] == list(range(1, 201))
                    assert handle.text == "".join(f"t{i} " for i in range(1, 201))
                    assert result.data == {"tokens": 200} and handle.resumes == 1

                    # A run on A, followed from B: A dies, B ends it node_lost.
                    async with MimoSynapse(a.ws_url, api_key=key) as on_a:
                        far = on_a.tool("demo.countdown", {"steps": 500, "interval_ms": 20})
                        await eventually(lambda: far.last_seq >= 2, 10, what="2 steps on A")
                        start = far.last_seq
                        follower = syn.attach(far.run_id, after_seq=start)
                        await eventually(lambda: follower.last_seq >= start + 2, 10, what="steps via B")
                        a.kill()
                        with pytest.raises(RunError) as ei:
                            await follower.result(timeout=15)
                        assert ei.value.reason == "node_lost"
            finally:
                await proxy.close()
