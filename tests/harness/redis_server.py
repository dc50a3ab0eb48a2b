"""Start a private redis-server for a test: a free loopback port, no
persistence (nothing is written to disk), and helpers to kill it and start it
again on the same port (the "Redis restarted under a running cluster" case).

Used by the cluster suite (tests/integration/test_cluster.py). The binary is
$REDIS_SERVER_BIN, or /usr/bin/redis-server (Debian's `redis-server`
package, which does not start a server of its own).

    with RedisServer() as redis:
        node = SynapseServer(flags={"--redis": redis.url()}).start()
        ...
        redis.kill()      # SIGKILL: clients see their connection drop
        redis.restart()   # same port, empty data set
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from typing import Optional

from synapse_server import free_port, stop_process


def binary() -> str:
    path = os.environ.get("REDIS_SERVER_BIN") or "/usr/bin/redis-server"
    if not os.path.exists(path):
        raise RuntimeError(f"redis-server not found at {path}; install the Debian package `redis-server`")
    return path


class RedisError(Exception):
    """An error reply (`-ERR ...`) from Redis."""


class RedisServer:
    """One redis-server process. Use as a context manager or call start()/stop().

    The port is chosen at the first start() and kept by restart(), so clients
    configured with url() reach the new process."""

    def __init__(self, *, port: Optional[int] = None):
        self.port = port or 0
        self.proc: Optional[subprocess.Popen] = None
        self.log_lines: list[str] = []
        # Redis writes nothing with these flags, but give it a directory of
        # its own anyway rather than the test's working directory.
        self.dir = tempfile.mkdtemp(prefix="redis-test-")

    # -- lifecycle -----------------------------------------------------------
    def start(self, timeout: float = 10.0) -> "RedisServer":
        """Starts redis-server and waits until it answers PING."""
        if self.proc is not None:
            raise RuntimeError("redis-server already running")
        if self.port == 0:
            self.port = free_port()
        args = [binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", self.dir, "--daemonize", "no", "--logfile", ""]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._pump_thread = threading.Thread(target=self._pump, args=(self.proc,), daemon=True)
        self._pump_thread.start()
        deadline = time.monotonic() + timeout
        while not self.ping():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}:\n"
                                   + "\n".join(self.log_lines[-20:]))
            time.sleep(0.02)
        return self

    def _pump(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.log_lines.append(line.rstrip("\n"))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> Optional[int]:
        """Stops the server (by its PID); returns its exit code. The port is kept."""
        if not self.proc:
            return None
        proc, self.proc = self.proc, None
        stop_process(proc, sig, timeout)
        self._pump_thread.join(timeout=5)
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL: Redis vanishes without a goodbye, its data with it."""
        self.stop(signal.SIGKILL)

    def restart(self, timeout: float = 10.0) -> "RedisServer":
        """Starts a new, empty server on the same port (stopping the old one
        first if it still runs)."""
        self.stop()
        return self.start(timeout)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()

    @property
    def pid(self) -> int:
        assert self.proc
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- addresses -----------------------------------------------------------
    def url(self, db: Optional[int] = None) -> str:
        """redis://127.0.0.1:PORT, or redis://127.0.0.1:PORT/DB."""
        return f"redis://127.0.0.1:{self.port}" + (f"/{db}" if db is not None else "")

    # -- talking to it -------------------------------------------------------
    def command(self, *args, timeout: float = 2.0):
        """Sends one command over a fresh connection and returns the reply:
        str for simple strings, int, bytes (or None) for bulk strings, list for
        arrays; an error reply raises RedisError."""
        payload = f"*{len(args)}\r\n".encode()
        for a in args:
            b = a if isinstance(a, bytes) else str(a).encode()
            payload += f"${len(b)}\r\n".encode() + b + b"\r\n"
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            s.sendall(payload)
            return _Reader(s).reply()

    def ping(self) -> bool:
        """True when the server answers PING with PONG."""
        try:
            return self.command("PING", timeout=0.5) == "PONG"
        except (OSError, RedisError, ValueError):
            return False


class _Reader:
    """Just enough RESP2 to read one reply."""

    def __init__(self, sock: socket.socket):
        self.sock, self.buf = sock, b""

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._more()
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def _more(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ValueError("connection closed mid-reply")
        self.buf += chunk

    def reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RedisError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                self._more()
            data, self.buf = self.buf[:n], self.buf[n + 2:]
            return data
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.reply() for _ in range(n)]
        raise ValueError(f"unexpected RESP reply {line!r}")
