"""validation: the hostile-input corpus (tests/corpus/hostile.json) sent
through every event of every topic. Each input gets the documented error or
is kept as literal data; the server stays up, a well-behaved client is served
throughout, and the database is intact afterwards."""
import asyncio
import base64
import json
import re
import sqlite3
import time
import urllib.parse

import pytest
import pytest_asyncio

from phx import PhxClient, error, ok
from rawws import FrameStream, client_frame, http_upgrade, read_frames
from synapse_server import REPO, SynapseServer

CORPUS = json.loads((REPO / "tests" / "corpus" / "hostile.json").read_text())
STRING_CATEGORIES = ["sql_injection", "xss", "path_traversal", "command_injection", "format_strings",
                     "unicode_oddities"]
TOPIC_RE = re.compile(r"^[A-Za-z0-9_\-.:@]+$")
CORTEX = "cortex:admin"
SEED = ["seed memory alpha", "seed memory beta", "seed shared gamma"]


def valid_topic(t: str) -> bool:
    b = t.encode()
    return 0 < len(b) <= 255 and TOPIC_RE.match(t) is not None and ":" in t.strip(":") and \
        not t.startswith(":") and not t.endswith(":")


def valid_event(e: str) -> bool:
    return 0 < len(e.encode()) <= 64 and not any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in e)


def has_control(s) -> bool:
    """A C0 control character or DEL (in a str or bytes): what a request
    target may not decode to."""
    codes = s if isinstance(s, bytes) else map(ord, s)
    return any(c < 0x20 or c == 0x7F for c in codes)


def reserved(e: str) -> bool:
    return e.startswith("phx_") or e.startswith("presence_") or e.startswith("_")


def chars(s: str) -> int:
    return len(s)  # Python str length is code points, as the server counts


@pytest.fixture(scope="module")
def vserver():
    # The malformed-frame budget (1008) is tested in error_handling; here the
    # attacker sends hundreds of malformed frames on purpose.
    with SynapseServer(flags={"--max-topics": "0", "--malformed-limit": "0"}) as s:
        yield s


class World:
    """The clients of one run: an attacker, a witness on the same topics, and
    a bystander that must be served throughout."""

    async def start(self, s):
        self.s = s
        self.attacker = await PhxClient.connect(s.ws())
        self.witness = await PhxClient.connect(s.ws())
        self.bystander = await PhxClient.connect(s.ws())
        self.by_peer = await PhxClient.connect(s.ws())
        for c in (self.attacker, self.witness):
            ok(await c.join("room:hostile"))
        ok(await self.attacker.join(CORTEX))
        for c in (self.bystander, self.by_peer):
            ok(await c.join("room:calm"))
        ok(await self.bystander.join(CORTEX))
        self.seed_ids = []
        for content in SEED:
            self.seed_ids.append(await self.tool_data(self.bystander, "memory.store",
                                                      {"content": content, "scope": "shared"})["id"]
                                 if False else (await self.store(self.bystander, content)))
        return self

    async def store(self, c, content):
        end = await self.run(c, "tool", {"tool": "memory.store", "args": {"content": content}})
        assert end[3] == "result", end
        return end[4]["data"]["id"]

    async def run(self, c, event, payload, timeout=10):
        """A cortex request; returns the terminal push (or the error reply)."""
        r = await c.request(CORTEX, event, payload)
        if r["status"] != "ok":
            return ["reply", None, CORTEX, "error_reply", r["response"]]
        ref = r["response"]["ref"]
        while True:
            f = await c.expect(lambda f: f[2] == CORTEX and f[1] is None and f[4].get("ref") == ref, timeout)
            if f[3] in ("result", "error", "interrupted"):
                return f

    async def still_serving(self):
        """The bystander's round trip: heartbeat, publish and delivery, ping."""
        assert ok(await self.bystander.heartbeat()) == {}
        marker = time.monotonic_ns()
        ok(await self.bystander.request("room:calm", "check", {"m": marker}))
        got = await self.by_peer.push_event("room:calm", "check", pred=lambda f: f[4]["m"] == marker)
        assert got[4]["_meta"]["from"] == "admin"
        assert ok(await self.bystander.request(CORTEX, "ping", {}))["pong"] > 0

    async def close(self):
        for c in (self.attacker, self.witness, self.bystander, self.by_peer):
            await c.close()


@pytest_asyncio.fixture
async def world(vserver):
    w = await World().start(vserver)
    yield w
    await w.still_serving()
    await w.close()
    db_intact(vserver)


def db_intact(s):
    db = sqlite3.connect(f"{s.data_dir}/synapse.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type IN ('table','view')")}
        assert {"api_keys", "memories", "memories_fts"} <= tables
        rows = [r[0] for r in db.execute("SELECT content FROM memories WHERE content LIKE 'seed %'")]
        assert sorted(set(rows)) == sorted(SEED)
        assert db.execute("SELECT COUNT(*) FROM api_keys WHERE revoked_at IS NULL").fetchone()[0] >= 1
    finally:
        db.close()


async def pubsub_strings(w: World, s: str):
    a, wit = w.attacker, w.witness
    # As a topic name.
    topic = "room:" + s
    r = await a.join(topic)
    if valid_topic(topic):
        ok(r)
        ok(await a.request(topic, "phx_leave"))
    else:
        error(r, "invalid_topic")
    # As an event name on a joined topic.
    r = await a.request("room:hostile", s, {"k": 1})
    if reserved(s):
        error(r, "reserved_event")
    elif not valid_event(s):
        error(r, "invalid_payload")
    else:
        ok(r)
        got = await wit.push_event("room:hostile", s)
        assert got[4]["k"] == 1
    # As payload keys and values: delivered byte for byte.
    body = {"v": s, "list": [s, {"nested": s}]}
    if s not in ("_meta",):
        body[s] = "key"
    r = await a.request("room:hostile", "data", body)
    if "_meta" in body:
        error(r, "invalid_payload")
    else:
        offset = ok(r)["offset"]
        got = await wit.push_event("room:hostile", "data", pred=lambda f: f[4]["_meta"]["offset"] == offset)
        assert {k: v for k, v in got[4].items() if k != "_meta"} == body
    # As refs: echoed unchanged.
    ref = await a.send("room:hostile", "refd", {}, ref=s)
    reply = await a.expect(lambda f: f[3] == "phx_reply" and f[1] == s, what="reply with hostile ref")
    assert reply[4]["status"] == "ok" and reply[1] == ref
    await wit.push_event("room:hostile", "refd")
    # As presence meta, and as a recover epoch.
    r = await a.join("room:hostile-meta", {"presence": True, "meta": {"note": s, s: 1}})
    if "\x00" in s:
        error(r, "invalid_payload")
    else:
        ok(r)
        ok(await a.request("room:hostile-meta", "phx_leave"))
    r = ok(await a.join("room:hostile-rec", {"recover": {"offset": 0, "epoch": s}}))
    assert r["recovered"] is False
    ok(await a.request("room:hostile-rec", "phx_leave"))


async def cortex_strings(w: World, s: str):
    a = w.attacker
    # As a query.
    end = await w.run(a, "query", {"q": s})
    if s == "":
        assert end[4]["reason"] == "invalid_payload"
    else:
        assert end[3] == "result", end
        assert end[4]["data"]["query"] == s
    # As memory content and tag: stored literally, found literally.
    args = {"content": "hostile: " + s, "tags": [s[:64] or "t"]}
    end = await w.run(a, "tool", {"tool": "memory.store", "args": args})
    if "\x00" in s:
        assert end[4]["reason"] == "invalid_args", end
    else:
        assert end[3] == "result", end
        mid = end[4]["data"]["id"]
        found = await w.run(a, "tool", {"tool": "memory.search", "args": {"query": s or "x", "limit": 100}})
        assert found[3] == "result", found
        if s.strip():
            hits = [r for r in found[4]["data"]["results"] if r["id"] == mid]
            assert hits and hits[0]["content"] == "hostile: " + s, (s, found[4]["data"]["results"][:3])
    # As a tool name, an interrupt ref and reason.
    r = await a.request(CORTEX, "tool", {"tool": s, "args": {}})
    error(r, "unknown_tool")
    r = await a.request(CORTEX, "interrupt", {"ref": s or "x", "reason": s[:200]})
    error(r, "not_found")


def http_strings(s_server, s: str):
    key = s_server.admin_key
    status, _, body = s_server.http("POST", "/api/token", {"agent_id": s}, key=key)
    if s and "\x00" not in s and len(s.encode()) <= 255:
        assert status == 200 and body["token"].count(".") == 2
    else:
        assert status == 400 and body["error"] == "invalid_payload"
    status, _, body = s_server.http("POST", "/api/broadcast", {"topic": "room:" + s, "event": "e", "payload": {"v": s}},
                                    key=key)
    if valid_topic("room:" + s):
        assert status == 200
    else:
        assert (status, body["error"]) == (400, "invalid_topic")
    # The request target is percent-decoded; a control character in it (NUL
    # included) makes it malformed: 400 bad_request before any credential is
    # read (net/request_target.cpp). Anything else is a credential that
    # names no key and no valid token: 401. As a path it names no route: 404.
    q = urllib.parse.quote(s, safe="")
    bad_target = has_control(s)
    status, _, body, sock = http_upgrade(s_server.port, f"/cortex/websocket?api_key={q}")
    assert status == (400 if bad_target else 401), (s, status)
    status, _, body, sock = http_upgrade(s_server.port, f"/cortex/websocket?token={q}")
    assert status == (400 if bad_target else 401), (s, status)
    status, _, body = s_server.http("GET", "/" + q)
    assert status == (400 if bad_target else 404), (s, status)


@pytest.mark.asyncio
@pytest.mark.parametrize("category", STRING_CATEGORIES)
async def test_string_category_through_every_event(vserver, world, category):
    for s in CORPUS[category]:
        await pubsub_strings(world, s)
        await cortex_strings(world, s)
        http_strings(vserver, s)
    await world.still_serving()


def splice(template: str, raw: str) -> str:
    return template.replace("@N@", raw)


@pytest.mark.asyncio
async def test_huge_and_odd_numbers_in_every_numeric_field(vserver, world):
    a, wit = world.attacker, world.witness
    fields = [
        ("query.timeout_ms", f'[null,"@R@","{CORTEX}","query",{{"q":"numbers","timeout_ms":@N@}}]'),
        ("query.limit", f'[null,"@R@","{CORTEX}","query",{{"q":"numbers","limit":@N@}}]'),
        ("memory.store.importance", f'[null,"@R@","{CORTEX}","tool",{{"tool":"memory.store","args":{{"content":"n","importance":@N@}}}}]'),
        ("countdown.steps", f'[null,"@R@","{CORTEX}","tool",{{"tool":"demo.countdown","args":{{"steps":@N@,"interval_ms":0}},"timeout_ms":5000}}]'),
        ("recover.offset", '["@R@","@R@","room:num","phx_join",{"recover":{"offset":@N@,"epoch":"e"}}]'),
        ("publish.value", '[null,"@R@","room:hostile","num",{"v":@N@}]'),
    ]
    n = 0
    for entry in CORPUS["huge_and_odd_numbers"]:
        raw = entry["json"]
        def not_json(constant):
            raise ValueError(constant)  # Python would accept NaN and Infinity

        try:
            parsed = json.loads(raw, parse_constant=not_json)
            is_json = True
        except ValueError:
            is_json = False
        # A number past the range of a double (1e309, a 401-digit integer)
        # has no faithful value on the server: refused as malformed.
        overflow = is_json and isinstance(parsed, (int, float)) and not isinstance(parsed, bool) and \
            (parsed in (float("inf"), float("-inf")) or abs(parsed) > 1.7976931348623157e308)
        for name, template in fields:
            n += 1
            ref = f"n{n}"
            await a.send_raw(splice(template, raw).replace("@R@", ref))
            if not is_json or overflow:
                f = await a.push_event("phoenix", "phx_error")
                assert f[4]["reason"] == "malformed_frame", (raw, name)
                continue
            reply = await a.reply(ref)
            if reply["status"] == "error":
                # A tool's arguments are checked against its schema
                # (invalid_args); every other field by the channel (invalid_payload).
                expected = "invalid_args" if name in ("memory.store.importance", "countdown.steps") \
                    else "invalid_payload"
                assert reply["response"]["reason"] == expected, (raw, name, reply)
                continue
            if name == "publish.value":
                got = await wit.push_event("room:hostile", "num", pred=lambda f: f[4]["_meta"]["offset"] == reply["response"]["offset"])
                # The payload is relayed as the client wrote it: every number
                # arrives exactly as sent, however large or precise.
                assert got[4]["v"] == parsed and type(got[4]["v"]) == type(parsed), (raw, got[4]["v"])
            elif name == "recover.offset":
                assert reply["response"]["recovered"] is False
                ok(await a.request("room:num", "phx_leave"))
            else:
                # Accepted by the cortex: it runs to one terminal event.
                r = reply["response"]["ref"]
                while True:
                    f = await a.expect(lambda f: f[2] == CORTEX and f[1] is None and f[4].get("ref") == r, 10)
                    if f[3] in ("result", "error", "interrupted"):
                        if name == "query.timeout_ms" and parsed == 1:
                            # A 1 ms timeout races the query itself: either
                            # end is right, and it is the only racy case.
                            assert f[3] == "result" or f[4]["reason"] == "timeout", (raw, name, f)
                        else:
                            # Every accepted value is a small valid one: the
                            # run succeeds (countdown.steps accepts 1..10000
                            # with interval 0, well within its 5 s).
                            assert f[3] == "result", (raw, name, f)
                        break
        if n % 60 == 0:
            await world.still_serving()


def nest(depth: int, shape: str) -> str:
    """The payload text such that the whole frame reaches `depth`."""
    inner = depth - 2  # frame array = 1, payload object = 2
    if shape == "object":
        return '{"a":' * inner + "{}" + "}" * inner if inner > 0 else "{}"
    if shape in ("array", "array_unclosed"):
        body = "[" * inner + ("]" * inner if shape == "array" else "")
        return '{"a":' + body + "}" if inner > 0 else "{}"
    if shape == "mixed":
        out, close = "", ""
        for i in range(inner):
            if i % 2 == 0:
                out += "["
                close = "]" + close
            else:
                out += '{"a":'
                close = "}" + close
        return '{"a":' + out + "0" + close + "}" if inner > 0 else "{}"
    if shape == "string_brackets":
        return '{"a":"' + "[" * depth + '"}'
    raise AssertionError(shape)


@pytest.mark.asyncio
async def test_deep_nesting(vserver, world):
    a = world.attacker
    for i, e in enumerate(CORPUS["deep_nesting"]):
        ref = f"d{i}"
        shape, depth, expect = e["shape"], e["depth"], e["expect"]
        if shape == "object_in_meta":
            frame = f'["{ref}","{ref}","room:deep{i}","phx_join",{{"meta":{nest(depth - 1, "object")}}}]'
        elif shape == "object_in_args":
            frame = f'[null,"{ref}","{CORTEX}","tool",{{"tool":"memory.stats","args":{nest(depth - 1, "object")}}}]'
        else:
            frame = f'[null,"{ref}","room:hostile","deep",{nest(depth, shape)}]'
        await a.send_raw(frame)
        if expect == "malformed_frame":
            f = await a.push_event("phoenix", "phx_error", timeout=10)
            assert f[4]["reason"] == "malformed_frame", e
        else:
            r = await a.reply(ref, timeout=10)
            if expect == "ok":
                assert r["status"] == "ok", (e, r)
            else:
                assert r["status"] == "error" and r["response"]["reason"] == expect, (e, r)
        if i % 5 == 4:
            await world.still_serving()
    # Malformed frames count toward the 1008 budget; the attacker is done.


@pytest.mark.asyncio
async def test_invalid_utf8_everywhere(vserver, world):
    """Invalid UTF-8 in a text frame fails the connection with 1007 (RFC 6455
    section 8.1), wherever in the JSON it sits; valid sequences of the corpus
    pass through and the connection stays up."""
    for i, e in enumerate(CORPUS["invalid_utf8"]):
        raw = bytes.fromhex(e["hex"])
        try:
            raw.decode("utf-8")
            valid = True
        except UnicodeDecodeError:
            valid = False
        frames = [
            b'[null,"1","room:hostile","e",{"v":"' + raw + b'"}]',  # inside a string value
            b'[null,"2","room:' + raw + b'","phx_join",{}]',          # as the topic
            b'[null,"3","room:hostile","' + raw + b'",{}]',           # as the event
        ]
        for f in frames:
            status, _, rest, sock = http_upgrade(vserver.port, f"/cortex/websocket?api_key={vserver.admin_key}")
            assert status == 101
            sock.sendall(client_frame(1, f))
            sock.sendall(client_frame(1, b'[null,"hb","phoenix","heartbeat",{}]'))
            if valid:
                texts = FrameStream(sock, rest).texts_until(lambda t: t[1] == "hb")
                assert texts[-1][4]["status"] == "ok", (e, texts)
            else:
                frames_seen, code = read_frames(sock, rest)
                assert code == 1007, (e, f, frames_seen)
                # Nothing of the invalid frame or after it was answered.
                assert not [p for op, p in frames_seen if op == 1], (e, frames_seen)
            sock.close()
        # As a percent-encoded token or key: 401, never a crash.
        # (400 when a byte decodes to a control character: a malformed target.)
        q = urllib.parse.quote_from_bytes(raw)
        assert http_upgrade(vserver.port, f"/cortex/websocket?token={q}")[0] == (400 if has_control(raw) else 401), e
    await world.still_serving()


@pytest.mark.asyncio
async def test_oversized_inputs(vserver, world):
    a = world.attacker
    cases = {e["what"]: e for e in CORPUS["oversized"]}
    # Field-size limits on the attacker's own connection.
    r = await a.request(CORTEX, "query", {"q": "x" * 8192})
    assert r["status"] == "ok"
    error(await a.request(CORTEX, "query", {"q": "x" * 8193}), "invalid_payload")
    ok(await a.join("r:" + "t" * 253))
    error(await a.join("r:" + "t" * 254), "invalid_topic")
    ok(await a.request("room:hostile", "e" * 64, {}))
    error(await a.request("room:hostile", "e" * 65, {}), "invalid_payload")
    meta_1024 = {"m": "x" * (1024 - len('{"m":""}'))}
    ok(await a.join("room:meta1024", {"meta": meta_1024}))
    error(await a.join("room:meta1025", {"meta": {"m": meta_1024["m"] + "x"}}), "invalid_payload")
    ok(await a.request("room:hostile", "big", {"p": "x" * 100_000}))
    r = await a.request("room:hostile", "longref", {})
    ref = "r" * 1000
    await a.send("room:hostile", "e", {}, ref=ref)
    # Refs are at most 64 bytes (protocol.md section 9): refused, not echoed.
    f = await a.expect(lambda f: f[3] == "phx_reply" and f[1] is None and f[2] == "room:hostile")
    error(f[4], "invalid_payload")
    end = await world.run(a, "tool", {"tool": "memory.store", "args": {"content": "x" * 10_000}})
    assert end[3] == "result"
    end = await world.run(a, "tool", {"tool": "memory.store", "args": {"content": "t", "tags": ["t"] * 10_000}})
    assert end[4]["reason"] == "invalid_args"
    # Frame-size limits, each on a connection of its own.
    async def closes_with(frames_bytes, expected):
        status, _, rest, sock = http_upgrade(vserver.port, f"/cortex/websocket?api_key={vserver.admin_key}")
        sock.sendall(frames_bytes)
        _, code = read_frames(sock, rest, timeout=10)
        sock.close()
        assert code == expected
    limit = 1 << 20
    await closes_with(client_frame(1, b"x" * (limit + 1)), 1009)
    await closes_with(client_frame(1, b"", length=16 << 20)[:14] + b"abc", 1009)
    await closes_with(client_frame(1, b"", length=(1 << 63) - 1)[:14], 1009)
    half = b"x" * (limit // 2)
    await closes_with(client_frame(1, half, fin=False) + client_frame(0, half + b"x"), 1009)
    await closes_with(b"".join(client_frame(1 if i == 0 else 0, b"x" * 1024, fin=False) for i in range(1024))
                      + client_frame(0, b"x"), 1009)
    await closes_with(client_frame(9, b"x" * 126), 1002)
    # HTTP: a long target and a huge header get an answer, not a crash.
    status, _, _ = vserver.http("GET", "/" + "a" * 8192)
    assert status == 404
    status, _, _ = vserver.http("GET", "/health", headers={"X-Big": "b" * 65536})
    assert status == 431  # request line and headers are bounded at 16 KiB (header_too_large)
    await world.still_serving()


@pytest.mark.asyncio
async def test_frame_sequences(vserver, world):
    for seq in CORPUS["frame_sequences"]:
        status, _, rest, sock = http_upgrade(vserver.port, f"/cortex/websocket?api_key={vserver.admin_key}")
        out = b""
        chunked = []
        for f in seq["frames"]:
            op = {"text": 1, "binary": 2, "continuation": 0, "close": 8, "ping": 9, "pong": 10}.get(f["op"], f["op"])
            if "data_hex" in f:
                data = bytes.fromhex(f["data_hex"])
            else:
                data = f.get("data", "").encode()
            if op == 8 and "code" in f:
                reason = bytes.fromhex(f["reason_hex"]) if "reason_hex" in f else f.get("reason", "").encode()
                data = f["code"].to_bytes(2, "big") + reason
            fb = client_frame(op, data, fin=f.get("fin", True), mask=f.get("masked", True))
            if f.get("rsv"):
                fb = bytes([fb[0] | (f["rsv"] << 4)]) + fb[1:]
            if f.get("write_chunk"):
                chunked.append((out, fb, f["write_chunk"]))
                out = b""
            else:
                out += fb
        for before, fb, n in chunked:
            sock.sendall(before)
            for i in range(0, len(fb), n):
                sock.sendall(fb[i:i + n])
                time.sleep(0.001)
        sock.sendall(out)
        expect = seq["expect"]
        if expect.startswith("close_") and expect != "close_echo":
            _, code = read_frames(sock, rest, timeout=5)
            assert code == int(expect.split("_")[1]), (seq["name"], code)
        elif expect == "close_echo":
            _, code = read_frames(sock, rest, timeout=5)
            assert code is not None, seq["name"]
        else:
            sock.sendall(client_frame(1, b'[null,"hb","phoenix","heartbeat",{}]'))
            texts = FrameStream(sock, rest).texts_until(lambda t: t[1] == "hb")
            if expect == "malformed_frame":
                assert any(t[3] == "phx_error" for t in texts), seq["name"]
        sock.close()
    await world.still_serving()
