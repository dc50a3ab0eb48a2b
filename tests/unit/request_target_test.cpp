#include <gtest/gtest.h>

#include "net/admission.hpp"
#include "net/request_target.hpp"

using namespace synapse::net;

TEST(RequestTarget, PathAndQuery) {
  RequestTarget t;
  ASSERT_TRUE(parse_target("/cortex/websocket?vsn=2.0.0&api_key=syn_a_b%2Bc&x", t));
  EXPECT_EQ(t.path, "/cortex/websocket");
  EXPECT_EQ(*query_param(t, "vsn"), "2.0.0");
  EXPECT_EQ(*query_param(t, "api_key"), "syn_a_b+c");
  EXPECT_EQ(*query_param(t, "x"), "");
  EXPECT_FALSE(query_param(t, "token").has_value());
}

TEST(RequestTarget, PlusIsSpaceInQueryOnly) {
  RequestTarget t;
  ASSERT_TRUE(parse_target("/a+b?q=c+d", t));
  EXPECT_EQ(t.path, "/a+b");
  EXPECT_EQ(*query_param(t, "q"), "c d");
}

TEST(RequestTarget, Refusals) {
  RequestTarget t;
  for (const char* bad : {"", "relative", "http://host/abs", "/%", "/%4", "/%zz", "/a%00b", "/?k=%0a", "/?k=%G1"}) {
    EXPECT_FALSE(parse_target(bad, t)) << bad;
  }
}

TEST(Origin, AllowList) {
  EXPECT_TRUE(origin_allowed("http://127.0.0.1:4000", "127.0.0.1:4000", {}));
  EXPECT_FALSE(origin_allowed("http://evil.example", "127.0.0.1:4000", {}));
  EXPECT_TRUE(origin_allowed("https://app.example", "x", {"https://app.example"}));
  EXPECT_TRUE(origin_allowed("HTTPS://APP.EXAMPLE", "x", {"https://app.example"}));
  EXPECT_FALSE(origin_allowed("https://app.example.evil", "x", {"https://app.example"}));
  EXPECT_TRUE(origin_allowed("anything", "x", {"*"}));
}
