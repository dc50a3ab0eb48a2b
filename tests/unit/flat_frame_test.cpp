// protocol::decode_flat, the tree-less decoder of string-only frames (an
// agent worker's tokens): whatever it accepts, decode() accepts too, with the
// same envelope fields and the same payload; what it refuses, it refuses
// without effect (the full decode takes the frame).
#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "protocol/envelope.hpp"
#include "protocol/flat_frame.hpp"
#include "wire/utf8.hpp"

using namespace synapse::protocol;
namespace json = boost::json;

namespace {

bool same(const std::optional<std::string_view>& a, const std::optional<std::string_view>& b) {
  return a.has_value() == b.has_value() && (!a || *a == *b);
}

// When decode_flat accepts `text`, decode accepts it to the same frame.
// Returns whether decode_flat accepted.
bool check_agrees(std::string_view text) {
  FlatFrame f;
  if (!decode_flat(text, f)) return false;
  Envelope e;
  std::string err;
  EXPECT_TRUE(decode(text, e, err)) << "flat accepted what decode refuses (" << err << "): " << text;
  if (!e.payload) return true;
  EXPECT_TRUE(same(f.join_ref, e.join_ref)) << text;
  EXPECT_TRUE(same(f.ref, e.ref)) << text;
  EXPECT_EQ(f.topic, e.topic) << text;
  EXPECT_EQ(f.event, e.event) << text;
  EXPECT_EQ(f.payload_raw, e.payload_raw) << text;
  EXPECT_EQ(f.n_fields, e.payload->size()) << text;
  std::size_t i = 0;
  for (const auto& kv : *e.payload) {
    if (i >= f.n_fields) break;
    EXPECT_EQ(f.fields[i].key, kv.key()) << text;
    std::string scratch;
    EXPECT_TRUE(kv.value().is_string()) << text;
    if (kv.value().is_string()) {
      EXPECT_EQ(flat_value(f.fields[i], scratch), std::string_view(kv.value().get_string())) << text;
    }
    ++i;
  }
  return true;
}

}  // namespace

TEST(FlatFrame, ReadsAWorkerToken) {
  FlatFrame f;
  const std::string text = R"(["j1",null,"agent:bench","token",{"run_id":"run_ab","text":"hello "}])";
  ASSERT_TRUE(decode_flat(text, f));
  EXPECT_EQ(*f.join_ref, "j1");
  EXPECT_FALSE(f.ref);
  EXPECT_EQ(f.topic, "agent:bench");
  EXPECT_EQ(f.event, "token");
  EXPECT_EQ(f.payload_raw, R"({"run_id":"run_ab","text":"hello "})");
  ASSERT_EQ(f.n_fields, 2u);
  ASSERT_NE(f.find("text"), nullptr);
  EXPECT_EQ(f.find("text")->raw, "hello ");
  EXPECT_EQ(f.find("run_id")->raw, "run_ab");
  EXPECT_EQ(f.find("nope"), nullptr);
  EXPECT_TRUE(check_agrees(text));
}

TEST(FlatFrame, AcceptsWhitespaceSimpleEscapesAndEmptyObjects) {
  const char* good[] = {
      R"( [ "1" , "2" , "t:a" , "e" , { "k" : "v" } ] )",
      "[null,null,\"t\",\"e\",{}]",
      "[null,null,\"t\",\"e\",{ }]\n",
      R"([null,"r","t","e",{"a":"q\"b\\s\/\n\t\r\b\f"}])",
      R"([null,null,"t","e",{"a":"","b":"é😀"}])",
      R"([null,null,"t","e",{"a":"1","b":"2","c":"3","d":"4","e":"5","f":"6","g":"7","h":"8"}])",
  };
  for (const char* t : good) EXPECT_TRUE(check_agrees(t)) << t;
  FlatFrame f;
  ASSERT_TRUE(decode_flat(R"([null,"r","t","e",{"a":"q\"b\\s\/\n\t\r\b\f"}])", f));
  std::string scratch;
  EXPECT_TRUE(f.fields[0].escaped);
  EXPECT_EQ(flat_value(f.fields[0], scratch), "q\"b\\s/\n\t\r\b\f");
}

TEST(FlatFrame, LeavesEverythingElseToTheFullDecode) {
  const char* other[] = {
      "",
      "[]",
      R"(["1","2","t","e"])",
      R"(["1","2","t","e",{}, 1])",
      R"(["1","2","t","e",{}]x)",
      R"(["1","2","t","e",{}])" "]",
      R"(["1","2","t","e",{"a":1}])",
      R"(["1","2","t","e",{"a":null}])",
      R"(["1","2","t","e",{"a":{"b":"c"}}])",
      R"(["1","2","t","e",{"a":["b"]}])",
      R"(["1","2","t","e",{"a":"\u00e9"}])",
      R"(["1","2","t","e",{"a":"\x"}])",
      R"(["1","2","t","e",{"a\n":"b"}])",
      R"(["1","2","t\n","e",{}])",
      R"(["1\"","2","t","e",{}])",
      R"(["1","2","t","e",{"a":"b","a":"c"}])",
      R"(["1","2","t","e",{"a":"b",}])",
      R"(["1","2","t","e",{"a":"b"])",
      R"(["1","2","t","e",{"a" "b"}])",
      R"(["1","2","t","e",{"a":"b"}})",
      R"([nul,"2","t","e",{}])",
      R"([nullx,"2","t","e",{}])",
      R"([1,"2","t","e",{}])",
      R"(["1","2",null,"e",{}])",
      R"(["1","2","t","e",[]])",
      R"(["1","2","t","e",{"a":"1","b":"2","c":"3","d":"4","e":"5","f":"6","g":"7","h":"8","i":"9"}])",
      "[\"1\",\"2\",\"t\",\"e\",{\"a\":\"\x01\"}]",
      "[\"1\",\"2\",\"t\",\"e\",{\"a\":\"unterminated}]",
  };
  for (const char* t : other) {
    FlatFrame f;
    EXPECT_FALSE(decode_flat(t, f)) << t;
  }
}

// Random edits of token-shaped frames: decode_flat never accepts what decode
// reads differently (or refuses).
TEST(FlatFrame, AgreesWithDecodeOnMutatedFrames) {
  const std::vector<std::string> seeds = {
      R"(["j1",null,"agent:bench","token",{"run_id":"run_0123456789abcdef01234567","text":"12 1796276791000000 "}])",
      R"([ "7" , "8" , "agent:x" , "token" , { "text" : "a\"b\\c\nd" , "run_id" : "r" } ])",
      R"([null,"w3","agent:*","progress",{"run_id":"r","message":"half"}])",
  };
  const std::string alphabet = "[]{}\",:\\ nulltrbf/0u\x01\x7f" "abc";
  std::mt19937 rng(12345);
  std::size_t accepted = 0;
  for (int round = 0; round < 200000; ++round) {
    std::string t = seeds[static_cast<std::size_t>(round) % seeds.size()];
    const int edits = 1 + static_cast<int>(rng() % 3);
    for (int e = 0; e < edits && !t.empty(); ++e) {
      const std::size_t at = rng() % t.size();
      const char c = alphabet[rng() % alphabet.size()];
      switch (rng() % 3) {
        case 0: t[at] = c; break;
        case 1: t.insert(t.begin() + static_cast<std::ptrdiff_t>(at), c); break;
        default: t.erase(at, 1); break;
      }
    }
    if (!synapse::wire::is_valid_utf8(t)) continue;  // the WebSocket reader refuses those first
    accepted += check_agrees(t);
    if (::testing::Test::HasFailure()) break;
  }
  EXPECT_GT(accepted, 1000u);  // the edits do leave many frames in the fast shape
}
