// Cortex runs for the admin API: the ones running and the last few that
// ended. Runs start and end a few times per query (not per message), so one
// mutex is cheap; no I/O thread ever waits on anything but this short lock.
#pragma once

#include <cstdint>
#include <deque>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace synapse::metrics {

struct RunRecord {
  std::string id;  // "<connection id>.<run number>": unique in this process
  std::uint64_t connection_id = 0;
  std::string topic;
  std::string ref;
  std::string agent_id;
  std::int64_t started_at_ms = 0;           // unix time
  std::optional<std::int64_t> ended_at_ms;  // unix time; empty while running
  std::string outcome;                      // empty while running
};

class RunLog {
 public:
  static constexpr std::size_t recent_limit = 100;

  void started(RunRecord r);
  // Moves the run to the recent list; unknown ids are ignored.
  void ended(const std::string& id, std::string_view outcome, std::int64_t now_ms);
  std::vector<RunRecord> running() const;
  std::vector<RunRecord> recent() const;  // newest first

 private:
  mutable std::mutex mu_;
  std::unordered_map<std::string, RunRecord> running_;
  std::deque<RunRecord> recent_;
};

}  // namespace synapse::metrics
