// The built-in tools (protocol section 4).
#include <chrono>
#include <fmt/format.h>

#include "cortex/cortex.hpp"
#include "cortex/query_engine.hpp"

namespace synapse::cortex {
namespace json = boost::json;

namespace {

ToolSpec make_spec(std::string name, std::string description, std::string_view schema) {
  return ToolSpec{std::move(name), std::move(description), json::parse(schema).as_object()};
}

std::int64_t int_arg(const json::object& args, std::string_view key, std::int64_t fallback) {
  const json::value* v = args.if_contains(key);
  if (!v) return fallback;
  if (v->is_int64()) return v->get_int64();
  if (v->is_uint64()) return static_cast<std::int64_t>(v->get_uint64());
  if (v->is_double()) return static_cast<std::int64_t>(v->get_double());
  return fallback;
}

class MemoryStoreTool final : public BlockingTool {
 public:
  explicit MemoryStoreTool(MemoryStore& m) : memory_(m) {}
  const ToolSpec& spec() const override { return spec_; }
  json::value run(const json::object& args, ToolContext& ctx) const override {
    NewMemory m;
    m.content = std::string(args.at("content").as_string());
    if (const json::value* tags = args.if_contains("tags")) {
      for (const auto& t : tags->as_array()) m.tags.emplace_back(t.as_string());
    }
    if (const json::value* imp = args.if_contains("importance")) m.importance = imp->to_number<double>();
    if (const json::value* scope = args.if_contains("scope")) m.scope = std::string(scope->as_string());
    const std::int64_t id = memory_.store(ctx.worker, ctx.caller, m);
    return json::object{{"id", id}};
  }

 private:
  MemoryStore& memory_;
  ToolSpec spec_ = make_spec("memory.store", "Store a memory for this agent (scope agent) or its whole tenant (scope shared)",
                             R"({"type":"object","required":["content"],"additionalProperties":false,
      "properties":{"content":{"type":"string","minLength":1,"maxLength":65536},
                    "tags":{"type":"array","maxItems":32,"items":{"type":"string","minLength":1,"maxLength":64}},
                    "importance":{"type":"number","minimum":0,"maximum":1},
                    "scope":{"type":"string","enum":["agent","shared"]}}})");
};

class MemorySearchTool final : public BlockingTool {
 public:
  MemorySearchTool(MemoryStore& m, const RankingOptions& r, const QueryBudget& b) : memory_(m), ranking_(r), budget_(b) {}
  const ToolSpec& spec() const override { return spec_; }
  json::value run(const json::object& args, ToolContext& ctx) const override {
    const std::string q(args.at("query").as_string());
    const auto limit = static_cast<std::size_t>(int_arg(args, "limit", 10));
    const std::string store = "";  // no routing bonus for a plain search
    // Under the same term and time budget as a query (docs/cortex.md).
    Recall recall = memory_.recall(ctx.worker, ctx.caller, q, ranking_.candidates, budget_.start(ctx.cancel));
    auto ranked = rank(std::move(recall.candidates), ranking_, store,
                       std::chrono::duration_cast<std::chrono::milliseconds>(
                           std::chrono::system_clock::now().time_since_epoch())
                           .count(),
                       limit);
    json::array results;
    for (const auto& r : ranked) results.push_back(result_json(r));
    return json::object{{"results", std::move(results)}, {"partial", recall.partial}};
  }

 private:
  MemoryStore& memory_;
  const RankingOptions& ranking_;
  const QueryBudget& budget_;
  ToolSpec spec_ = make_spec("memory.search", "Full-text search over the memories this agent can see",
                             R"({"type":"object","required":["query"],"additionalProperties":false,
      "properties":{"query":{"type":"string","minLength":1,"maxLength":8192},
                    "limit":{"type":"integer","minimum":1,"maximum":100}}})");
};

class MemoryForgetTool final : public BlockingTool {
 public:
  explicit MemoryForgetTool(MemoryStore& m) : memory_(m) {}
  const ToolSpec& spec() const override { return spec_; }
  json::value run(const json::object& args, ToolContext& ctx) const override {
    const std::int64_t id = int_arg(args, "id", 0);
    if (!memory_.forget(ctx.worker, ctx.caller, id)) {
      throw ToolError(fmt::format("no memory {} visible to this agent", id));
    }
    return json::object{{"id", id}, {"forgotten", true}};
  }

 private:
  MemoryStore& memory_;
  ToolSpec spec_ = make_spec("memory.forget", "Delete one memory this agent can see",
                             R"({"type":"object","required":["id"],"additionalProperties":false,
      "properties":{"id":{"type":"integer","minimum":1}}})");
};

class MemoryStatsTool final : public BlockingTool {
 public:
  explicit MemoryStatsTool(MemoryStore& m) : memory_(m) {}
  const ToolSpec& spec() const override { return spec_; }
  json::value run(const json::object&, ToolContext& ctx) const override {
    const MemoryStats s = memory_.stats(ctx.worker, ctx.caller);
    json::object by_store{{"semantic", 0}, {"episodic", 0}, {"procedural", 0}};
    for (const auto& [k, v] : s.by_store) by_store[k] = v;
    return json::object{{"visible", s.visible},     {"agent_scope", s.agent_scope},
                        {"shared_scope", s.shared_scope}, {"by_store", std::move(by_store)},
                        {"oldest_at", s.oldest_ms}, {"newest_at", s.newest_ms}};
  }

 private:
  MemoryStore& memory_;
  ToolSpec spec_ = make_spec("memory.stats", "Counts of the memories this agent can see",
                             R"({"type":"object","additionalProperties":false,"properties":{}})");
};

class CountdownTool final : public BlockingTool {
 public:
  const ToolSpec& spec() const override { return spec_; }
  json::value run(const json::object& args, ToolContext& ctx) const override {
    const std::int64_t steps = int_arg(args, "steps", 1);
    const std::int64_t interval = int_arg(args, "interval_ms", 100);
    for (std::int64_t i = 1; i <= steps; ++i) {
      if (ctx.cancel.wait_for(std::chrono::milliseconds(interval))) throw Cancelled{};
      ctx.progress(static_cast<double>(i), static_cast<double>(steps), fmt::format("{} of {}", i, steps));
    }
    return json::object{{"completed", steps}};
  }

 private:
  ToolSpec spec_ = make_spec("demo.countdown", "Counts to `steps`, one progress update every `interval_ms`",
                             R"({"type":"object","required":["steps","interval_ms"],"additionalProperties":false,
      "properties":{"steps":{"type":"integer","minimum":1,"maximum":10000},
                    "interval_ms":{"type":"integer","minimum":0,"maximum":60000}}})");
};

// Listed only when enabled; the cortex channel throws inside its handler
// when it is called, so tests can watch a channel crash and recover.
class DebugCrashTool final : public BlockingTool {
 public:
  const ToolSpec& spec() const override { return spec_; }
  json::value run(const json::object&, ToolContext&) const override { throw ToolError("debug.crash runs in the channel"); }

 private:
  ToolSpec spec_ = make_spec(std::string(debug_crash_tool),
                             "Fault injection: makes the cortex channel handler throw (enabled by cortex.debug_crash)",
                             R"({"type":"object","properties":{}})");
};

}  // namespace

void register_builtin_tools(Cortex& cortex) {
  cortex.add_tool(std::make_unique<MemoryStoreTool>(cortex.memory()));
  cortex.add_tool(std::make_unique<MemorySearchTool>(cortex.memory(), cortex.ranking(), cortex.budget()));
  cortex.add_tool(std::make_unique<MemoryForgetTool>(cortex.memory()));
  cortex.add_tool(std::make_unique<MemoryStatsTool>(cortex.memory()));
  cortex.add_tool(std::make_unique<CountdownTool>());
  if (cortex.debug_crash_enabled()) cortex.add_tool(std::make_unique<DebugCrashTool>());
}

}  // namespace synapse::cortex
