"""Heartbeat round trips of one WebSocket connection, measured in a process
of its own (so the test's event loop and its GIL cannot add to them).

    python3 heartbeat_prober.py PORT API_KEY SECONDS [GAP_MS]

Connects, prints "ready", then sends `phoenix heartbeat` frames one after
another (the next once the reply to the previous one came, `GAP_MS` apart,
default 2) for SECONDS, and prints one JSON line: a list of
[send time (time.monotonic(), the system's CLOCK_MONOTONIC), round trip ms].
Used by tests/integration/test_redis_stall.py."""
import json
import socket
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rawws import client_frame, http_upgrade  # noqa: E402


class Reader:
    def __init__(self, sock: socket.socket, buf: bytes):
        self.sock, self.buf = sock, buf

    def _parse(self):
        b = self.buf
        if len(b) < 2:
            return None
        n, off = b[1] & 0x7F, 2
        if n == 126:
            if len(b) < 4:
                return None
            n, off = struct.unpack("!H", b[2:4])[0], 4
        elif n == 127:
            if len(b) < 10:
                return None
            n, off = struct.unpack("!Q", b[2:10])[0], 10
        if len(b) < off + n:
            return None
        self.buf = b[off + n:]
        return b[0] & 0x0F, b[off:off + n]

    def frame(self) -> tuple[int, bytes]:
        while True:
            f = self._parse()
            if f:
                return f
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self.buf += chunk


def main() -> None:
    port, key, seconds = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    gap = (float(sys.argv[4]) if len(sys.argv) > 4 else 2.0) / 1000
    status, _, rest, sock = http_upgrade(port, f"/cortex/websocket?vsn=2.0.0&api_key={key}")
    assert status == 101, status
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(10)
    reader = Reader(sock, rest)
    print("ready", flush=True)
    samples, ref = [], 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        ref += 1
        want = str(ref)
        sent = time.monotonic()
        t0 = time.perf_counter()
        sock.sendall(client_frame(1, json.dumps([None, want, "phoenix", "heartbeat", {}]).encode()))
        while True:
            op, payload = reader.frame()
            if op != 1:
                continue
            f = json.loads(payload)
            if f[3] == "phx_reply" and f[1] == want:
                break
        samples.append([sent, (time.perf_counter() - t0) * 1000])
        time.sleep(gap)
    print(json.dumps(samples), flush=True)
    sock.close()


if __name__ == "__main__":
    main()
