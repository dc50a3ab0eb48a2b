#include <gtest/gtest.h>

#include "redis/connection.hpp"
#include "redis/url.hpp"

using synapse::redis::parse_url;

TEST(RedisUrl, HostPortAndDatabase) {
  auto u = parse_url("redis://127.0.0.1:6380/3");
  ASSERT_TRUE(u);
  EXPECT_EQ(u->host, "127.0.0.1");
  EXPECT_EQ(u->port, 6380);
  EXPECT_EQ(u->db, 3);
  EXPECT_EQ(u->text(), "redis://127.0.0.1:6380/3");
}

TEST(RedisUrl, Defaults) {
  auto u = parse_url("redis://cache.internal");
  ASSERT_TRUE(u);
  EXPECT_EQ(u->host, "cache.internal");
  EXPECT_EQ(u->port, 6379);
  EXPECT_EQ(u->db, 0);
  auto v = parse_url("redis://[::1]:7000/");
  ASSERT_TRUE(v);
  EXPECT_EQ(v->host, "::1");
  EXPECT_EQ(v->port, 7000);
}

TEST(RedisUrl, RefusesWhatItCannotHonour) {
  std::string why;
  EXPECT_FALSE(parse_url("http://127.0.0.1:6379", &why));
  EXPECT_NE(why.find("redis://"), std::string::npos);
  EXPECT_FALSE(parse_url("redis://:6379", &why));
  EXPECT_FALSE(parse_url("redis://host:0", &why));
  EXPECT_FALSE(parse_url("redis://host:70000", &why));
  EXPECT_FALSE(parse_url("redis://host:6379/16", &why));
  EXPECT_FALSE(parse_url("redis://host:6379/x", &why));
  EXPECT_FALSE(parse_url("redis://user:pw@host:6379", &why));
  EXPECT_NE(why.find("credentials"), std::string::npos);
  EXPECT_FALSE(parse_url("redis://[::1:6379", &why));
}

TEST(RedisCommand, EncodesBinarySafeBulkStrings) {
  std::string out;
  synapse::redis::append_command(out, {"SET", "k", std::string("a\r\n\0b", 5)});
  EXPECT_EQ(out, std::string("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\na\r\n\0b\r\n", 31));
}
