// Regressions and notable inputs from the libFuzzer targets in fuzz/.
//
// The first two groups are the bugs the fuzzers found, each with the exact
// input that crashed (fuzz/README.md tells how they were found); the rest
// pin down hostile inputs the fuzzers exercise, so the properties they check
// also hold in the ordinary unit test run.
#include <gtest/gtest.h>
#include <sqlite3.h>

#include <algorithm>
#include <boost/json.hpp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/crypto.hpp"
#include "auth/jwt.hpp"
#include "cortex/fts_query.hpp"
#include "net/request_target.hpp"
#include "protocol/envelope.hpp"
#include "wire/ws_frame.hpp"

namespace json = boost::json;
using namespace synapse;

namespace {

struct FuzzEvent {
  std::string kind;
  std::string payload;
  std::uint16_t code = 0;
  bool operator==(const FuzzEvent&) const = default;
};

struct FuzzRecorder final : wire::FrameSink {
  std::vector<FuzzEvent> events;
  void on_message(wire::Opcode op, std::string_view p) override {
    events.push_back({op == wire::Opcode::text ? "text" : "binary", std::string(p), 0});
  }
  void on_ping(std::string_view p) override { events.push_back({"ping", std::string(p), 0}); }
  void on_pong(std::string_view p) override { events.push_back({"pong", std::string(p), 0}); }
  void on_close(std::uint16_t c, std::string_view r) override { events.push_back({"close", std::string(r), c}); }
  void on_violation(std::uint16_t c, std::string_view) override { events.push_back({"violation", {}, c}); }
};

std::string bytes(std::initializer_list<int> b) {
  std::string out;
  for (int c : b) out.push_back(static_cast<char>(c));
  return out;
}

const std::uint8_t fuzz_mask[4] = {0x37, 0xFA, 0x21, 0x3D};

// Feeds `stream` in `chunk`-byte pieces (0 = at once).
std::vector<FuzzEvent> read_frames(std::string stream, std::size_t limit, std::size_t chunk = 0) {
  wire::FrameReader reader(limit, wire::Role::server);
  FuzzRecorder rec;
  if (chunk == 0) chunk = stream.size();
  for (std::size_t i = 0; i < stream.size(); i += chunk) {
    reader.feed(stream.data() + i, std::min(chunk, stream.size() - i), rec);
  }
  return rec.events;
}

}  // namespace

// ---------------------------------------------------------------------------
// Bug 1 (fuzz_frame_reader). With websocket.max_message_bytes = 0 (unlimited,
// a documented setting), FrameReader::feed reserved the whole declared length
// of a frame that arrived in pieces: a 16-byte frame declaring 2^40 bytes
// asked for 1 TiB (std::bad_alloc / std::length_error out of the I/O loop;
// ASan: allocation-size-too-big). Crashing input (after the fuzzer's 2-byte
// prefix): 82 ff 00 00 01 00 00 00 00 00 | mask 37 fa 21 3d | 4f 82.
TEST(FuzzRegression, UnlimitedReaderDoesNotReserveADeclaredHugeLength) {
  for (std::uint64_t declared : {std::uint64_t{1} << 40, (std::uint64_t{1} << 63) - 1, ~std::uint64_t{0}}) {
    std::string frame = bytes({0x82, 0xFF});
    for (int s = 56; s >= 0; s -= 8) frame.push_back(static_cast<char>((declared >> s) & 0xFF));
    frame.append(reinterpret_cast<const char*>(fuzz_mask), 4);
    frame += bytes({0x4F, 0x82});
    wire::FrameReader reader(0, wire::Role::server);
    FuzzRecorder rec;
    EXPECT_NO_THROW(reader.feed(frame.data(), frame.size(), rec)) << declared;
    EXPECT_TRUE(rec.events.empty());
    EXPECT_FALSE(reader.finished());
    EXPECT_LT(reader.buffered(), 4096u) << "declared " << declared;
  }
}

TEST(FuzzRegression, UnlimitedReaderStillAssemblesSplitMessages) {
  std::string payload(100'000, 'x');
  for (std::size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<char>('a' + i % 26);
  const std::string stream = wire::encode_client_frame(wire::Opcode::text, payload, fuzz_mask);
  for (std::size_t chunk : {1u, 7u, 4096u, 0u}) {
    const auto events = read_frames(stream, 0, chunk);
    ASSERT_EQ(events.size(), 1u) << chunk;
    EXPECT_EQ(events[0].kind, "text");
    EXPECT_EQ(events[0].payload, payload);
  }
}

// ---------------------------------------------------------------------------
// Bug 2 (fuzz_envelope). A number too large for a double (1e400) parses as
// infinity and Boost.JSON 1.81 serializes it as `Infinity`, which is not JSON:
// a publish with {"x":1e400} was broadcast to every member as invalid JSON.
// protocol::decode now refuses it as a malformed frame. Crashing input: the
// seed fuzz/corpus/fuzz_envelope/numbers (below).
TEST(FuzzRegression, EnvelopeRefusesNumbersThatOverflowADouble) {
  const std::string crashing =
      R"([null,null,"t","e",{"big":18446744073709551615,"neg":-9223372036854775808,"over":1e400,)"
      R"("tiny":5e-324,"negzero":-0.0,"frac":0.1}])";
  for (const std::string& text : {crashing, std::string(R"([null,null,"t","e",{"x":-1e400}])"),
                                  std::string(R"([null,null,"t","e",{"a":[1,{"b":[2e999]}]}])"),
                                  std::string(R"([null,null,"t","e",{"x":1)") + std::string(400, '0') + "}]"}) {
    protocol::Envelope env;
    std::string error;
    EXPECT_FALSE(protocol::decode(text, env, error)) << text;
    EXPECT_FALSE(error.empty());
  }
}

TEST(FuzzRegression, EnvelopeWithLargeFiniteNumbersRoundTrips) {
  const std::string text =
      R"([null,null,"t","e",{"big":18446744073709551615,"neg":-9223372036854775808,"max":1.7976931348623157e308,)"
      R"("tiny":5e-324,"negzero":-0.0,"frac":0.1,"long":123456789012345678901234567890}])";
  protocol::Envelope env;
  std::string error;
  ASSERT_TRUE(protocol::decode(text, env, error)) << error;
  const std::string again = protocol::encode_raw(env.join_ref, env.ref, env.topic, env.event, json::serialize(*env.payload));
  protocol::Envelope env2;
  ASSERT_TRUE(protocol::decode(again, env2, error)) << again << ": " << error;
  EXPECT_EQ(*env.payload, *env2.payload);
}

// Found by fuzz_envelope, not a Synapse bug: Boost.JSON 1.81 does not round
// long decimal mantissas correctly (this one reads 1 ULP below strtod; 1.83
// adds precise parsing), while its serializer is exact. A relayed number may
// move by an ULP, never more, and always comes out as valid JSON.
TEST(FuzzRegression, EnvelopeLongDecimalsRelayWithinAnUlp) {
  const std::string text = R"([null,null,"t","e",{"big":1844678888888888888888888888888888888888880.1}])";
  protocol::Envelope env;
  std::string error;
  ASSERT_TRUE(protocol::decode(text, env, error)) << error;
  const std::string again = protocol::encode_raw(env.join_ref, env.ref, env.topic, env.event, json::serialize(*env.payload));
  protocol::Envelope env2;
  ASSERT_TRUE(protocol::decode(again, env2, error)) << again;
  const double first = env.payload->at("big").as_double();
  const double relayed = env2.payload->at("big").as_double();
  EXPECT_LE(std::fabs(first - relayed), std::fabs(std::nextafter(first, 0.0) - first) * 2) << again;
}

// ---------------------------------------------------------------------------
// Frame reader: inputs from the seed corpus whose handling the fuzzer checks.
TEST(FuzzRegression, FrameEventsDoNotDependOnHowTheStreamIsSplit) {
  const std::string stream = wire::encode_client_frame(wire::Opcode::text, R"(["1",)", fuzz_mask, false) +
                             wire::encode_client_frame(wire::Opcode::ping, "p", fuzz_mask) +
                             wire::encode_client_frame(wire::Opcode::continuation, R"("2","t","e",{}])", fuzz_mask) +
                             wire::encode_client_frame(wire::Opcode::close, bytes({0x03, 0xE8}) + "bye", fuzz_mask);
  const auto whole = read_frames(stream, 1 << 20);
  ASSERT_EQ(whole.size(), 3u);
  EXPECT_EQ(whole[0], (FuzzEvent{"ping", "p", 0}));
  EXPECT_EQ(whole[1], (FuzzEvent{"text", R"(["1","2","t","e",{}])", 0}));
  EXPECT_EQ(whole[2], (FuzzEvent{"close", "bye", 1000}));
  for (std::size_t chunk = 1; chunk < stream.size(); ++chunk) EXPECT_EQ(read_frames(stream, 1 << 20, chunk), whole) << chunk;
}

TEST(FuzzRegression, FrameLimitIsCheckedAcrossFragmentsBeforeBuffering) {
  const std::string stream = wire::encode_client_frame(wire::Opcode::text, std::string(100, 'd'), fuzz_mask, false) +
                             wire::encode_client_frame(wire::Opcode::continuation, std::string(26, 'd'), fuzz_mask);
  const auto events = read_frames(stream, 125);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0], (FuzzEvent{"violation", {}, wire::close_code::too_big}));
  // Exactly at the limit is fine.
  const auto at = read_frames(wire::encode_client_frame(wire::Opcode::text, std::string(125, 'c'), fuzz_mask), 125);
  ASSERT_EQ(at.size(), 1u);
  EXPECT_EQ(at[0].payload.size(), 125u);
}

TEST(FuzzRegression, FrameUtf8IsJudgedOverTheWholeMessage) {
  const std::string text = "caf\xc3\xa9 \xf0\x9f\x98\x80";
  // Split inside the two-byte é: still valid once assembled.
  const std::string ok = wire::encode_client_frame(wire::Opcode::text, text.substr(0, 4), fuzz_mask, false) +
                         wire::encode_client_frame(wire::Opcode::continuation, text.substr(4), fuzz_mask);
  auto events = read_frames(ok, 1 << 20, 3);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].kind, "text");
  // A surrogate and a truncated sequence are not: the stream fails with 1007.
  for (const std::string& bad : {bytes({0xED, 0xA0, 0x80}), bytes({0xC3}), bytes({0xFF, 0xFE})}) {
    events = read_frames(wire::encode_client_frame(wire::Opcode::text, bad, fuzz_mask), 1 << 20);
    ASSERT_EQ(events.size(), 1u);
    EXPECT_EQ(events[0].kind, "violation");
    EXPECT_EQ(events[0].code, wire::close_code::invalid_payload);
  }
}

TEST(FuzzRegression, FrameCloseCodesAndControlFrameRules) {
  auto one = [](const std::string& stream) {
    const auto ev = read_frames(stream, 1 << 20);
    return ev.size() == 1 ? ev[0] : FuzzEvent{"?", {}, 0};
  };
  using wire::Opcode;
  EXPECT_EQ(one(wire::encode_client_frame(Opcode::close, "", fuzz_mask)).code, wire::close_code::no_status);
  EXPECT_EQ(one(wire::encode_client_frame(Opcode::close, bytes({0x03}), fuzz_mask)).kind, "violation");
  EXPECT_EQ(one(wire::encode_client_frame(Opcode::close, bytes({0x03, 0xED}), fuzz_mask)).kind, "violation");  // 1005
  EXPECT_EQ(one(wire::encode_client_frame(Opcode::close, bytes({0x03, 0xE8, 0xC3, 0x28}), fuzz_mask)).code,
            wire::close_code::invalid_payload);
  EXPECT_EQ(one(wire::encode_client_frame(Opcode::ping, std::string(126, 'x'), fuzz_mask)).kind, "violation");
  EXPECT_EQ(one(wire::encode_client_frame(Opcode::ping, "x", fuzz_mask, false)).kind, "violation");
  EXPECT_EQ(one(wire::encode_client_frame(Opcode::continuation, "orphan", fuzz_mask)).kind, "violation");
  // Unmasked from a client, RSV1 without an extension, opcode 3.
  EXPECT_EQ(one(bytes({0x81, 0x01, 'a'})).kind, "violation");
  EXPECT_EQ(one(bytes({0xC1, 0x80, 0, 0, 0, 0})).kind, "violation");
  EXPECT_EQ(one(bytes({0x83, 0x80, 0, 0, 0, 0})).kind, "violation");
}

TEST(FuzzRegression, ApplyMaskAtAnyOffsetIsBytewiseXor) {
  std::string data(300, '\0');
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 7);
  for (std::size_t offset = 0; offset < 9; ++offset) {
    std::string fast = data;
    std::string slow = data;
    wire::apply_mask(fast.data() + 1, fast.size() - 1, fuzz_mask, offset);
    for (std::size_t i = 1; i < slow.size(); ++i) slow[i] = static_cast<char>(slow[i] ^ fuzz_mask[(offset + i - 1) & 3]);
    EXPECT_EQ(fast, slow) << offset;
  }
}

// ---------------------------------------------------------------------------
// Envelope.
TEST(FuzzRegression, EnvelopeDepthLimitCountsTheFrameArray) {
  auto nested = [](int depth) {
    const int inner = depth - 2;  // the frame array is 1, the payload object 2
    std::string s = R"([null,null,"t","e",)";
    for (int i = 0; i < inner; ++i) s += R"({"a":)";
    s += "{}";
    s += std::string(static_cast<std::size_t>(inner), '}');
    return s + "]";
  };
  protocol::Envelope env;
  std::string error;
  EXPECT_TRUE(protocol::decode(nested(protocol::max_json_depth), env, error)) << error;
  EXPECT_FALSE(protocol::decode(nested(protocol::max_json_depth + 1), env, error));
  EXPECT_NE(error.find("64"), std::string::npos) << error;
  EXPECT_FALSE(protocol::decode(nested(10'000), env, error));
}

TEST(FuzzRegression, EnvelopeEscapesEveryControlCharacterAndQuote) {
  std::string s;
  for (int c = 0; c < 0x20; ++c) s.push_back(static_cast<char>(c));
  s += "\"\\/\x7f\xe2\x80\xae\xf0\x9f\x98\x80";
  const std::string frame = protocol::encode_raw(s, std::nullopt, s, s, "{}");
  for (char c : frame) EXPECT_GE(static_cast<unsigned char>(c), 0x20);
  protocol::Envelope env;
  std::string error;
  ASSERT_TRUE(protocol::decode(frame, env, error)) << error;
  EXPECT_EQ(env.join_ref.value_or(""), s);
  EXPECT_FALSE(env.ref.has_value());
  EXPECT_EQ(env.topic, s);
  EXPECT_EQ(env.event, s);
}

TEST(FuzzRegression, EnvelopeRefusesHostileShapes) {
  for (const std::string& text :
       {std::string(""), std::string(R"({"topic":"t"})"), std::string(R"([null,null,"t","e"])"),
        std::string(R"([null,null,"t","e",{},1])"), std::string(R"([1,null,"t","e",{}])"),
        std::string(R"([null,null,"t","e",[]])"), std::string(R"([null,null,"t","e",{},])"),
        std::string(R"([null,null,"t","e",{}] // c)"), std::string(R"([null,null,"t","e",{"x":NaN}])"),
        std::string("[null,null,\"t\xff\",\"e\",{}]"), std::string(R"([null,null,"t","e",{"a":)")}) {
    protocol::Envelope env;
    std::string error;
    EXPECT_FALSE(protocol::decode(text, env, error)) << text;
    EXPECT_FALSE(error.empty());
  }
}

// ---------------------------------------------------------------------------
// JWT: nothing verifies unless HS256-signed with the secret.
namespace {
constexpr std::string_view jwt_secret = "synapse-fuzz-secret-0123456789abcdef";
constexpr std::int64_t jwt_now = 1'700'000'000;

std::string make_token(std::string_view header, std::string_view payload, std::string_view key) {
  std::string input = core::base64url_encode(header) + "." + core::base64url_encode(payload);
  return input + "." + core::base64url_encode(core::as_view(core::hmac_sha256(key, input)));
}
const std::string good_claims = R"({"sub":"agent-1","exp":1700003600,"iat":1700000000})";
}  // namespace

TEST(FuzzRegression, JwtRefusesEveryAlgorithmButHs256) {
  EXPECT_EQ(auth::verify_jwt(make_token(R"({"alg":"HS256","typ":"JWT"})", good_claims, jwt_secret), jwt_secret, jwt_now).status,
            auth::JwtStatus::ok);
  const std::string none = core::base64url_encode(R"({"alg":"none","typ":"JWT"})") + "." +
                           core::base64url_encode(good_claims) + ".";
  EXPECT_EQ(auth::verify_jwt(none, jwt_secret, jwt_now).status, auth::JwtStatus::bad_algorithm);
  for (std::string_view header : {R"({"alg":"none"})", R"({"alg":"None"})", R"({"alg":"HS512"})", R"({"alg":"hs256"})",
                                  R"({"alg":"RS256"})", R"({"typ":"JWT"})", R"({"alg":256})",
                                  R"({"alg":"HS256","crit":["exp"]})", R"({"alg":"HS256","alg":"none"})"}) {
    EXPECT_EQ(auth::verify_jwt(make_token(header, good_claims, jwt_secret), jwt_secret, jwt_now).status,
              auth::JwtStatus::bad_algorithm)
        << header;
  }
}

TEST(FuzzRegression, JwtRefusesWrongKeysAndAlteredSignatures) {
  const std::string header = R"({"alg":"HS256"})";
  EXPECT_EQ(auth::verify_jwt(make_token(header, good_claims, "not-the-secret"), jwt_secret, jwt_now).status,
            auth::JwtStatus::bad_signature);
  EXPECT_EQ(auth::verify_jwt(make_token(header, good_claims, ""), jwt_secret, jwt_now).status,
            auth::JwtStatus::bad_signature);
  const std::string good = make_token(header, good_claims, jwt_secret);
  EXPECT_NE(auth::verify_jwt(good, "", jwt_now).status, auth::JwtStatus::ok);
  // The last base64url character of a 32-byte signature carries 4 unused
  // bits: setting one gives another spelling of the same bytes, refused.
  std::string alt = good;
  alt.back() = static_cast<char>(alt.back() ^ 0x01);
  EXPECT_NE(auth::verify_jwt(alt, jwt_secret, jwt_now).status, auth::JwtStatus::ok);
  for (const std::string& bad : {good + "=", good.substr(0, good.size() - 1), good + ".x", " " + good,
                                 std::string(".."), std::string("")}) {
    EXPECT_NE(auth::verify_jwt(bad, jwt_secret, jwt_now).status, auth::JwtStatus::ok) << bad;
  }
  // Every single-byte change of a valid token is refused.
  for (std::size_t i = 0; i < good.size(); ++i) {
    std::string t = good;
    t[i] = static_cast<char>(t[i] ^ 0x20);
    EXPECT_NE(auth::verify_jwt(t, jwt_secret, jwt_now).status, auth::JwtStatus::ok) << i;
  }
}

TEST(FuzzRegression, JwtClaimEdgeCases) {
  const std::string header = R"({"alg":"HS256"})";
  auto status = [&](std::string_view claims) {
    return auth::verify_jwt(make_token(header, claims, jwt_secret), jwt_secret, jwt_now).status;
  };
  EXPECT_EQ(status(R"({"sub":"a","exp":1700000000})"), auth::JwtStatus::expired);  // exp == now
  EXPECT_EQ(status(R"({"sub":"a","exp":1700000001.0})"), auth::JwtStatus::ok);
  EXPECT_EQ(status(R"({"sub":"a","exp":1700000001.5})"), auth::JwtStatus::bad_claims);
  EXPECT_EQ(status(R"({"sub":"a","exp":1e300})"), auth::JwtStatus::bad_claims);
  EXPECT_EQ(status(R"({"sub":"a","exp":1e400})"), auth::JwtStatus::bad_claims);
  EXPECT_EQ(status(R"({"sub":"a","exp":18446744073709551615})"), auth::JwtStatus::bad_claims);
  EXPECT_EQ(status(R"({"sub":"","exp":1800000000})"), auth::JwtStatus::bad_claims);
  EXPECT_EQ(status(R"({"sub":"a","exp":1800000000,"topics":["room:*",5]})"), auth::JwtStatus::bad_claims);
  EXPECT_EQ(status(R"({"sub":"a","exp":1800000000,"nbf":1700000001})"), auth::JwtStatus::not_yet_valid);
  EXPECT_EQ(status("[1,2]"), auth::JwtStatus::malformed);

  auth::TokenClaims c;
  c.sub = "\xc3\xa9\xe2\x80\xae\xf0\x9f\x98\x80";
  c.exp = INT64_MAX;
  c.iat = INT64_MIN;
  c.has_topics = true;
  c.tenant = "acme";
  const auto r = auth::verify_jwt(auth::sign_jwt(c, jwt_secret), jwt_secret, jwt_now);
  ASSERT_EQ(r.status, auth::JwtStatus::ok);
  EXPECT_EQ(r.claims.sub, c.sub);
  EXPECT_EQ(r.claims.exp, c.exp);
  EXPECT_EQ(r.claims.iat, c.iat);
  EXPECT_TRUE(r.claims.has_topics);
  EXPECT_TRUE(r.claims.topics.empty());
}

// ---------------------------------------------------------------------------
// FTS5: the query built from hostile text is valid FTS5 and searches literally.
namespace {
struct FtsDb {
  sqlite3* db = nullptr;
  FtsDb() {
    EXPECT_EQ(sqlite3_open(":memory:", &db), SQLITE_OK);
    // The tokenizer of memories_fts (cortex/memory_store.cpp).
    EXPECT_EQ(sqlite3_exec(db,
                           "CREATE VIRTUAL TABLE docs USING fts5(content, tokenize='unicode61 remove_diacritics 2');"
                           "CREATE VIRTUAL TABLE docs_tokens USING fts5vocab(docs, 'instance');",
                           nullptr, nullptr, nullptr),
              SQLITE_OK);
  }
  ~FtsDb() { sqlite3_close(db); }
  FtsDb(const FtsDb&) = delete;
  FtsDb& operator=(const FtsDb&) = delete;

  void add(std::int64_t rowid, std::string_view text) {
    sqlite3_stmt* st = nullptr;
    ASSERT_EQ(sqlite3_prepare_v2(db, "INSERT INTO docs (rowid, content) VALUES (?1, ?2)", -1, &st, nullptr), SQLITE_OK);
    sqlite3_bind_int64(st, 1, rowid);
    sqlite3_bind_text(st, 2, text.data(), static_cast<int>(text.size()), SQLITE_TRANSIENT);
    EXPECT_EQ(sqlite3_step(st), SQLITE_DONE);
    sqlite3_finalize(st);
  }
  // How many tokens the tokenizer found in document `rowid`.
  std::int64_t tokens(std::int64_t rowid) {
    sqlite3_stmt* st = nullptr;
    EXPECT_EQ(sqlite3_prepare_v2(db, "SELECT count(*) FROM docs_tokens WHERE doc = ?1", -1, &st, nullptr), SQLITE_OK);
    sqlite3_bind_int64(st, 1, rowid);
    EXPECT_EQ(sqlite3_step(st), SQLITE_ROW);
    const std::int64_t n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return n;
  }
  // Matching rowids, or -1 as the only element on an FTS5 error.
  std::vector<std::int64_t> search(const std::string& query) {
    sqlite3_stmt* st = nullptr;
    EXPECT_EQ(sqlite3_prepare_v2(db, "SELECT rowid FROM docs WHERE docs MATCH ?1 ORDER BY rowid", -1, &st, nullptr),
              SQLITE_OK);
    sqlite3_bind_text(st, 1, query.data(), static_cast<int>(query.size()), SQLITE_TRANSIENT);
    std::vector<std::int64_t> rows;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) rows.push_back(sqlite3_column_int64(st, 0));
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) return {-1};
    return rows;
  }
};

const std::vector<std::string> hostile_search_text = {
    "\"unbalanced", "prefix*", "OR", "AND", "NOT", "NEAR", "NEAR(", "NEAR(a b, 5)", "a OR b AND NOT c",
    "(a OR b", "a)", "^start", "content:secret", "{content tags}:x", "'; DROP TABLE memories; --",
    "' OR '1'='1", "Robert'); DROP TABLE memories_fts;--", "<script>alert(1)</script>", "../../etc/passwd",
    "$(rm -rf /)", "%s%n%x", "caf\xc3\xa9 na\xc3\xafve", "\xe2\x80\xae" "evil", "zero\xe2\x80\x8bwidth",
    "\xf0\x9f\x98\x80 emoji", "\xe4\xb8\xad\xe6\x96\x87", std::string("nul\0byte", 8), "abc\xff\xfe def \xc3",
    "-1 +2 -(x)", "memory.store"};
}  // namespace

TEST(FuzzRegression, FtsQueriesFromHostileTextAreValidAndLiteral) {
  for (const std::string& text : hostile_search_text) {
    FtsDb fts;
    fts.add(1, text);
    fts.add(2, "unrelated words only");
    const std::string query = cortex::build_fts_query(text);
    ASSERT_FALSE(query.empty()) << text;
    const auto rows = fts.search(query);
    ASSERT_NE(rows, std::vector<std::int64_t>{-1}) << "FTS5 refused " << query;
    EXPECT_EQ(rows, std::vector<std::int64_t>{1}) << text << " -> " << query;
    // Each term finds itself, unless the tokenizer sees no word in it (an
    // emoji or a stray byte: see FtsTermWithoutTokensIsHarmless).
    std::int64_t rowid = 10;
    for (const std::string& term : cortex::query_terms(text)) {
      fts.add(rowid, term);
      const auto found = fts.search(cortex::build_fts_query(term));
      ASSERT_NE(found, std::vector<std::int64_t>{-1}) << "FTS5 refused the term " << term;
      if (fts.tokens(rowid) > 0) {
        EXPECT_NE(std::find(found.begin(), found.end(), rowid), found.end()) << "term " << term << " of " << text;
      }
      ++rowid;
    }
  }
}

TEST(FuzzRegression, FtsQueryOfOperatorsIsQuotedTerms) {
  EXPECT_EQ(cortex::build_fts_query("NEAR(a b, 5) OR *"), R"("NEAR" OR "a" OR "b" OR "5" OR "OR")");
  EXPECT_EQ(cortex::build_fts_query("'; DROP TABLE memories; --"), R"("DROP" OR "TABLE" OR "memories")");
  EXPECT_EQ(cortex::build_fts_query("\"*^:()'-+"), "");
  std::string many;
  for (int i = 0; i < 40; ++i) many += "w" + std::to_string(i) + " ";
  EXPECT_EQ(cortex::query_terms(many).size(), cortex::max_query_terms);
}

// Non-ASCII punctuation, symbols (emoji) and stray bytes form a term with no
// token: its phrase is empty and matches nothing, without an error. (An
// ASCII-only punctuation query has no term at all and is searched as a literal
// substring by MemoryStore::recall.)
TEST(FuzzRegression, FtsTermWithoutTokensIsHarmless) {
  FtsDb fts;
  fts.add(1, "\xc2\xab\xc2\xbb \xe2\x80\x94 \xf0\x9f\x98\x80 \xff");
  for (std::string_view text : {"\xc2\xab\xc2\xbb", "\xe2\x80\x94", "\xe2\x80\xa6", "\xf0\x9f\x98\x80", "\xff"}) {
    const std::string query = cortex::build_fts_query(text);
    EXPECT_EQ(query, "\"" + std::string(text) + "\"");
    EXPECT_EQ(fts.search(query), std::vector<std::int64_t>{});
  }
}

// ---------------------------------------------------------------------------
// Request target: decoded values never hold control characters.
TEST(FuzzRegression, RequestTargetRefusesControlCharactersAndBadEscapes) {
  for (std::string_view t : {"/a%00b", "/a?b=%00", "/a?b=%0d%0aSet-Cookie:x", "/a?b=%7f", "/a?b=%7F", "/a?b=%1F",
                             "/a?%0a=v", "/a?b=%", "/a?b=%4", "/a?b=%4g", "/a%", "/a#frag", "*", "", "a",
                             "http://example.com/a"}) {
    net::RequestTarget out;
    EXPECT_FALSE(net::parse_target(t, out)) << t;
  }
  const std::string raw_controls[] = {std::string("/a\x01"), std::string("/a?b=\x7f"), std::string("/a?b=x\ty")};
  for (const std::string& t : raw_controls) {
    net::RequestTarget out;
    EXPECT_FALSE(net::parse_target(t, out)) << t;
  }
}

TEST(FuzzRegression, RequestTargetDecodesLiterally) {
  net::RequestTarget out;
  ASSERT_TRUE(net::parse_target("/..%2f..%2fetc%2fpasswd?q=a+b%20c%2B&k=1&k=2&=v&flag&x=%25#k=3", out));
  EXPECT_EQ(out.path, "/../../etc/passwd");  // decoded, not normalized: routing compares exact paths
  ASSERT_EQ(out.query.size(), 6u);
  EXPECT_EQ(net::query_param(out, "q").value_or("?"), "a b c+");
  EXPECT_EQ(net::query_param(out, "k").value_or("?"), "1");
  EXPECT_EQ(net::query_param(out, "").value_or("?"), "v");
  EXPECT_EQ(net::query_param(out, "flag").value_or("?"), "");
  EXPECT_EQ(net::query_param(out, "x").value_or("?"), "%");
  ASSERT_TRUE(net::parse_target("/caf%C3%A9?t=%E2%80%AE&api_key=sk%2B%2F%3D", out));
  EXPECT_EQ(out.path, "/caf\xc3\xa9");
  EXPECT_EQ(net::query_param(out, "t").value_or("?"), "\xe2\x80\xae");
  EXPECT_EQ(net::query_param(out, "api_key").value_or("?"), "sk+/=");
}
