"""io thread batches: an I/O thread takes ready connections from its epoll
set at most 256 at a time (IoThread::max_events). When more are ready at
once, the wait on the set is performed again at once, before the thread
sleeps on its next edge; were that step lost, the connections past the first
batch would get nothing until some other event woke the thread.

The server is stopped (SIGSTOP, a process this test started) while every
connection's heartbeat is written, so all of them are ready together when it
resumes: three full batches and a partial one."""
import os
import signal
import time

from rawws import FrameStream, client_frame, http_upgrade

CONNECTIONS = 900  # > 3 * 256: full batches, then a partial one


def test_every_connection_ready_at_once_is_answered_past_one_batch(fresh_server):
    s = fresh_server({"--threads": "1", "--ip-max-connections": "0", "--ip-max-sockets": "0",
                      "--ip-new-per-min": "0", "--key-max-connections": "0"})
    socks = []
    try:
        for _ in range(CONNECTIONS):
            status, _, rest, sock = http_upgrade(s.port, f"/cortex/websocket?vsn=2.0.0&api_key={s.admin_key}",
                                                 timeout=10)
            assert status == 101
            assert rest == b""
            socks.append(sock)
        os.kill(s.pid, signal.SIGSTOP)
        try:
            for i, sock in enumerate(socks):
                payload = f'[null,"hb-{i}","phoenix","heartbeat",{{}}]'.encode()
                sock.sendall(client_frame(0x1, payload))
        finally:
            os.kill(s.pid, signal.SIGCONT)
        deadline = time.monotonic() + 20
        for i, sock in enumerate(socks):
            stream = FrameStream(sock)
            frame = stream.next(timeout=max(0.1, deadline - time.monotonic()))
            assert frame is not None, f"connection {i} of {CONNECTIONS} got no reply"
            op, payload = frame
            assert op == 0x1, (i, op)
            assert payload.decode() == f'[null,"hb-{i}","phoenix","phx_reply",{{"status":"ok","response":{{}}}}]', i
    finally:
        for sock in socks:
            sock.close()
