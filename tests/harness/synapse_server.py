"""Start the real synapse binary for a test: a free port, a temporary data
directory, the admin key it prints on first start, and helpers to make keys.

Used by the integration suites (tests/integration) and the Python SDK tests.
The binary is $SYNAPSE_BIN, or build/release/synapse under the repository.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[2]

# Limits that would make ordinary tests flaky; a test that checks a limit
# passes its own value, which replaces these.
RELAXED = {
    "--messages-per-min": "0",
    "--queries-per-min": "0",
    "--ip-max-connections": "0",
    "--ip-new-per-min": "0",
    "--key-max-connections": "0",
    "--ip-max-sockets": "0",
    # Runs a test leaves going (detached ones live on for a minute) would hold
    # every stop() for the 30 s default drain; drain tests pass their own.
    "--drain-timeout-ms": "2000",
}


def binary() -> str:
    path = os.environ.get("SYNAPSE_BIN") or str(REPO / "build" / "release" / "synapse")
    if not os.path.exists(path):
        raise RuntimeError(f"synapse binary not found at {path}; run `make build` first")
    return path


def stop_process(proc: subprocess.Popen, sig: int, timeout: float) -> int:
    """Sends `sig` to `proc` (by its PID) unless it has exited, waits, and
    SIGKILLs it after `timeout` seconds; returns its exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def parse_metrics(text: str) -> dict:
    """Prometheus exposition text as {name{labels}: value}."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SynapseServer:
    """One server process. Use as a context manager or call start()/stop()."""

    def __init__(self, *, flags: Optional[dict] = None, relaxed: bool = True,
                 data_dir: Optional[str] = None, port: Optional[int] = None,
                 nofile: Optional[int] = None):
        self.flags = dict(RELAXED) if relaxed else {}
        self.flags.update(flags or {})
        self._own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="synapse-test-")
        self.port = port or 0
        self.nofile = nofile  # RLIMIT_NOFILE for the process (soft = hard), or inherited
        self.proc: Optional[subprocess.Popen] = None
        self.admin_key: Optional[str] = None
        self.log_lines: list[str] = []
        self._listening = threading.Event()

    # -- lifecycle -----------------------------------------------------------
    def start(self, timeout: float = 10.0) -> "SynapseServer":
        if self.port == 0:
            self.port = free_port()
        args = [binary(), "serve", "--bind", "127.0.0.1", "--port", str(self.port),
                "--data-dir", self.data_dir]
        for k, v in self.flags.items():
            args += [k, str(v)]
        self._listening.clear()
        preexec = None
        if self.nofile:
            import resource
            n = self.nofile
            preexec = lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))  # noqa: E731
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     preexec_fn=preexec)
        self._pump_thread = threading.Thread(target=self._pump, args=(self.proc,), daemon=True)
        self._pump_thread.start()
        if not self._listening.wait(timeout):
            self.stop()
            raise RuntimeError("synapse did not start:\n" + "\n".join(self.log_lines[-30:]))
        return self

    def _pump(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            self.log_lines.append(line)
            if line.startswith("syn_") and self.admin_key is None:
                self.admin_key = line.strip()
            if line.startswith("listening on "):
                self._listening.set()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> Optional[int]:
        """Stops the server; returns its exit code."""
        if not self.proc:
            return None
        proc, self.proc = self.proc, None
        stop_process(proc, sig, timeout)
        # Let the reader collect the last lines (a sanitizer report comes at exit).
        self._pump_thread.join(timeout=5)
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL: the crash case."""
        self.stop(signal.SIGKILL)

    def restart(self) -> "SynapseServer":
        """Starts again on the same port and data directory."""
        return self.start()

    SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                       "WARNING: ThreadSanitizer")

    def sanitizer_reports(self) -> list[str]:
        """Lines of ASan/LSan/UBSan reports the process printed (the ASan
        build prints them to stderr, which is collected with stdout)."""
        return [l for l in self.log_lines if any(m in l for m in self.SANITIZER_MARKS)]

    def cleanup(self) -> None:
        """Stops the server, removes its data, and fails if a sanitizer spoke."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        reports = self.sanitizer_reports()
        if reports:
            raise AssertionError("sanitizer report from synapse:\n" + "\n".join(self.log_lines[-80:]))

    def __enter__(self) -> "SynapseServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()

    @property
    def pid(self) -> int:
        assert self.proc
        return self.proc.pid

    # -- addresses -----------------------------------------------------------
    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/cortex/websocket"

    def ws(self, key: Optional[str] = None, token: Optional[str] = None, extra: str = "") -> str:
        q = "vsn=2.0.0"
        if token:
            q += f"&token={token}"
        elif key or self.admin_key:
            q += f"&api_key={key or self.admin_key}"
        return f"{self.ws_url}?{q}{extra}"

    # -- keys and HTTP -------------------------------------------------------
    def create_key(self, name: str, *extra: str) -> str:
        """`synapse keys create`; returns the key (the last line of stdout)."""
        out = subprocess.run([binary(), "keys", "create", "--name", name, "--data-dir", self.data_dir, *extra],
                             check=True, capture_output=True, text=True).stdout
        return out.strip().splitlines()[-1]

    def keys_cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([binary(), "keys", *args, "--data-dir", self.data_dir], capture_output=True, text=True)

    def http(self, method: str, path: str, body=None, key: Optional[str] = None, headers=None):
        """Returns (status, headers, parsed JSON or text)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.http_url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if key:
            req.add_header("Authorization", f"Bearer {key}")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                status, hdrs, raw = r.status, dict(r.headers), r.read().decode()
        except urllib.error.HTTPError as e:
            status, hdrs, raw = e.code, dict(e.headers), e.read().decode()
        try:
            return status, hdrs, json.loads(raw)
        except ValueError:
            return status, hdrs, raw

    def token(self, key: Optional[str] = None, **body) -> str:
        status, _, r = self.http("POST", "/api/token", body, key=key or self.admin_key)
        if status != 200:
            raise RuntimeError(f"/api/token answered {status}: {r}")
        return r["token"]

    def metrics(self) -> dict:
        """Prometheus samples as {name{labels}: value}."""
        _, _, text = self.http("GET", "/metrics")
        return parse_metrics(text)

    def saw_log(self, pred, timeout: float = 5.0) -> bool:
        """Whether a log line matching `pred` arrives within `timeout`: the
        server logs before it answers, but its output is read by a thread of
        ours, so a line can come in after the answer it went with."""
        deadline = time.monotonic() + timeout
        while True:
            if any(pred(l) for l in list(self.log_lines)):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    def rss_kib(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS")


def wait_until(pred, timeout: float = 5.0, interval: float = 0.02, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
