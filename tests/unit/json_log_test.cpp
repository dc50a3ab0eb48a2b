// `--log-format json` records (core/json_log): one valid JSON object per
// line whatever the message holds (client-chosen topics, reasons, headers),
// and the key=value identifiers lifted into fields of their own.
#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <string>
#include <string_view>

#include "core/json_log.hpp"

using synapse::logging::json_record;
namespace json = boost::json;

namespace {
constexpr std::int64_t kTs = 1'700'000'000'123;  // 2023-11-14T22:13:20.123Z

// Parses a record strictly (Boost.JSON rejects invalid UTF-8 and duplicate-free
// is checked by the caller); fails the test if it is not one line of JSON.
json::object parse_record(const std::string& line) {
  EXPECT_FALSE(line.empty());
  EXPECT_EQ(line.back(), '\n');
  EXPECT_EQ(line.find('\n'), line.size() - 1) << "a record must be one line: " << line;
  json::error_code ec;
  json::value v = json::parse(line, ec);
  EXPECT_FALSE(ec) << ec.message() << " in " << line;
  if (ec || !v.is_object()) return {};
  return v.as_object();
}

json::object record(std::string_view message) { return parse_record(json_record("info", kTs, 7, message)); }

std::size_t occurrences(const std::string& hay, const std::string& needle) {
  std::size_t n = 0;
  for (auto pos = hay.find(needle); pos != std::string::npos; pos = hay.find(needle, pos + 1)) ++n;
  return n;
}
}  // namespace

TEST(JsonLog, PlainRecordHasTimestampLevelThreadAndMessage) {
  const auto o = record("listening on 127.0.0.1:4000");
  EXPECT_EQ(o.at("ts").as_string(), "2023-11-14T22:13:20.123Z");
  EXPECT_EQ(o.at("level").as_string(), "info");
  EXPECT_EQ(o.at("thread").as_int64(), 7);
  EXPECT_EQ(o.at("msg").as_string(), "listening on 127.0.0.1:4000");
  EXPECT_EQ(o.size(), 4u);
}

TEST(JsonLog, MillisecondsArePaddedAndTheEpochWorks) {
  EXPECT_EQ(parse_record(json_record("warn", 5, 0, "x")).at("ts").as_string(), "1970-01-01T00:00:00.005Z");
}

TEST(JsonLog, HostileMessagesRoundTripExactly) {
  const std::string hostile[] = {
      R"(quote " backslash \ slash / )",
      "new\nline\rcarriage\ttab",
      std::string("nul\0byte", 8),
      "\x01\x02\x1b[31mred\x1b[0m\x1f\x7f",
      R"(","level":"fatal","x":")",  // trying to forge fields
      "}\n{\"ts\":\"forged\"}",          // trying to forge a second record
      "\\u0000 literal backslash-u",
      "caf\xc3\xa9 \xe2\x9c\x93 \xf0\x9f\x98\x80",  // valid UTF-8 passes through
      "</script><script>alert(1)</script>",
  };
  for (const auto& m : hostile) {
    const auto line = json_record("info", kTs, 1, m);
    const auto o = parse_record(line);
    ASSERT_TRUE(o.contains("msg")) << line;
    EXPECT_EQ(std::string_view(o.at("msg").as_string()), m) << line;
    EXPECT_EQ(o.at("level").as_string(), "info") << line;
    EXPECT_EQ(o.at("ts").as_string(), "2023-11-14T22:13:20.123Z") << line;
  }
}

TEST(JsonLog, ControlBytesAreEscapedNotWrittenRaw) {
  const auto line = json_record("info", kTs, 1, std::string("a\0b\x01\x1f\x7f", 6));
  for (unsigned char c : line.substr(0, line.size() - 1)) EXPECT_GE(c, 0x20) << line;
  EXPECT_NE(line.find(R"(a\u0000b\u0001\u001f\u007f)"), std::string::npos) << line;
}

TEST(JsonLog, InvalidUtf8BecomesReplacementCharactersAndTheLineStaysValidJson) {
  // Bytes a client controls (an Origin header, a path) can be any bytes.
  const struct {
    std::string in;
    std::string out;
  } cases[] = {
      {"bad \xff end", "bad \xef\xbf\xbd end"},
      {"lone continuation \x80", "lone continuation \xef\xbf\xbd"},
      {"truncated \xe2\x82", "truncated \xef\xbf\xbd\xef\xbf\xbd"},
      {"overlong \xc0\xaf", "overlong \xef\xbf\xbd\xef\xbf\xbd"},
      {"surrogate \xed\xa0\x80", "surrogate \xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},
      {"past U+10FFFF \xf4\x90\x80\x80", "past U+10FFFF \xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},
      {"euro \xe2\x82\xac ok", "euro \xe2\x82\xac ok"},
  };
  for (const auto& c : cases) {
    const auto o = record(c.in);
    ASSERT_TRUE(o.contains("msg"));
    EXPECT_EQ(std::string_view(o.at("msg").as_string()), c.out);
  }
  const auto o = record("refused peer=1.2.3.4:5 topic=room:\xff");
  EXPECT_EQ(std::string_view(o.at("topic").as_string()), "room:\xef\xbf\xbd");
}

TEST(JsonLog, KeyValueIdentifiersAreLiftedIntoFields) {
  const auto o = record(
      "refused peer=127.0.0.1:5555 status=429 conn=42 topic=room:lobby run=r-1 ref=7 key=key_ab event=phx_join");
  EXPECT_EQ(o.at("peer").as_string(), "127.0.0.1:5555");
  EXPECT_EQ(o.at("status").as_string(), "429");
  EXPECT_EQ(o.at("conn_id").as_int64(), 42);  // a number when it is all digits
  EXPECT_EQ(o.at("topic").as_string(), "room:lobby");
  EXPECT_EQ(o.at("run_id").as_string(), "r-1");
  EXPECT_EQ(o.at("ref").as_string(), "7");
  EXPECT_EQ(o.at("key_id").as_string(), "key_ab");
  EXPECT_EQ(o.at("event").as_string(), "phx_join");
  // the message itself is unchanged
  EXPECT_EQ(o.at("msg").as_string(),
            "refused peer=127.0.0.1:5555 status=429 conn=42 topic=room:lobby run=r-1 ref=7 key=key_ab event=phx_join");
}

TEST(JsonLog, ConnIdIsAStringUnlessItIsAShortRunOfDigits) {
  EXPECT_EQ(record("conn=abc").at("conn_id").as_string(), "abc");
  EXPECT_EQ(record("conn=-1").at("conn_id").as_string(), "-1");
  EXPECT_EQ(record("conn=1234567890123456789").at("conn_id").as_string(), "1234567890123456789");  // 19 digits
  EXPECT_EQ(record("conn=123456789012345678").at("conn_id").as_int64(), 123456789012345678);
}

TEST(JsonLog, OnlyWholeKnownKeysAreLiftedOnceEach) {
  const auto line = json_record("info", kTs, 1, "topic= topic=first topic=second xtopic=no =bare foo=bar conn");
  const auto o = parse_record(line);
  EXPECT_EQ(o.at("topic").as_string(), "first");  // empty values skipped, then the first wins
  EXPECT_EQ(occurrences(line, "\"topic\":"), 1u) << line;
  EXPECT_FALSE(o.contains("xtopic"));
  EXPECT_FALSE(o.contains("foo"));
  EXPECT_FALSE(o.contains("conn_id"));
  EXPECT_EQ(o.size(), 5u) << line;
}

TEST(JsonLog, MessageTokensCannotOverwriteTheRecordsOwnFields) {
  const auto line = json_record("error", kTs, 3, "ts=forged level=debug msg=x thread=99");
  const auto o = parse_record(line);
  EXPECT_EQ(o.at("ts").as_string(), "2023-11-14T22:13:20.123Z");
  EXPECT_EQ(o.at("level").as_string(), "error");
  EXPECT_EQ(o.at("thread").as_int64(), 3);
  EXPECT_EQ(occurrences(line, "\"level\":"), 1u);
  EXPECT_EQ(occurrences(line, "\"ts\":"), 1u);
}

TEST(JsonLog, HostileFieldValuesAreEscaped) {
  const auto line = json_record("info", kTs, 1, std::string("joined topic=a\"b\\c\x01\",\"level\":\"x ref=9"));
  const auto o = parse_record(line);
  EXPECT_EQ(std::string_view(o.at("topic").as_string()), "a\"b\\c\x01\",\"level\":\"x");
  EXPECT_EQ(o.at("ref").as_string(), "9");
  EXPECT_EQ(o.at("level").as_string(), "info");
  EXPECT_EQ(occurrences(line, "\"level\":"), 1u);
}
