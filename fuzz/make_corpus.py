#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/<target>/ (deterministic).

The seeds are committed; run this only to change them:
    python3 fuzz/make_corpus.py
It replaces every file under fuzz/corpus/. Each seed's layout is the one its
fuzz target's header comment describes.
"""
import base64
import hashlib
import hmac
import json
import os
import shutil
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")

# Must equal `secret` in fuzz_jwt.cpp.
JWT_SECRET = b"synapse-fuzz-secret-0123456789abcdef"
NOW = 1_700_000_000


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- fuzz_frame_reader -------------------------------------------------------
TEXT, BINARY, CONT, CLOSE, PING, PONG = 1, 2, 0, 8, 9, 10
MASK = bytes([0x37, 0xFA, 0x21, 0x3D])


def frame(op, payload=b"", fin=True, mask=MASK, rsv=0, length=None):
    if isinstance(payload, str):
        payload = payload.encode()
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | rsv | op
    mbit = 0x80 if mask else 0
    if n < 126:
        hdr = bytes([b0, mbit | n])
    elif n <= 0xFFFF:
        hdr = bytes([b0, mbit | 126]) + struct.pack(">H", n)
    else:
        hdr = bytes([b0, mbit | 127]) + struct.pack(">Q", n)
    if mask:
        hdr += mask
        payload = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
    return hdr + payload


def close_body(code, reason=b""):
    return struct.pack(">H", code) + reason


def frame_seed(name, stream, cfg=0, splits=()):
    """cfg: bits 0-2 limit index (0 = 1 MiB, 1 = unlimited, 2 = 1 byte, 3 = 125,
    4 = 126, 5 = 1024, 6 = 65535, 7 = 65536); bit 7 = client role."""
    write("fuzz_frame_reader", name, bytes([cfg, len(splits)]) + bytes(splits) + stream)


def frame_seeds():
    env = b'["1","1","room:lobby","phx_join",{}]'
    frame_seed("text_one", frame(TEXT, env))
    frame_seed("text_bytewise", frame(TEXT, env), splits=[1])
    frame_seed("text_split_3_7", frame(TEXT, env), splits=[3, 7])
    frame_seed("binary", frame(BINARY, bytes(range(256))))
    frame_seed("empty_text", frame(TEXT, b""))
    frame_seed("fragmented", frame(TEXT, "hello ", fin=False) + frame(CONT, "big ", fin=False) + frame(CONT, "world"))
    frame_seed("fragmented_ping_between",
               frame(TEXT, '["1",', fin=False) + frame(PING, "p") + frame(CONT, '"2","t","e",{}]'), splits=[2, 5, 1])
    frame_seed("fragmented_empty_parts", frame(TEXT, "", fin=False) + frame(CONT, "", fin=False) + frame(CONT, ""))
    frame_seed("ping", frame(PING, "are you there"))
    frame_seed("ping_125", frame(PING, b"x" * 125))
    frame_seed("ping_126_too_long", frame(PING, b"x" * 126))
    frame_seed("pong", frame(PONG, "ok"))
    frame_seed("close_normal", frame(CLOSE, close_body(1000, b"bye")))
    frame_seed("close_empty", frame(CLOSE, b""))
    frame_seed("close_one_byte", frame(CLOSE, b"\x03"))
    frame_seed("close_bad_code", frame(CLOSE, close_body(1005)))
    frame_seed("close_4001", frame(CLOSE, close_body(4001, "token expired \u2603".encode())))
    frame_seed("close_bad_utf8_reason", frame(CLOSE, close_body(1000, b"\xc3\x28")))
    frame_seed("data_after_close", frame(CLOSE, close_body(1000)) + frame(TEXT, "late"))
    frame_seed("unmasked_to_server", frame(TEXT, "no mask", mask=None))
    frame_seed("client_role_unmasked", frame(TEXT, "server says hi", mask=None), cfg=0x80)
    frame_seed("client_role_masked", frame(TEXT, "masked", mask=MASK), cfg=0x80)
    frame_seed("rsv1_set", frame(TEXT, "deflate?", rsv=0x40))
    frame_seed("unknown_opcode_3", frame(3, "x"))
    frame_seed("unknown_opcode_b", frame(0xB, "x"))
    frame_seed("fragmented_control", frame(PING, "x", fin=False))
    frame_seed("continuation_first", frame(CONT, "orphan"))
    frame_seed("new_message_mid_fragment", frame(TEXT, "a", fin=False) + frame(TEXT, "b"))
    frame_seed("len16", frame(TEXT, b"a" * 300), splits=[2, 2, 4, 50])
    frame_seed("len16_at_limit_1024", frame(BINARY, b"b" * 1024), cfg=5, splits=[13, 200])
    frame_seed("over_limit_125", frame(TEXT, b"c" * 126), cfg=3)
    frame_seed("at_limit_125", frame(TEXT, b"c" * 125), cfg=3)
    frame_seed("fragments_over_limit", frame(TEXT, b"d" * 100, fin=False) + frame(CONT, b"d" * 26), cfg=3)
    frame_seed("limit_one_byte", frame(TEXT, "a") + frame(TEXT, "ab"), cfg=2)
    frame_seed("huge_declared_length", frame(BINARY, b"xx", length=(1 << 63) - 1))
    frame_seed("huge_declared_unlimited", frame(BINARY, b"xx", length=1 << 40), cfg=1)
    frame_seed("len64_small_value", frame(TEXT, b"", length=None)[:1] + bytes([0x80 | 127]) +
               struct.pack(">Q", 5) + MASK + bytes(c ^ MASK[i % 4] for i, c in enumerate(b"hello")))
    frame_seed("invalid_utf8_text", frame(TEXT, b"\xff\xfe"))
    frame_seed("utf8_split_across_fragments",
               frame(TEXT, "caf\u00e9 \U0001F600".encode()[:5], fin=False) + frame(CONT, "caf\u00e9 \U0001F600".encode()[5:]))
    frame_seed("surrogate_text", frame(TEXT, b"\xed\xa0\x80"))
    frame_seed("truncated_header", frame(TEXT, b"a" * 200)[:3])
    frame_seed("many_small", b"".join(frame(TEXT, str(i)) for i in range(20)), splits=[5, 0, 9])


# --- fuzz_envelope -----------------------------------------------------------
def envelope_seeds():
    seeds = {
        "join": '["1","1","room:lobby","phx_join",{}]',
        "join_presence": '["3","3","room:lobby","phx_join",{"presence":true,"meta":{"status":"online"},'
                         '"recover":{"offset":41,"epoch":"e1"}}]',
        "heartbeat": '[null,"2","phoenix","heartbeat",{}]',
        "refresh": '[null,"9","phoenix","refresh",{"token":"eyJhbGciOiJIUzI1NiJ9.e30.x"}]',
        "query": '["4","5","cortex:agent-1","query",{"q":"what did I store?","ref":"q1","timeout_ms":5000,"limit":5}]',
        "tool": '["4","6","cortex:agent-1","tool",{"tool":"memory.store","args":{"content":"x","tags":["a"],'
                '"importance":0.5,"scope":"agent"}}]',
        "publish": '["1","7","room:lobby","chat",{"body":"hi","n":[1,2.5,-3e10,true,false,null]}]',
        "leave": '["1","8","room:lobby","phx_leave",{}]',
        "escapes": r'["\u0000","\"\\\/\b\f\n\r\t","t\u00e9\ud83d\ude00","e",{"k\u0001":"\u001f"}]',
        "unicode_raw": '["j","r","room:caf\u00e9","\u202eevil",{"emoji":"\U0001F600","zw":"a\u200bb"}]',
        "numbers": '[null,null,"t","e",{"big":18446744073709551615,"neg":-9223372036854775808,'
                   '"over":1e400,"tiny":5e-324,"negzero":-0.0,"frac":0.1}]',
        "long_mantissa": '[null,null,"t","e",{"big":1844678888888888888888888888888888888888880.1}]',
        "dup_keys": '[null,null,"t","e",{"a":1,"a":2}]',
        "whitespace": ' \t\n[ null , null , "t" , "e" , { } ] \r\n',
        "not_array": '{"topic":"t"}',
        "four_elements": '[null,null,"t","e"]',
        "six_elements": '[null,null,"t","e",{},1]',
        "bad_join_ref": '[1,null,"t","e",{}]',
        "bad_topic": '[null,null,5,"e",{}]',
        "payload_array": '[null,null,"t","e",[]]',
        "payload_string": '[null,null,"t","e","{}"]',
        "trailing_comma": '[null,null,"t","e",{},]',
        "truncated": '[null,null,"t","e",{"a":',
        "comment": '[null,null,"t","e",{}] // hi',
        "nan": '[null,null,"t","e",{"x":NaN}]',
        "lone_surrogate": r'[null,null,"t","e",{"x":"\ud800"}]',
        "bad_utf8": b'[null,null,"t\xff","e",{}]',
        "empty": "",
        "sql_in_topic": '[null,"1","room:\'; DROP TABLE memories; --","e",{}]',
        "worker_token": '["j1",null,"agent:bench","token",{"run_id":"run_0123456789abcdef01234567","text":"12 34 "}]',
        "worker_token_escapes": r'["j1","w9","agent:bench","token",{ "text" : "q\"b\\s\/\n" , "run_id" : "r" }]',
        "flat_dup_keys": '["j1",null,"agent:bench","token",{"run_id":"r","text":"a","text":"b"}]',
    }
    for depth in (63, 64, 65, 200):
        # The frame's array is depth 1, the payload object depth 2.
        inner = depth - 2
        seeds[f"depth_{depth}"] = '[null,null,"t","e",' + '{"a":' * inner + "{}" + "}" * inner + "]"
    seeds["depth_arrays_64"] = '[null,null,"t","e",{"a":' + "[" * 62 + "]" * 62 + "}]"
    for name, text in seeds.items():
        write("fuzz_envelope", name, text)


# --- fuzz_jwt ----------------------------------------------------------------
def b64u(data):
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(header, payload, key=JWT_SECRET, alg=hashlib.sha256, sig=None):
    h = b64u(header if isinstance(header, (str, bytes)) else json.dumps(header, separators=(",", ":")))
    p = b64u(payload if isinstance(payload, (str, bytes)) else json.dumps(payload, separators=(",", ":")))
    signing_input = f"{h}.{p}"
    if sig is None:
        sig = b64u(hmac.new(key, signing_input.encode(), alg).digest())
    return f"{signing_input}.{sig}"


def jwt_seeds():
    hs256 = {"alg": "HS256", "typ": "JWT"}
    good = {"sub": "agent-1", "exp": NOW + 3600, "iat": NOW}
    seeds = {
        "valid": jwt(hs256, good),
        "valid_topics": jwt(hs256, dict(good, topics=["room:*", "cortex:agent-1"], tnt="acme", kid="k1")),
        "valid_double_exp": jwt(hs256, dict(good, exp=float(NOW + 3600))),
        "valid_nbf_past": jwt(hs256, dict(good, nbf=NOW - 10)),
        "nbf_future": jwt(hs256, dict(good, nbf=NOW + 10)),
        "expired": jwt(hs256, dict(good, exp=NOW - 1)),
        "expires_now": jwt(hs256, dict(good, exp=NOW)),
        "no_sub": jwt(hs256, {"exp": NOW + 3600}),
        "empty_sub": jwt(hs256, dict(good, sub="")),
        "no_exp": jwt(hs256, {"sub": "a"}),
        "exp_string": jwt(hs256, dict(good, exp="never")),
        "exp_fraction": jwt(hs256, dict(good, exp=NOW + 0.5)),
        "exp_huge": jwt(hs256, '{"sub":"a","exp":1e300}'),
        "exp_uint64": jwt(hs256, '{"sub":"a","exp":18446744073709551615}'),
        "topics_not_list": jwt(hs256, dict(good, topics="room:*")),
        "topics_mixed": jwt(hs256, dict(good, topics=["room:*", 5])),
        "alg_none": jwt({"alg": "none", "typ": "JWT"}, good, sig=""),
        "alg_none_upper": jwt({"alg": "None"}, good, sig=""),
        "alg_none_signed": jwt({"alg": "none"}, good),
        "alg_hs512": jwt({"alg": "HS512", "typ": "JWT"}, good, alg=hashlib.sha512),
        "alg_hs384": jwt({"alg": "HS384"}, good, alg=hashlib.sha384),
        "alg_rs256": jwt({"alg": "RS256"}, good, sig=b64u(b"\x00" * 256)),
        "alg_lowercase": jwt({"alg": "hs256"}, good),
        "alg_missing": jwt({"typ": "JWT"}, good),
        "alg_number": jwt({"alg": 256}, good),
        "crit_header": jwt({"alg": "HS256", "crit": ["exp"]}, good),
        "dup_alg": jwt('{"alg":"none","alg":"HS256"}', good),
        "other_secret": jwt(hs256, good, key=b"not-the-secret"),
        "empty_secret": jwt(hs256, good, key=b""),
        "sig_truncated": jwt(hs256, good)[:-3],
        "sig_padded": jwt(hs256, good) + "=",
        "sig_std_base64": jwt(hs256, good, sig=base64.b64encode(
            hmac.new(JWT_SECRET, f"{b64u(json.dumps(hs256, separators=(',', ':')))}."
                     f"{b64u(json.dumps(good, separators=(',', ':')))}".encode(), hashlib.sha256).digest()).decode()),
        "header_not_json": jwt("not json", good),
        "header_array": jwt("[]", good),
        "payload_array": jwt(hs256, "[1,2]"),
        "two_parts": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0",
        "four_parts": jwt(hs256, good) + ".x",
        "dots_only": "..",
        "empty": "",
        "spaces": " eyJhbGciOiJIUzI1NiJ9 . e30 . x ",
        "mutate_flip": b"!\x00" + bytes([0, 10, 1, 0, 40, 4, 0, 77, 0x80]),
        "mutate_insert_erase": b"!\x02" + bytes([1, 20, 0x2E, 2, 21, 0, 2, 90, 0]),
        "mutate_truncate": b"!\x01" + bytes([3, 120, 0]),
        "mutate_none": b"!\x03",
        "roundtrip_simple": b"#" + b"agent-7\x00" * 4 + bytes(range(40)),
        "roundtrip_unicode": b"#" + "\u00e9\u202e\U0001F600 sub".encode() + bytes(range(255, 200, -1)),
    }
    for name, tok in seeds.items():
        write("fuzz_jwt", name, tok)


# --- fuzz_fts_query ----------------------------------------------------------
def fts_seeds():
    seeds = [
        "hello world", '"', '""', '"unbalanced', "*", "prefix*", "OR", "AND", "NOT", "NEAR", "NEAR(",
        "NEAR(a b, 5)", "a OR b AND NOT c", "(a OR b", "a)", "^start", "content:secret", "{content tags}:x",
        "col : value", "'; DROP TABLE memories; --", "1; DELETE FROM memories WHERE 1=1", "' OR '1'='1",
        "Robert'); DROP TABLE memories_fts;--", "<script>alert(1)</script>", "../../etc/passwd",
        "$(rm -rf /)", "`id`", "%s%n%x", "caf\u00e9 na\u00efve r\u00e9sum\u00e9", "\u00abguillemets\u00bb",
        "\u2014", "\u2026", "\u202eevil\u202c", "zero\u200bwidth", "\U0001F600 emoji", "\u4e2d\u6587\u641c\u7d22",
        "\u0627\u0644\u0639\u0631\u0628\u064a\u0629", "tab\there\nnewline", "nul\x00byte",
        " ".join(f"w{i}" for i in range(40)), "a" * 3000, "-1 +2 -(x)", "x AND", "AND x", "\"a\" \"b\"",
        "memory.store", "e\u0301", "\u00df\u1e9e", "\u0130stanbul",
    ]
    for i, s in enumerate(seeds):
        write("fuzz_fts_query", f"seed_{i:02d}", s)
    write("fuzz_fts_query", "invalid_utf8", b"abc\xff\xfe def \xc3 \xe2\x82 \xed\xa0\x80 \xf4\x90\x80\x80")
    write("fuzz_fts_query", "lone_continuation", b"\x80\x80 x\xbf")


# --- fuzz_request_target -----------------------------------------------------
def target_seeds():
    seeds = [
        "/cortex/websocket?vsn=2.0.0", "/cortex/websocket?vsn=2.0.0&token=eyJhbGciOiJIUzI1NiJ9.e30.sig",
        "/cortex/websocket?api_key=sk_live_abc%2B%2F%3D", "/health", "/health/ready", "/metrics",
        "/api/presence/room%3Alobby", "/api/presence/room:lobby?x=1", "/", "//", "/a?", "/a?&&&", "/a?=",
        "/a?=v", "/a?k", "/a?k=", "/a?k=v=w", "/a?k=1&k=2", "/a?q=a+b%20c", "/a+b", "/a#frag", "/a?b=c#frag&d=e",
        "/a?b=%", "/a?b=%4", "/a?b=%4g", "/a?b=%41", "/a%00b", "/a?b=%00", "/a?b=%0d%0aSet-Cookie:x", "/a?b=%7f",
        "/a?b=%7F%80%FF", "/..%2f..%2fetc%2fpasswd", "/%2e%2e/%2e%2e/etc/passwd", "/a?b=%25", "/a?b=%2525",
        "/caf%C3%A9?t=%E2%80%AE", "*", "http://example.com/a", "", "a", "/a\x01", "/a?b=\x7f", "/a?%3D=%26",
        "/cortex/websocket?vsn=1.0.0", "/a?" + "k=v&" * 30,
    ]
    for i, s in enumerate(seeds):
        write("fuzz_request_target", f"seed_{i:02d}", s)


# --- fuzz_http_request -------------------------------------------------------
def http_request_seeds():
    # The first byte picks the piece size the input is fed in.
    smuggled = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    seeds = [
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /cortex/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        b"POST /api/token HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
        b"POST /api/token HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        b"POST /health HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: " + b"a" * 300 + b"\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1;ext=1\r\na\r\n0\r\nA: b\r\nC: d\r\n\r\n",
    ]
    for coding in [b"identity", b"gzip", b"xchunked", b"chunked, identity", b"gzip, chunked", b" chunked ,"]:
        seeds.append(b"POST /api/broadcast HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: " + coding + b"\r\n\r\n" + smuggled)
    seeds.append(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n" + smuggled)
    seeds.append(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    for i, s in enumerate(seeds):
        write("fuzz_http_request", f"seed_{i:02d}", bytes([7 + i * 5]) + s)


def main():
    if os.path.isdir(CORPUS):
        shutil.rmtree(CORPUS)
    frame_seeds()
    envelope_seeds()
    jwt_seeds()
    fts_seeds()
    target_seeds()
    http_request_seeds()
    for t in sorted(os.listdir(CORPUS)):
        files = os.listdir(os.path.join(CORPUS, t))
        size = sum(os.path.getsize(os.path.join(CORPUS, t, f)) for f in files)
        print(f"{t}: {len(files)} seeds, {size} bytes")


if __name__ == "__main__":
    main()
