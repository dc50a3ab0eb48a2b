"""TLS on the listener (server.tls_cert / server.tls_key, --tls-cert /
--tls-key): wss:// and https:// on the same port, with certificates made
here by the openssl command line. Covers the WebSocket path (join, publish,
receive, permessage-deflate, the drain's 1001), the HTTP endpoints, SIGHUP
reload (new connections get the new certificate, open ones keep working, a
broken file keeps the old one), the handshake timeout for clients that stall
before, inside or after the TLS handshake, plain HTTP and garbage sent to the
TLS port, a slow consumer closed with 4008 at the outbound bound as over
plain TCP, and startup refusals for unusable files."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import http.client
import json
import os
import select
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from phx import PhxClient, ok
from rawws import client_frame, read_frames
from synapse_server import binary, free_port, parse_metrics, wait_until


UNDER_ASAN = "build/debug" in os.environ.get("SYNAPSE_BIN", "")


# --- certificates -------------------------------------------------------------

def make_cert(directory: Path, name: str, cn: str) -> tuple[Path, Path]:
    """A self-signed P-256 certificate for 127.0.0.1; returns (cert, key)."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={cn}",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True)
    return cert, key


def der(cert: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.read_text())


def client_context(*trusted: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    for c in trusted:
        ctx.load_verify_locations(cafile=str(c))
    return ctx


@pytest.fixture
def certs(tmp_path):
    """Two certificates (a, b) and the live paths the server is given."""
    a = make_cert(tmp_path, "a", "synapse-test-a")
    b = make_cert(tmp_path, "b", "synapse-test-b")
    live_cert, live_key = tmp_path / "live.crt", tmp_path / "live.key"
    live_cert.write_bytes(a[0].read_bytes())
    live_key.write_bytes(a[1].read_bytes())
    os.chmod(live_key, 0o600)
    return {"a": a, "b": b, "cert": live_cert, "key": live_key, "ctx": client_context(a[0], b[0])}


def tls_flags(certs, **extra):
    flags = {"--tls-cert": str(certs["cert"]), "--tls-key": str(certs["key"])}
    flags.update(extra)
    return flags


def wss(s, key=None) -> str:
    return s.ws(key).replace("ws://", "wss://", 1)


# --- HTTPS and raw TLS helpers -----------------------------------------------

def https(s, ctx, method, path, body=None, key=None):
    conn = http.client.HTTPSConnection("127.0.0.1", s.port, context=ctx, timeout=10)
    try:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        data = None
        if body is not None:
            data = json.dumps(body)
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=headers)
        r = conn.getresponse()
        raw = r.read().decode()
        try:
            return r.status, json.loads(raw)
        except ValueError:
            return r.status, raw
    finally:
        conn.close()


def tls_metrics(s, ctx) -> dict:
    _, text = https(s, ctx, "GET", "/metrics")
    return parse_metrics(text)


def peer_der(client: PhxClient) -> bytes:
    return client.ws.transport.get_extra_info("ssl_object").getpeercert(binary_form=True)


def tls_upgrade(port, ctx, target, rcvbuf=None):
    """A raw WebSocket upgrade over TLS; returns (SSL socket, bytes after the head)."""
    raw = socket.socket()
    if rcvbuf:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    raw.settimeout(10)
    raw.connect(("127.0.0.1", port))
    s = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, "closed during the upgrade"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
    assert accept in head
    return s, rest


def client_hello(ctx) -> bytes:
    """The bytes of a real ClientHello (never sent by this object)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def closed_after(sock: socket.socket, limit: float = 10.0) -> float:
    """Seconds until the server closes `sock` (EOF or reset); reads and drops data."""
    start = time.monotonic()
    sock.settimeout(limit)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    except socket.timeout:
        raise AssertionError(f"still open after {limit}s")
    return time.monotonic() - start


def close_times(socks, limit: float = 10.0) -> list[float]:
    """When (time.monotonic()) the server closed each socket, watched together."""
    done = {}
    deadline = time.monotonic() + limit
    while len(done) < len(socks):
        left = deadline - time.monotonic()
        assert left > 0, f"{len(socks) - len(done)} still open after {limit}s"
        readable, _, _ = select.select([x for x in socks if x not in done], [], [], left)
        for x in readable:
            try:
                if x.recv(4096):
                    continue
            except ConnectionResetError:
                pass
            done[x] = time.monotonic()
    return [done[x] for x in socks]


# --- the WebSocket path --------------------------------------------------------

@pytest.mark.asyncio
async def test_wss_join_publish_receive_and_https_endpoints(fresh_server, certs):
    s = fresh_server(tls_flags(certs))
    ctx = certs["ctx"]
    a = await PhxClient.connect(wss(s), ssl=ctx)
    b = await PhxClient.connect(wss(s), ssl=ctx)
    assert peer_der(a) == der(certs["a"][0])
    ok(await a.join("room:tls"))
    ok(await b.join("room:tls"))
    # Small and large (several TLS records) messages, both ways.
    for blob in ("x", "y" * 200_000):
        ref = await a.send("room:tls", "m", {"blob": blob})
        assert "offset" in ok(await a.reply(ref))
        f = await b.push_event("room:tls", "m")
        assert f[4]["blob"] == blob
    await b.send("room:tls", "back", {"n": 1})
    assert (await a.push_event("room:tls", "back"))[4]["n"] == 1
    assert ok(await a.heartbeat()) == {}

    # The HTTP endpoints answer on the same port, over TLS only.
    status, body = https(s, ctx, "GET", "/health")
    assert status == 200 and body["status"] == "ok"
    assert body["connections"] == 2
    status, body = https(s, ctx, "POST", "/api/token", {"agent_id": "tls-agent"}, key=s.admin_key)
    assert status == 200 and body["token"]
    m = tls_metrics(s, ctx)
    assert m["synapse_tls_handshakes"] >= 4
    assert m["synapse_tls_cert_not_after_seconds"] > time.time()
    await a.close()
    await b.close()
    assert a.ws.close_code == 1000


def test_https_keep_alive_serves_several_requests_on_one_connection(fresh_server, certs):
    s = fresh_server(tls_flags(certs))
    conn = http.client.HTTPSConnection("127.0.0.1", s.port, context=certs["ctx"], timeout=10)
    for path in ("/health", "/health/ready", "/metrics", "/health/live"):
        conn.request("GET", path)
        r = conn.getresponse()
        r.read()
        assert r.status == 200, path
    conn.close()
    assert tls_metrics(s, certs["ctx"])["synapse_tls_handshakes"] == 2  # that one, and this scrape


@pytest.mark.asyncio
async def test_permessage_deflate_over_tls(fresh_server, certs):
    s = fresh_server(tls_flags(certs, **{"--permessage-deflate": "true"}))
    ctx = certs["ctx"]
    a = await PhxClient.connect(wss(s), ssl=ctx, compression="deflate")
    b = await PhxClient.connect(wss(s), ssl=ctx, compression="deflate")
    assert a.ws.extensions and b.ws.extensions
    ok(await a.join("room:z"))
    ok(await b.join("room:z"))
    text = "compress me " * 5000
    await a.send("room:z", "m", {"t": text})
    assert (await b.push_event("room:z", "m"))[4]["t"] == text
    await a.close()
    await b.close()


@pytest.mark.asyncio
async def test_drain_closes_tls_connections_with_1001(fresh_server, certs):
    s = fresh_server(tls_flags(certs))
    c = await PhxClient.connect(wss(s), ssl=certs["ctx"])
    ok(await c.join("room:drain"))
    s.proc.send_signal(signal.SIGTERM)
    await asyncio.wait_for(c.ws.wait_closed(), 10)
    assert c.ws.close_code == 1001
    assert s.stop() == 0


# --- SIGHUP reload -------------------------------------------------------------

@pytest.mark.asyncio
async def test_sighup_reload_new_connections_get_new_cert_old_ones_keep_working(fresh_server, certs):
    s = fresh_server(tls_flags(certs))
    ctx = certs["ctx"]
    old = await PhxClient.connect(wss(s), ssl=ctx)
    assert peer_der(old) == der(certs["a"][0])
    ok(await old.join("room:reload"))

    certs["cert"].write_bytes(certs["b"][0].read_bytes())
    certs["key"].write_bytes(certs["b"][1].read_bytes())
    s.proc.send_signal(signal.SIGHUP)
    assert s.saw_log(lambda l: "TLS reloaded" in l and "synapse-test-b" in l), s.log_lines[-10:]

    new = await PhxClient.connect(wss(s), ssl=ctx)
    assert peer_der(new) == der(certs["b"][0])
    cert = new.ws.transport.get_extra_info("ssl_object").getpeercert()
    assert dict(x[0] for x in cert["subject"])["commonName"] == "synapse-test-b"
    ok(await new.join("room:reload"))
    # The connection made before the reload still works, both ways.
    assert peer_der(old) == der(certs["a"][0])
    await old.send("room:reload", "m", {"from": "old"})
    assert (await new.push_event("room:reload", "m"))[4]["from"] == "old"
    await new.send("room:reload", "m", {"from": "new"})
    assert (await old.push_event("room:reload", "m"))[4]["from"] == "new"
    assert ok(await old.heartbeat()) == {}
    m = tls_metrics(s, ctx)
    assert m["synapse_tls_reloads"] == 1 and m["synapse_tls_reload_failures"] == 0
    assert s.proc.poll() is None
    await old.close()
    await new.close()


@pytest.mark.asyncio
async def test_failed_reload_keeps_serving_the_old_certificate(fresh_server, certs):
    s = fresh_server(tls_flags(certs))
    ctx = certs["ctx"]
    held = await PhxClient.connect(wss(s), ssl=ctx)
    ok(await held.join("room:keep"))

    # 1. Not a certificate at all.
    certs["cert"].write_text("this is not PEM\n")
    s.proc.send_signal(signal.SIGHUP)
    assert s.saw_log(lambda l: "TLS reload failed" in l and "synapse-test-a" in l), s.log_lines[-10:]
    # 2. A good certificate with a key that is not its own.
    certs["cert"].write_bytes(certs["b"][0].read_bytes())
    s.proc.send_signal(signal.SIGHUP)
    assert s.saw_log(lambda l: "TLS reload failed" in l and "does not match" in l), s.log_lines[-10:]
    # 3. The key file gone.
    certs["key"].unlink()
    s.proc.send_signal(signal.SIGHUP)
    assert s.saw_log(lambda l: "TLS reload failed" in l and "No such file" in l), s.log_lines[-10:]

    fresh = await PhxClient.connect(wss(s), ssl=ctx)
    assert peer_der(fresh) == der(certs["a"][0])
    ok(await fresh.join("room:keep"))
    await fresh.send("room:keep", "m", {"k": 1})
    assert (await held.push_event("room:keep", "m"))[4]["k"] == 1
    m = tls_metrics(s, ctx)
    assert m["synapse_tls_reload_failures"] == 3 and m["synapse_tls_reloads"] == 0
    await held.close()
    await fresh.close()


# --- handshake timeout, plain HTTP and garbage --------------------------------

def test_handshake_timeout_covers_the_tls_handshake(fresh_server, certs):
    s = fresh_server(tls_flags(certs, **{"--handshake-timeout-ms": "600"}))
    ctx = certs["ctx"]
    # Silent: TCP open, no ClientHello.
    silent = socket.create_connection(("127.0.0.1", s.port))
    # Stopped halfway through the ClientHello.
    half = socket.create_connection(("127.0.0.1", s.port))
    hello = client_hello(ctx)
    half.sendall(hello[: len(hello) // 2])
    # TLS done, then no HTTP request: the slow upgrade, over TLS.
    slow = ctx.wrap_socket(socket.create_connection(("127.0.0.1", s.port)), server_hostname="127.0.0.1")
    for sock in (silent, half, slow):
        took = closed_after(sock)
        assert took < 2.5, took
        sock.close()
    wait_until(lambda: tls_metrics(s, ctx)['synapse_connections_refused_total{reason="handshake_timeout"}'] >= 3,
               what="three handshake timeouts counted")
    assert https(s, ctx, "GET", "/health")[0] == 200


def test_handshake_timeout_same_bound_as_plain(fresh_server, certs):
    """The stalled TLS client goes at the timeout a stalled plain upgrade gets."""
    plain = fresh_server({"--handshake-timeout-ms": "800"})
    tls = fresh_server(tls_flags(certs, **{"--handshake-timeout-ms": "800"}))
    hello = client_hello(certs["ctx"])
    start = time.monotonic()
    a = socket.create_connection(("127.0.0.1", plain.port))
    a.sendall(b"GET /cortex/websocket HTTP/1.1\r\nHost: x\r\n")  # never finished
    b = socket.create_connection(("127.0.0.1", tls.port))
    b.sendall(hello[:20])
    t_plain, t_tls = (t - start for t in close_times([a, b]))
    assert 0.5 < t_plain < 2.0 and 0.5 < t_tls < 2.0, (t_plain, t_tls)
    assert abs(t_plain - t_tls) < 0.5, (t_plain, t_tls)


def test_plain_http_and_garbage_to_the_tls_port_fail_cleanly(fresh_server, certs):
    s = fresh_server(tls_flags(certs))
    ctx = certs["ctx"]
    # Plain HTTP: one plain 400 that names the scheme, then the close.
    sock = socket.create_connection(("127.0.0.1", s.port), timeout=5)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), data
    assert json.loads(body)["error"] == "tls_required"
    # A plain WebSocket client is refused the same way.
    sock = socket.create_connection(("127.0.0.1", s.port), timeout=5)
    sock.sendall(f"GET /cortex/websocket?api_key={s.admin_key} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                 "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 "Sec-WebSocket-Version: 13\r\n\r\n".encode())
    assert sock.recv(4096).startswith(b"HTTP/1.1 400")
    sock.close()
    # Garbage, and a TLS record header announcing more than it sends: closed.
    for junk in (b"\x01" + os.urandom(300), b"\x16\x03\x01\xff\xff" + os.urandom(100), b"\x00" * 10):
        sock = socket.create_connection(("127.0.0.1", s.port), timeout=5)
        sock.sendall(junk)
        closed_after(sock, 5 if junk[0] != 0x16 else 15)
        sock.close()
    # A client that does not trust the certificate gives up; the server goes on.
    with pytest.raises(ssl.SSLCertVerificationError):
        ssl.create_default_context().wrap_socket(socket.create_connection(("127.0.0.1", s.port)),
                                                 server_hostname="127.0.0.1")
    assert https(s, ctx, "GET", "/health")[0] == 200
    m = tls_metrics(s, ctx)
    assert m["synapse_tls_handshake_failures"] >= 4
    assert s.saw_log(lambda l: "TLS handshake failed" in l and "http request" in l)


def test_accept_gate_and_limits_apply_over_tls(fresh_server, certs):
    s = fresh_server(tls_flags(certs, **{"--ip-max-sockets": "3"}))
    ctx = certs["ctx"]
    held = [ctx.wrap_socket(socket.create_connection(("127.0.0.1", s.port)), server_hostname="127.0.0.1")
            for _ in range(3)]
    # The fourth socket from this address is closed at accept, before any TLS.
    extra = socket.create_connection(("127.0.0.1", s.port))
    closed_after(extra, 5)
    extra.close()
    wait_until(lambda: any("refused" in l and "at accept" in l for l in s.log_lines), what="refusal log")
    for h in held:
        h.close()

    def served():
        try:
            return https(s, ctx, "GET", "/health")[0] == 200
        except (ssl.SSLError, OSError):  # refused at accept until the server has seen the closes
            return False
    wait_until(served, timeout=5, what="served again")


# --- slow consumer --------------------------------------------------------------

@pytest.mark.asyncio
async def test_slow_consumer_over_tls_closed_4008_others_keep_receiving(fresh_server, certs):
    s = fresh_server(tls_flags(certs, **{"--outbound-queue-bytes": str(1 << 20)}))
    ctx = certs["ctx"]
    stalled, rest = tls_upgrade(s.port, ctx, f"/cortex/websocket?api_key={s.admin_key}", rcvbuf=4096)
    stalled.sendall(client_frame(1, json.dumps(["1", "1", "room:slow", "phx_join", {}]).encode()))

    healthy = await PhxClient.connect(wss(s), ssl=ctx)
    ok(await healthy.join("room:slow"))
    pub = await PhxClient.connect(wss(s), ssl=ctx)
    ok(await pub.join("room:slow"))
    await asyncio.sleep(0.2)
    rss_before = s.rss_kib()

    blob = "x" * 32_000
    peak = 0
    for i in range(200):  # ~6.4 MB, far past the 1 MiB bound
        await pub.send("room:slow", "m", {"i": i, "blob": blob})
        f = await healthy.push_event("room:slow", "m", timeout=10)
        assert f[4]["i"] == i
        if i % 25 == 0:
            peak = max(peak, s.rss_kib())
    wait_until(lambda: tls_metrics(s, ctx)['synapse_connections_closed_total{code="4008"}'] >= 1, timeout=10,
               what="the stalled client closed with 4008")
    peak = max(peak, s.rss_kib())
    # History holds 100 of these (~3.2 MB); the stalled queue at most 1 MiB
    # plus one 64 KiB TLS batch. (ASan's quarantine keeps freed memory.)
    if not UNDER_ASAN:
        assert peak - rss_before < 8_000, (rss_before, peak)

    frames, code = read_frames(stalled, rest, timeout=5)
    assert code in (4008, None)
    stalled.close()
    assert ok(await healthy.heartbeat()) == {}
    await pub.send("room:slow", "after", {})
    await healthy.push_event("room:slow", "after")
    await healthy.close()
    await pub.close()


# --- startup --------------------------------------------------------------------

def run_serve(*args, timeout=20):
    with tempfile.TemporaryDirectory() as d:
        return subprocess.run([binary(), "serve", "--bind", "127.0.0.1", "--port", str(free_port()),
                               "--data-dir", d, *args], capture_output=True, text=True, timeout=timeout)


def test_unusable_certificate_or_key_stops_the_start(tmp_path, certs):
    cert, key = certs["a"]
    other_key = certs["b"][1]
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    encrypted = tmp_path / "encrypted.key"
    subprocess.run(["openssl", "pkey", "-in", str(key), "-out", str(encrypted), "-aes256", "-passout", "pass:pw"],
                   check=True, capture_output=True)
    cases = [
        (["--tls-cert", str(tmp_path / "missing.crt"), "--tls-key", str(key)], "No such file"),
        (["--tls-cert", str(cert), "--tls-key", str(tmp_path / "missing.key")], "No such file"),
        (["--tls-cert", str(garbage), "--tls-key", str(key)], "cannot load the certificate"),
        (["--tls-cert", str(cert), "--tls-key", str(garbage)], "cannot load the private key"),
        (["--tls-cert", str(cert), "--tls-key", str(other_key)], "does not match"),
        (["--tls-cert", str(cert), "--tls-key", str(encrypted)], "cannot load the private key"),
    ]
    for args, why in cases:
        r = run_serve(*args)
        out = r.stdout + r.stderr
        assert r.returncode != 0, (args, out)
        assert "cannot serve TLS" in out and why in out, (args, out)
        assert "listening on" not in out
    # One without the other is a configuration error.
    for args in (["--tls-cert", str(cert)], ["--tls-key", str(key)]):
        r = run_serve(*args)
        assert r.returncode == 2, r
        assert "needs both server.tls_cert and server.tls_key" in r.stderr
