"""A real application backend for hook tests: an http.server on 127.0.0.1
whose answer per hook is set by the test (a dict, raw bytes, a status, or a
delay that outlasts the server's timeout)."""
from __future__ import annotations

import http.server
import json
import threading
import time


class HookBackend:
    def __init__(self):
        self.answers: dict[str, object] = {}  # hook -> dict | bytes | callable(body) -> dict
        self.status: dict[str, int] = {}
        self.delay: dict[str, float] = {}
        self.calls: list[dict] = []
        self.headers: list[dict] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                body = json.loads(raw)
                outer.calls.append(body)
                outer.headers.append({k.lower(): v for k, v in self.headers.items()} | {"_raw": raw})
                hook = body["hook"]
                if outer.delay.get(hook):
                    time.sleep(outer.delay[hook])
                answer = outer.answers.get(hook, {"allow": True})
                if callable(answer):
                    answer = answer(body)
                data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
                try:
                    self.send_response(outer.status.get(hook, 200))
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the server gave up (timeout) and closed

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, hook: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/hooks/{hook}"

    def of(self, hook: str) -> list[dict]:
        return [c for c in self.calls if c["hook"] == hook]

    def reset(self):
        self.answers.clear()
        self.status.clear()
        self.delay.clear()
        self.calls.clear()
        self.headers.clear()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
