"""Credentials: short tokens refreshed before they expire (the session server
pushes token_expiring 2 s before exp, see conftest.SHARED_FLAGS), fresh
tokens on reconnect, typed errors for refused credentials."""
import asyncio
import time

import pytest

from mimo_synapse import AuthenticationError, ConnectError, MimoSynapse
from mimo_synapse._util import jwt_claims
from sdk_helpers import TcpProxy, connected, eventually, unique

TTL_S = 3


async def wait_past(unix_s: float, margin: float = 1.0) -> None:
    """Sleeps until wall-clock time is `margin` s past `unix_s` (bounded)."""
    delay = unix_s + margin - time.time()
    assert delay < TTL_S + 3
    if delay > 0:
        await asyncio.sleep(delay)


@pytest.mark.asyncio
async def test_get_token_refresh_keeps_the_connection_past_expiry_and_reconnect_uses_a_fresh_token(server):
    agent = unique("tok")
    minted = []

    async def get_token():
        token = await asyncio.to_thread(server.token, server.admin_key, agent_id=agent, ttl_s=TTL_S)
        minted.append(token)
        return token

    topic = unique("room:tok")
    got = []
    proxy = await TcpProxy(server.port).start()
    try:
        async with MimoSynapse(proxy.url, get_token=get_token) as syn, \
                MimoSynapse(server.ws_url, api_key=server.admin_key) as pub:
            assert syn.agent_id is None and await syn.ping() > 0
            assert syn.agent_id == agent  # the token's sub
            await syn.subscribe(topic, got.append)
            first_exp = jwt_claims(minted[0])["exp"]

            await wait_past(first_exp, 1.5)
            # the first token is dead; the connection is not
            assert syn.connection_count == 1 and syn.connected
            assert syn.last_close_code is None
            assert syn.token_refreshes >= 1 and len(minted) >= 2
            assert await syn.ping() > 0
            await pub.publish(topic, "n", {"i": 1})
            await eventually(lambda: len(got) == 1, 5, what="a message after the first token expired")

            # a reconnect presents a token minted for it, not an expired one
            calls_before = len(minted)
            proxy.sever()
            await connected(syn, 2, timeout=10)
            assert len(minted) > calls_before
            used = proxy.bearer_of(proxy.accepted - 1)
            assert used in minted[calls_before:]
            assert jwt_claims(used)["exp"] > time.time()
            assert used != minted[0]
            assert await syn.ping() > 0
    finally:
        await proxy.close()


@pytest.mark.asyncio
async def test_token_alone_is_kept_alive_by_self_refresh(server):
    agent = unique("self")
    token = server.token(server.admin_key, agent_id=agent, ttl_s=TTL_S)
    async with MimoSynapse(server.ws_url, token=token) as syn:
        await syn.ping()
        await wait_past(jwt_claims(token)["exp"], 1.5)
        assert syn.connection_count == 1 and syn.connected
        assert syn.token_refreshes >= 1
        assert syn.token != token and jwt_claims(syn.token)["sub"] == agent
        assert await syn.ping() > 0


@pytest.mark.asyncio
async def test_refused_credentials_raise_typed_errors(server):
    with pytest.raises(AuthenticationError) as e1:
        await MimoSynapse(server.ws_url, api_key="syn_nope_nope").connect()
    assert e1.value.status == 401 and e1.value.reason == "unauthorized" and e1.value.message

    with pytest.raises(AuthenticationError) as e2:
        await MimoSynapse(server.ws_url, token="not.a.jwt").connect()
    assert e2.value.status == 401

    with pytest.raises(ConnectError) as e3:  # nothing listens there
        await MimoSynapse("ws://127.0.0.1:9/cortex/websocket", api_key="x", connect_timeout=3).connect()
    assert e3.value.reason == "connect_failed"


@pytest.mark.asyncio
async def test_revoked_key_stops_the_client_with_a_typed_error(server, make_agent):
    name, key = make_agent("revoked")
    async with MimoSynapse(server.ws_url, api_key=key) as syn:
        await syn.ping()
        listed = server.keys_cli("list")
        key_id = key.split("_")[1]
        assert key_id in listed.stdout, listed.stdout + listed.stderr
        res = server.keys_cli("revoke", key_id)
        assert res.returncode == 0, res.stderr
        await eventually(lambda: syn.closed, 10, what="the client to give up")
        assert isinstance(syn.error, AuthenticationError)
        assert syn.last_close_code == 4003 and syn.error.close_code == 4003
        assert syn.error.reason == "credentials_revoked"
        assert syn.connection_count == 1  # no reconnect attempt with revoked credentials
