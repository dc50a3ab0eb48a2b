"""A real streaming HTTP agent backend for the tests of `backend = "http"`
(docs/protocol.md section 10, "HTTP backends"): a ThreadingHTTPServer on
127.0.0.1 that takes Synapse's POST of a `run` and answers in chunked
transfer coding, one worker event a line.

The mode is the first word of the run's `q`:
  ndjson     thought, 3 tokens, result as NDJSON, a pause between events
  sse        the same as server-sent events (`event:` + `data:`, comments)
  hang       one token, then nothing until the client closes the request;
             the close is recorded (`closed_at`) so a test sees interrupt
             closing it
  500        HTTP 500 with a JSON body
  truncated  one token, then the stream ends without result or error
  echo       result {"run": <the POSTed body>}

Runs standalone too: `python3 agent_http_backend.py --port 8787` serves
until interrupted (examples and manual tries against `make run`).
"""
from __future__ import annotations

import argparse
import json
import select
import threading
import time
import http.server

PAUSE_S = 0.03  # between events: the client must see them one by one
HANG_LIMIT_S = 15.0  # a hanging answer gives up by itself after this long


class AgentHttpBackend:
    def __init__(self, port: int = 0):
        self.runs: list[dict] = []  # every POSTed run body, in order
        self.headers: list[dict] = []  # their request headers (lower-case names)
        self.sent: dict[str, list[tuple[float, str]]] = {}  # run_id -> [(time, event)] as written
        self.closed_at: dict[str, float] = {}  # run_id -> when a hanging answer saw the client close
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                run = json.loads(raw)
                with outer.lock:
                    outer.runs.append(run)
                    outer.headers.append({k.lower(): v for k, v in self.headers.items()})
                mode = (run.get("q") or "echo").split()[0]
                try:
                    outer.answer(self, mode, run, raw)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client closed the request
                self.close_connection = True

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def url(self, path: str = "/agent") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- answers -------------------------------------------------------------
    def _record(self, run_id: str, event: str) -> None:
        with self.lock:
            self.sent.setdefault(run_id, []).append((time.time(), event))

    @staticmethod
    def _chunk(h, data: bytes) -> None:
        h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        h.wfile.flush()

    def _start(self, h, content_type: str, status: int = 200) -> None:
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Transfer-Encoding", "chunked")
        h.send_header("Cache-Control", "no-cache")
        h.end_headers()
        h.wfile.flush()

    # Each event is recorded just before it is written: a client that saw an
    # event before the time recorded for a later one saw it before that one
    # was even sent.
    def _ndjson(self, h, run_id: str, obj: dict) -> None:
        self._record(run_id, obj["event"])
        self._chunk(h, json.dumps(obj).encode() + b"\n")

    def _sse(self, h, run_id: str, obj: dict) -> None:
        name = obj.pop("event")
        self._record(run_id, name)
        self._chunk(h, f"event: {name}\ndata: {json.dumps(obj)}\n\n".encode())

    def script(self, run: dict) -> list[dict]:
        q = run.get("q", "")
        return [{"event": "thought", "thought": f"reading {q!r}"}] + \
               [{"event": "token", "text": f"tok{i} "} for i in range(3)] + \
               [{"event": "result", "data": {"answer": q, "by": "http"}}]

    def answer(self, h, mode: str, run: dict, raw: bytes) -> None:
        rid = run["run_id"]
        if mode == "500":
            body = b'{"error":"boom"}'
            h.send_response(500)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
            return
        if mode == "sse":
            self._start(h, "text/event-stream")
            self._chunk(h, b": connected\n\n")
            for obj in self.script(run):
                time.sleep(PAUSE_S)
                self._sse(h, rid, obj)
        elif mode == "hang":
            self._start(h, "application/x-ndjson")
            self._ndjson(h, rid, {"event": "token", "text": "waiting "})
            self._wait_for_close(h, rid)
            return
        elif mode == "truncated":
            self._start(h, "application/x-ndjson")
            self._ndjson(h, rid, {"event": "token", "text": "and then "})
        elif mode == "ndjson":
            self._start(h, "application/x-ndjson")
            for obj in self.script(run):
                time.sleep(PAUSE_S)
                self._ndjson(h, rid, obj)
        else:  # echo
            self._start(h, "application/x-ndjson")
            self._ndjson(h, rid, {"event": "result", "data": {"run": json.loads(raw)}})
        h.wfile.write(b"0\r\n\r\n")
        h.wfile.flush()

    def _wait_for_close(self, h, rid: str) -> None:
        """Blocks until the client closes the connection (EOF), bounded."""
        sock = h.connection
        end = time.time() + HANG_LIMIT_S
        while time.time() < end:
            r, _, _ = select.select([sock], [], [], 0.01)
            if r:
                try:
                    data = sock.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    with self.lock:
                        self.closed_at[rid] = time.time()
                    return


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=8787)
    args = ap.parse_args()
    b = AgentHttpBackend(args.port)
    print(f"agent backend on {b.url()}", flush=True)
    try:
        b.thread.join()
    except KeyboardInterrupt:
        b.close()


if __name__ == "__main__":
    main()
