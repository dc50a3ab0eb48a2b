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
#include "cortex/worker_pool.hpp"

namespace synapse::cortex {

struct CortexOptions {
  std::size_t workers = 4;
  std::size_t queue_limit = 1024;
  RankingOptions ranking;
  bool debug_crash = false;
};

inline constexpr std::string_view debug_crash_tool = "debug.crash";

class Cortex {
 public:
  Cortex(const CortexOptions& options, const std::string& db_path);
  ~Cortex();

  void add_tool(std::unique_ptr<Tool> tool);
  const Tool* find_tool(std::string_view name) const;
  // [{"name", "description", "input_schema"}] for the `tools` event.
  boost::json::array describe_tools() const;

  bool submit(WorkerPool::Job job) { return pool_.try_submit(std::move(job)); }
  MemoryStore& memory() { return memory_; }
  const RankingOptions& ranking() const { return options_.ranking; }
  bool debug_crash_enabled() const { return options_.debug_crash; }
  // Joins the workers; call before the I/O threads go away.
  void stop() { pool_.stop(); }

 private:
  CortexOptions options_;
  MemoryStore memory_;
  std::vector<std::unique_ptr<Tool>> tools_;
  WorkerPool pool_;  // last: its threads stop first
};

// memory.store, memory.search, memory.forget, memory.stats, demo.countdown,
// and debug.crash when enabled.
void register_builtin_tools(Cortex& cortex);

}  // namespace synapse::cortex
