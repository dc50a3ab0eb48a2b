"""Raw HTTP/WebSocket helpers for tests that must see exactly what goes over
the wire: refused upgrades with their JSON bodies, hand-made frames, abrupt
drops. Also HS256 token minting from the server's own secret file."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import socket
import struct
import time
from pathlib import Path
from typing import Optional

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def http_upgrade(port: int, target: str, headers: Optional[dict] = None, timeout: float = 5.0,
                 source_ip: Optional[str] = None):
    """Sends an upgrade request (from `source_ip`, a loopback address, if
    given); returns (status, headers, body, socket). On 101 the socket stays
    open for frames; otherwise it is closed."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                 source_address=(source_ip, 0) if source_ip else None)
    key = base64.b64encode(os.urandom(16)).decode()
    h = {"Host": f"127.0.0.1:{port}", "Upgrade": "websocket", "Connection": "Upgrade",
         "Sec-WebSocket-Key": key, "Sec-WebSocket-Version": "13"}
    h.update(headers or {})
    req = f"GET {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items() if v is not None) + "\r\n"
    s.sendall(req.encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    hdrs = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    if status == 101:
        expected = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
        assert hdrs.get("sec-websocket-accept") == expected, hdrs
        return status, hdrs, rest, s
    length = int(hdrs.get("content-length", "0"))
    while len(rest) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        rest += chunk
    s.close()
    try:
        body = json.loads(rest.decode())
    except ValueError:
        body = rest.decode(errors="replace")
    return status, hdrs, body, None


def client_frame(opcode: int, payload: bytes, fin: bool = True, mask: bool = True, length: Optional[int] = None) -> bytes:
    """A client frame; `length` may lie about the payload size."""
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | opcode
    mbit = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", b0, mbit | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    masked = bytes(c ^ key[i % 4] for i, c in enumerate(payload))
    return head + key + masked


def read_frames(sock: socket.socket, buf: bytes = b"", timeout: float = 5.0, until_close: bool = True):
    """Reads server frames until a close frame (or EOF); returns
    ([(opcode, payload)], close_code or None)."""
    sock.settimeout(timeout)
    frames = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        while len(buf) >= 2:
            b0, b1 = buf[0], buf[1]
            n = b1 & 0x7F
            off = 2
            if n == 126:
                if len(buf) < 4:
                    break
                n = struct.unpack("!H", buf[2:4])[0]
                off = 4
            elif n == 127:
                if len(buf) < 10:
                    break
                n = struct.unpack("!Q", buf[2:10])[0]
                off = 10
            if len(buf) < off + n:
                break
            op, payload = b0 & 0x0F, buf[off:off + n]
            buf = buf[off + n:]
            frames.append((op, payload))
            if op == 8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                return frames, code
            if not until_close:
                return frames, None
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            return frames, None
        if not chunk:
            return frames, None
        buf += chunk
    return frames, None


# --- tokens ------------------------------------------------------------------

def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(header: dict, claims: dict, secret: bytes) -> str:
    h = b64url(json.dumps(header, separators=(",", ":")).encode())
    p = b64url(json.dumps(claims, separators=(",", ":")).encode())
    sig = hmac.new(secret, f"{h}.{p}".encode(), hashlib.sha256).digest()
    return f"{h}.{p}.{b64url(sig)}"


def server_secret(data_dir: str) -> bytes:
    return Path(data_dir, "jwt.secret").read_text().strip().encode()


def token_for(data_dir: str, sub: str, ttl: int = 3600, **extra) -> str:
    now = int(time.time())
    return sign({"alg": "HS256", "typ": "JWT"}, {"sub": sub, "iat": now, "exp": now + ttl, **extra},
                server_secret(data_dir))


class FrameStream:
    """Reads server frames from a raw socket one at a time, keeping whatever
    arrived beyond the current frame."""

    def __init__(self, sock: socket.socket, initial: bytes = b""):
        self.sock = sock
        self.buf = initial

    def next(self, timeout: float = 5.0):
        """(opcode, payload), or None on EOF/reset/timeout."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self._parse()
            if frame:
                return frame
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except (socket.timeout, ConnectionResetError):
                return None
            if not chunk:
                return None
            self.buf += chunk

    def _parse(self):
        buf = self.buf
        if len(buf) < 2:
            return None
        n, off = buf[1] & 0x7F, 2
        if n == 126:
            if len(buf) < 4:
                return None
            n, off = struct.unpack("!H", buf[2:4])[0], 4
        elif n == 127:
            if len(buf) < 10:
                return None
            n, off = struct.unpack("!Q", buf[2:10])[0], 10
        if len(buf) < off + n:
            return None
        self.buf = buf[off + n:]
        return buf[0] & 0x0F, buf[off:off + n]

    def texts_until(self, pred, timeout: float = 5.0):
        """Decoded text frames up to and including the first matching `pred`;
        raises on close or timeout."""
        out = []
        deadline = time.monotonic() + timeout
        while True:
            f = self.next(max(0.0, deadline - time.monotonic()))
            if f is None:
                raise AssertionError(f"no matching frame; got {out[-5:]}")
            op, payload = f
            if op == 8:
                raise AssertionError(f"closed with {payload[:2].hex()} after {out[-5:]}")
            if op == 1:
                t = json.loads(payload)
                out.append(t)
                if pred(t):
                    return out
