// The two forms of a published message (pubsub/publish_frame.hpp): a body
// carried by the backends, framed at the delivery edge into exactly the
// bytes the node built itself before framing moved out of the Lua.
#include "pubsub/publish_frame.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace {

using synapse::pubsub::decode_body;
using synapse::pubsub::encode_body;
using synapse::pubsub::frame_local;
using synapse::pubsub::frame_numbered;
using synapse::pubsub::local_tail;
using synapse::pubsub::numbered_tail;
using synapse::pubsub::publish_head;

struct Case {
  std::string topic, event, payload;
  bool empty;
  std::string from;
  std::int64_t ts;
};

const std::vector<Case> kCases = {
    {"room:lobby", "msg", R"({"body":"hi"})", false, "agent-1", 1796316295123},
    {"room:lobby", "ping", "{}", true, "agent-1", 0},
    // Newlines, quotes and backslashes in every field: the body's separators
    // must not be confused with them.
    {"room:\"odd\"\nname", "ev\nent\"\\", "{\"a\":\"x\\ny\",\n \"b\":[1,2]\n}", false, "from\n\"me\"", 42},
    {"t", "e", "{ }", false, "", -5},
    {std::string(300, 'x'), "big", "{\"p\":\"" + std::string(70000, 'y') + "\"}", false, "f", 7},
};

TEST(PublishFrame, NumberedFrameFromABodyIsByteIdenticalToTheNodeBuiltFrame) {
  for (const auto& c : kCases) {
    const std::string body = encode_body(c.event, c.payload, c.empty, c.from, c.ts);
    const auto parts = decode_body(body);
    ASSERT_TRUE(parts) << body;
    for (const std::string& epoch : std::vector<std::string>{"0123456789abcdef", "", std::string(60, 'e')}) {
      const std::string want =
          publish_head(c.topic, c.event, c.payload, c.empty, c.from, c.ts) + numbered_tail(epoch, 18446744073709551615u);
      EXPECT_EQ(frame_numbered(c.topic, *parts, epoch, 18446744073709551615u).payload(), want);
      const std::string want1 = publish_head(c.topic, c.event, c.payload, c.empty, c.from, c.ts) + numbered_tail(epoch, 1);
      EXPECT_EQ(frame_numbered(c.topic, *parts, epoch, 1).payload(), want1);
    }
    EXPECT_EQ(frame_local(c.topic, *parts).payload(),
              publish_head(c.topic, c.event, c.payload, c.empty, c.from, c.ts) + std::string(local_tail));
  }
}

TEST(PublishFrame, BodyCarriesNoPhoenixFrame) {
  const std::string body = encode_body("msg", R"({"body":"hi"})", false, "agent-1", 5);
  EXPECT_EQ(body.find("[null,null,"), std::string::npos);
  EXPECT_EQ(body.find("_meta"), std::string::npos);
  EXPECT_EQ(body.find("room"), std::string::npos);  // the topic is the channel's, not the body's
}

TEST(PublishFrame, MalformedBodiesAreRejected) {
  // A frame as older nodes stored it in the Redis stream is not a body.
  EXPECT_FALSE(decode_body(R"([null,null,"t","e",{"_meta":{"from":"a","ts":1,"epoch":"e","offset":1}}])"));
  EXPECT_FALSE(decode_body(""));
  EXPECT_FALSE(decode_body("12\n0\n\"e\"\n\"f\""));     // no payload line
  EXPECT_FALSE(decode_body("x\n0\n\"e\"\n\"f\"\n{}"));   // bad timestamp
  EXPECT_FALSE(decode_body("1\n2\n\"e\"\n\"f\"\n{}"));   // bad flag
  EXPECT_FALSE(decode_body("1\n0\ne\n\"f\"\n{}"));       // event not a JSON string
  EXPECT_TRUE(decode_body("1\n0\n\"e\"\n\"f\"\n{}"));
}

}  // namespace
