// Tool arguments are checked against their schema before a run starts.
#include <gtest/gtest.h>

#include "cortex/arg_schema.hpp"

using synapse::cortex::check_args;
namespace json = boost::json;

namespace {
const json::object schema = json::parse(R"({"type":"object","required":["content"],"additionalProperties":false,
  "properties":{"content":{"type":"string","minLength":1,"maxLength":5},
                "tags":{"type":"array","maxItems":2,"items":{"type":"string"}},
                "importance":{"type":"number","minimum":0,"maximum":1},
                "steps":{"type":"integer","minimum":1},
                "scope":{"type":"string","enum":["agent","shared"]}}})")
                                .as_object();

std::vector<std::string> fields(const json::object& args) {
  std::vector<std::string> out;
  for (const auto& e : check_args(schema, args)) out.push_back(e.field);
  return out;
}
}  // namespace

TEST(ArgSchema, AcceptsValid) {
  EXPECT_TRUE(fields(json::parse(R"({"content":"hi","tags":["a"],"importance":0.5,"steps":3,"scope":"shared"})")
                         .as_object())
                  .empty());
  EXPECT_TRUE(fields(json::parse(R"({"content":"hi","steps":3.0})").as_object()).empty());
}

TEST(ArgSchema, ReportsEachProblemWithItsField) {
  using V = std::vector<std::string>;
  EXPECT_EQ(fields(json::object{}), V{"args.content"});
  EXPECT_EQ(fields(json::parse(R"({"content":5})").as_object()), V{"args.content"});
  EXPECT_EQ(fields(json::parse(R"({"content":"toolong"})").as_object()), V{"args.content"});
  EXPECT_EQ(fields(json::parse(R"({"content":""})").as_object()), V{"args.content"});
  EXPECT_EQ(fields(json::parse(R"({"content":"x","importance":2})").as_object()), V{"args.importance"});
  EXPECT_EQ(fields(json::parse(R"({"content":"x","steps":1.5})").as_object()), V{"args.steps"});
  EXPECT_EQ(fields(json::parse(R"({"content":"x","scope":"world"})").as_object()), V{"args.scope"});
  EXPECT_EQ(fields(json::parse(R"({"content":"x","tags":["a",1]})").as_object()), V{"args.tags[1]"});
  EXPECT_EQ(fields(json::parse(R"({"content":"x","tags":["a","b","c"]})").as_object()), V{"args.tags"});
  EXPECT_EQ(fields(json::parse(R"({"content":"x","extra":1})").as_object()), V{"args.extra"});
  EXPECT_EQ(fields(json::parse(R"({"content":"a\u0000b"})").as_object()), V{"args.content"});
}

TEST(ArgSchema, LengthCountsCharactersNotBytes) {
  EXPECT_TRUE(fields(json::parse("{\"content\":\"\xC3\xA9\xC3\xA9\xC3\xA9\xC3\xA9\xC3\xA9\"}").as_object()).empty());
}
