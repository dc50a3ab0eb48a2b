// Channel capabilities, origin patterns, and the hook answer parser.
#include <gtest/gtest.h>

#include "auth/capabilities.hpp"
#include "auth/principal.hpp"
#include "hooks/hooks.hpp"
#include "net/admission.hpp"

using namespace synapse;
using auth::Capability;

TEST(Capabilities, ParseAndMatch) {
  std::string why;
  auto c = auth::parse_capabilities_text(R"({"subscribe": ["room:*"], "publish": ["room:chat"]})", &why);
  ASSERT_TRUE(c) << why;
  EXPECT_TRUE(c->allows(Capability::subscribe, "room:1"));
  EXPECT_FALSE(c->allows(Capability::subscribe, "other:1"));
  EXPECT_TRUE(c->allows(Capability::publish, "room:chat"));
  EXPECT_FALSE(c->allows(Capability::publish, "room:chat2"));
  EXPECT_FALSE(c->allows(Capability::presence, "room:chat"));  // not listed: nothing
  EXPECT_FALSE(c->allows(Capability::history, "room:chat"));
  auto again = auth::parse_capabilities_text(auth::capabilities_json(*c));
  ASSERT_TRUE(again);
  EXPECT_EQ(*again, *c);
  for (const char* bad : {R"({"subscribe": "room:*"})", R"({"write": ["*"]})", R"({"publish": [1]})",
                          R"({"publish": [""]})", R"(["room:*"])", "not json"}) {
    EXPECT_FALSE(auth::parse_capabilities_text(bad, &why)) << bad;
  }
}

TEST(Capabilities, LayersAndAdmin) {
  auth::Principal p;
  EXPECT_TRUE(auth::permitted(p, Capability::publish, "x:y"));  // no layer: unrestricted
  p.key_caps = auth::parse_capabilities_text(R"({"subscribe": ["room:*"], "publish": ["room:*"]})");
  p.token_caps = auth::parse_capabilities_text(R"({"subscribe": ["*"], "publish": ["*"]})");
  EXPECT_TRUE(auth::permitted(p, Capability::publish, "room:a"));
  EXPECT_FALSE(auth::permitted(p, Capability::publish, "feed:a"));  // the key's layer refuses
  p.token_caps = auth::parse_capabilities_text(R"({"subscribe": ["room:a"]})");
  EXPECT_FALSE(auth::permitted(p, Capability::publish, "room:a"));  // the token's layer refuses
  EXPECT_FALSE(auth::permitted(p, Capability::subscribe, "room:b"));
  p.admin = true;
  EXPECT_TRUE(auth::permitted(p, Capability::history, "anything:at-all"));
}

TEST(OriginPatterns, Match) {
  using net::origin_pattern_matches;
  EXPECT_TRUE(origin_pattern_matches("http://localhost:*", "http://localhost:3000"));
  EXPECT_TRUE(origin_pattern_matches("http://localhost:*", "http://localhost"));
  EXPECT_TRUE(origin_pattern_matches("http://localhost:*", "HTTP://LocalHost:8080"));
  EXPECT_FALSE(origin_pattern_matches("http://localhost:*", "https://localhost:3000"));
  EXPECT_FALSE(origin_pattern_matches("http://localhost:*", "http://localhost.evil.com:3000"));
  EXPECT_FALSE(origin_pattern_matches("http://localhost:*", "http://localhost:3000/x"));
  EXPECT_FALSE(origin_pattern_matches("http://localhost:*", "http://localhost:abc"));
  EXPECT_TRUE(origin_pattern_matches("https://*.example.com", "https://a.example.com"));
  EXPECT_TRUE(origin_pattern_matches("https://*.example.com", "https://a.b.example.com"));
  EXPECT_FALSE(origin_pattern_matches("https://*.example.com", "https://example.com"));
  EXPECT_FALSE(origin_pattern_matches("https://*.example.com", "https://.example.com"));
  EXPECT_FALSE(origin_pattern_matches("https://*.example.com", "https://evilexample.com"));
  EXPECT_FALSE(origin_pattern_matches("https://*.example.com", "https://example.com.evil.com"));
  EXPECT_FALSE(origin_pattern_matches("https://*.example.com", "https://a.example.com:444"));
  EXPECT_FALSE(origin_pattern_matches("https://*.example.com", "https://u@a.example.com"));
  EXPECT_FALSE(origin_pattern_matches("https://*.example.com", "https://a.example.com#x"));
  EXPECT_TRUE(origin_pattern_matches("https://*.example.com:*", "https://a.example.com:444"));
  EXPECT_FALSE(origin_pattern_matches("https://*.example.com", "null"));
  EXPECT_TRUE(origin_pattern_matches("https://app.test", "https://APP.test"));  // exact, no star
  EXPECT_FALSE(origin_pattern_matches("https://app.test", "https://app.test:443"));
  std::vector<std::string> allowed{"http://localhost:*", "https://*.example.com"};
  EXPECT_TRUE(net::origin_allowed("https://x.example.com", "h", allowed));
  EXPECT_FALSE(net::origin_allowed("https://x.example.org", "h", allowed));
  EXPECT_TRUE(net::origin_allowed("http://h:1", "h:1", {}));  // same host when no list
  const std::string why = net::origin_refusal("https://evil.test", false);
  EXPECT_NE(why.find("https://evil.test"), std::string::npos);
  EXPECT_NE(why.find("--allowed-origins"), std::string::npos);
}

TEST(HookVerdict, ParsesAnswersAndRefusesGarbage) {
  using hooks::parse_verdict;
  auto v = parse_verdict(200, R"({"allow": true, "data": {"a": 1}, "payload": {"b": 2}})");
  EXPECT_TRUE(v.allow);
  EXPECT_FALSE(v.failed);
  EXPECT_EQ(v.data_json, R"({"a":1})");
  EXPECT_EQ(*v.payload_json, R"({"b":2})");
  v = parse_verdict(200, R"({"allow": false, "reason": "nope"})");
  EXPECT_FALSE(v.allow);
  EXPECT_FALSE(v.failed);
  EXPECT_EQ(v.reason, "nope");
  for (auto [status, body] : std::initializer_list<std::pair<int, const char*>>{
           {500, R"({"allow": true})"},
           {302, R"({"allow": true})"},
           {200, "not json"},
           {200, "[true]"},
           {200, "{}"},
           {200, R"({"allow": "true"})"},
           {200, R"({"allow": true, "reason": 5})"},
           {200, R"({"allow": true, "data": [1]})"},
           {200, R"({"allow": true, "payload": "x"})"}}) {
    EXPECT_TRUE(parse_verdict(status, body).failed) << status << " " << body;
  }
}

TEST(HookUrl, OnlyPlainHttp) {
  EXPECT_TRUE(hooks::parse_http_url("http://127.0.0.1:8080/hooks/x"));
  EXPECT_EQ(hooks::parse_http_url("http://127.0.0.1:8080/hooks/x")->target, "/hooks/x");
  EXPECT_EQ(hooks::parse_http_url("http://backend")->port, "80");
  EXPECT_FALSE(hooks::parse_http_url("https://backend/x"));
  EXPECT_FALSE(hooks::parse_http_url("http://user@backend/x"));
  EXPECT_FALSE(hooks::parse_http_url("http://backend:x/"));
  EXPECT_FALSE(hooks::parse_http_url("http:///x"));
  EXPECT_FALSE(hooks::parse_http_url("http://b/a b"));
}
