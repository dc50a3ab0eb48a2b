"""A refused upgrade (HTTP 429 from the connection limits) makes connect()
raise at once with the server's own reason code, reason text, status and
Retry-After, instead of retrying in silence (issue 17 item 4)."""
import asyncio
import time

import pytest

from mimo_synapse import AuthenticationError, ConnectError, MimoSynapse


def refusals(server, status: int) -> int:
    """How many upgrades the server has refused with `status` (its log)."""
    return sum(1 for line in list(server.log_lines) if f"status={status}" in line and "refused" in line)


async def refused_connect(url: str, **creds) -> tuple:
    """connect() of a fresh client; returns (the error it raised, seconds it took, the client)."""
    syn = MimoSynapse(url, **creds)
    started = time.monotonic()
    try:
        await asyncio.wait_for(syn.connect(), 8)
    except ConnectError as e:
        return e, time.monotonic() - started, syn
    await syn.close()
    raise AssertionError("connect() must raise when the server refuses the upgrade")


async def assert_no_retry(server, syn: MimoSynapse, status: int, before: int) -> None:
    # One refused attempt, then nothing: no reconnect loop behind the raise.
    await asyncio.sleep(1.5)
    assert refusals(server, status) - before == 1
    assert not syn.connected and syn.connection_count == 0
    await syn.close()


@pytest.mark.asyncio
async def test_connection_rate_refusal_raises_promptly_with_429_reason_and_retry_after(fresh_server):
    server = fresh_server({"--ip-new-per-min": "1"})
    first = MimoSynapse(server.ws_url, api_key=server.admin_key)
    try:
        await first.connect()  # spends this minute's one new connection
    except ConnectError:
        pass  # already spent by something before it: the next one is refused all the same
    try:
        before = refusals(server, 429)
        err, took, syn = await refused_connect(server.ws_url, api_key=server.admin_key)
        assert took < 3, f"connect() took {took:.1f}s to raise"
        assert type(err) is ConnectError  # not an AuthenticationError: the key is fine
        assert err.status == 429 and err.reason == "connection_rate_exceeded", err
        assert err.message and err.message != err.reason, f"the server's reason text, got {err.message!r}"
        assert err.retry_after_s is not None and err.retry_after_s > 0
        assert err.retry_after_ms == round(err.retry_after_s * 1000)
        assert "429" in str(err) and err.reason in str(err)
        await assert_no_retry(server, syn, 429, before)
    finally:
        await first.close()


@pytest.mark.asyncio
async def test_per_key_connection_limit_refusal_raises_with_429_reason_and_retry_after(fresh_server):
    server = fresh_server({"--key-max-connections": "1"})
    key = server.create_key("one-conn")
    async with MimoSynapse(server.ws_url, api_key=key) as holder:
        assert await holder.ping() > 0
        before = refusals(server, 429)
        err, took, syn = await refused_connect(server.ws_url, api_key=key)
        assert took < 3, f"connect() took {took:.1f}s to raise"
        assert err.status == 429 and err.reason == "too_many_connections", err
        assert err.message and err.message != err.reason
        assert err.retry_after_s is not None and err.retry_after_s >= 1
        await assert_no_retry(server, syn, 429, before)
        # `async with` raises the same way
        with pytest.raises(ConnectError) as again:
            async with MimoSynapse(server.ws_url, api_key=key):
                pass
        assert again.value.status == 429 and again.value.reason == "too_many_connections"
        assert holder.connected  # the holder's connection is untouched


@pytest.mark.asyncio
async def test_bad_key_raises_401_with_the_servers_reason_and_no_retry(fresh_server):
    server = fresh_server()
    before = refusals(server, 401)
    err, took, syn = await refused_connect(server.ws_url, api_key="syn_not_a_real_key")
    assert took < 3
    assert isinstance(err, AuthenticationError)
    assert err.status == 401 and err.reason == "unauthorized" and err.message and err.message != "unauthorized"
    await assert_no_retry(server, syn, 401, before)
