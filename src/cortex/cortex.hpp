// The cortex service: the tool registry, the memory engine and the worker
// pool that runs queries and tools off the I/O threads.
#pragma once

#include <boost/json.hpp>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "cortex/memory_store.hpp"
#include "cortex/tool.hpp"
#include "cortex/tool_registry.hpp"
#include "cortex/worker_pool.hpp"

namespace synapse::cortex {

struct CortexOptions {
  std::size_t workers = 4;
  std::size_t queue_limit = 1024;
  std::size_t tenant_queue_limit = 256;  // 0: only queue_limit bounds a tenant
  QueryBudget budget;
  RankingOptions ranking;
  bool debug_crash = false;
};

inline constexpr std::string_view debug_crash_tool = "debug.crash";

class Cortex {
 public:
  Cortex(const CortexOptions& options, const std::string& db_path);
  ~Cortex();

  // A built-in (blocking) tool, registered under provider "builtin" behind
  // the asynchronous seam: its calls run on this cortex's worker pool.
  void add_tool(std::unique_ptr<BlockingTool> tool);
  // Every provider's tools (built-in, MCP, ...); changes at run time.
  ToolRegistry& tools() { return tools_; }
  std::shared_ptr<const Tool> find_tool(std::string_view name) const { return tools_.find(name); }
  // [{"name", "description", "input_schema", "provider", "available"}] for the `tools` event.
  boost::json::array describe_tools() const { return tools_.describe(); }

  // Never waits for a worker (I/O threads call it).
  Admit submit(const Lane& lane, WorkerPool::Job job) { return pool_.try_submit(lane, std::move(job)); }
  std::size_t tenant_queue_limit() const { return options_.tenant_queue_limit; }
  const QueryBudget& budget() const { return options_.budget; }
  MemoryStore& memory() { return memory_; }
  const RankingOptions& ranking() const { return options_.ranking; }
  bool debug_crash_enabled() const { return options_.debug_crash; }
  // Joins the workers; call before the I/O threads go away.
  void stop() { pool_.stop(); }

 private:
  CortexOptions options_;
  MemoryStore memory_;
  ToolRegistry tools_;
  WorkerPool pool_;  // last: its threads stop first
};

// memory.store, memory.search, memory.forget, memory.stats, demo.countdown,
// and debug.crash when enabled.
void register_builtin_tools(Cortex& cortex);

}  // namespace synapse::cortex
