// The V2 envelope codec and topic rules.
#include <gtest/gtest.h>

#include "protocol/envelope.hpp"
#include "protocol/errors.hpp"
#include "protocol/topic.hpp"

using namespace synapse::protocol;

TEST(Envelope, DecodesAllFields) {
  Envelope e;
  std::string err;
  ASSERT_TRUE(decode(R"(["3","7","room:a","shout",{"x":1}])", e, err)) << err;
  EXPECT_EQ(*e.join_ref, "3");
  EXPECT_EQ(*e.ref, "7");
  EXPECT_EQ(e.topic, "room:a");
  EXPECT_EQ(e.event, "shout");
  EXPECT_EQ(e.payload->at("x").as_int64(), 1);
}

TEST(Envelope, NullRefsAreAbsent) {
  Envelope e;
  std::string err;
  ASSERT_TRUE(decode(R"([null,null,"phoenix","heartbeat",{}])", e, err));
  EXPECT_FALSE(e.join_ref.has_value());
  EXPECT_FALSE(e.ref.has_value());
}

TEST(Envelope, RefusesMalformedFrames) {
  const char* bad[] = {
      "not json",
      "{}",
      "[]",
      R"(["1","1","t","e"])",
      R"(["1","1","t","e",{},1])",
      R"([1,"1","t","e",{}])",
      R"(["1",2,"t","e",{}])",
      R"(["1","1",3,"e",{}])",
      R"(["1","1","t",null,{}])",
      R"(["1","1","t","e",[]])",
      R"(["1","1","t","e","payload"])",
      R"(["1","1","t","e",{})",
  };
  for (const char* text : bad) {
    Envelope e;
    std::string err;
    EXPECT_FALSE(decode(text, e, err)) << text;
    EXPECT_FALSE(err.empty()) << text;
  }
}

TEST(Envelope, DepthLimitIs64CountingTheFrame) {
  // The frame's array is depth 1 and the payload object depth 2.
  auto nested = [](int extra) {
    std::string open, close;
    for (int i = 0; i < extra; ++i) {
      open += "[";
      close += "]";
    }
    return R"(["1","1","t","e",{"a":)" + open + "0" + close + "}]";
  };
  Envelope e;
  std::string err;
  EXPECT_TRUE(decode(nested(62), e, err)) << err;  // 64 levels in all
  EXPECT_FALSE(decode(nested(63), e, err));        // 65
  EXPECT_NE(err.find("64"), std::string::npos);
}

TEST(Envelope, EncodesEscapedStringsAndRoundTrips) {
  const std::string topic = "room:\"q\"\\";
  const std::string text = encode_push(std::string_view("5"), topic, "ev\n", boost::json::object{{"k", "v"}});
  Envelope e;
  std::string err;
  ASSERT_TRUE(decode(text, e, err)) << err << text;
  EXPECT_EQ(*e.join_ref, "5");
  EXPECT_FALSE(e.ref.has_value());
  EXPECT_EQ(e.topic, topic);
  EXPECT_EQ(e.event, "ev\n");
}

TEST(Envelope, ReplyShape) {
  const std::string text = encode_reply(std::nullopt, std::string_view("9"), "phoenix", false,
                                        error_response("rate_limited", "slow down"));
  const auto v = boost::json::parse(text).as_array();
  EXPECT_TRUE(v[0].is_null());
  EXPECT_EQ(v[1].as_string(), "9");
  EXPECT_EQ(v[3].as_string(), "phx_reply");
  EXPECT_EQ(v[4].at("status").as_string(), "error");
  EXPECT_EQ(v[4].at("response").at("reason").as_string(), "rate_limited");
}

// The empty response (a heartbeat's) is written without the serializer:
// byte for byte what the serializer writes.
TEST(Envelope, AnEmptyReplyIsTheSameTextAsASerializedOne) {
  EXPECT_EQ(encode_reply(std::string_view("1"), std::string_view("7"), "phoenix", true, {}),
            R"(["1","7","phoenix","phx_reply",{"status":"ok","response":{}}])");
  EXPECT_EQ(encode_reply(std::nullopt, std::nullopt, "room:a", false, {}),
            R"([null,null,"room:a","phx_reply",{"status":"error","response":{}}])");
  EXPECT_EQ(encode_reply(std::nullopt, std::string_view("2"), "room:a", true, {{"n", 1}}),
            R"([null,"2","room:a","phx_reply",{"status":"ok","response":{"n":1}}])");
}

TEST(Envelope, JsonStringEscapesControlCharacters) {
  std::string out;
  append_json_string(out, std::string("a\x01\x1f\"", 4));
  EXPECT_EQ(out, "\"a\\u0001\\u001f\\\"\"");
}

TEST(Topic, Names) {
  EXPECT_TRUE(valid_topic_name("room:lobby"));
  EXPECT_TRUE(valid_topic_name("a.b-c_d@e:f:g"));
  EXPECT_FALSE(valid_topic_name("nocolon"));
  EXPECT_FALSE(valid_topic_name(":name"));
  EXPECT_FALSE(valid_topic_name("ns:"));
  EXPECT_FALSE(valid_topic_name("room:a b"));
  EXPECT_FALSE(valid_topic_name("room:../etc"));  // '/' is not allowed
  EXPECT_TRUE(valid_topic_name("r:" + std::string(253, 'x')));
  EXPECT_FALSE(valid_topic_name("r:" + std::string(254, 'x')));
  EXPECT_EQ(classify_topic("phoenix"), TopicKind::phoenix);
  EXPECT_EQ(classify_topic("cortex:agent-1"), TopicKind::cortex);
  EXPECT_EQ(classify_topic("room:1"), TopicKind::pubsub);
  EXPECT_EQ(classify_topic("room 1"), TopicKind::invalid);
  EXPECT_EQ(cortex_agent("cortex:bob"), "bob");
}

TEST(Topic, ReservedEventsAndPatterns) {
  EXPECT_TRUE(is_reserved_event("phx_join"));
  EXPECT_TRUE(is_reserved_event("presence_diff"));
  EXPECT_TRUE(is_reserved_event("_private"));
  EXPECT_FALSE(is_reserved_event("message"));
  EXPECT_TRUE(valid_event_name(std::string(64, 'e')));
  EXPECT_FALSE(valid_event_name(std::string(65, 'e')));
  EXPECT_FALSE(valid_event_name(""));
  EXPECT_TRUE(topic_matches("room:*", "room:a"));
  EXPECT_FALSE(topic_matches("room:*", "lobby:a"));
  EXPECT_TRUE(topic_matches("room:a", "room:a"));
  EXPECT_FALSE(topic_matches("room:a", "room:ab"));
}

TEST(Envelope, RawPayloadIsTheClientsOwnText) {
  Envelope e;
  std::string err;
  const std::string text = R"( [ "1" , "a\",\"b" , "room:x" , "e,v" ,  {"n": 123456789012345678901234567890, "s":"]"} ] )";
  ASSERT_TRUE(decode(text, e, err)) << err;
  EXPECT_EQ(e.payload_raw, R"({"n": 123456789012345678901234567890, "s":"]"})");
  ASSERT_TRUE(decode(R"([null,null,"t","e",{}])", e, err));
  EXPECT_EQ(e.payload_raw, "{}");
}
