#include "metrics/run_log.hpp"

#include <algorithm>

namespace synapse::metrics {

void RunLog::started(RunRecord r) {
  std::lock_guard lock(mu_);
  auto id = r.id;
  running_.insert_or_assign(std::move(id), std::move(r));
}

void RunLog::ended(const std::string& id, std::string_view outcome, std::int64_t now_ms) {
  std::lock_guard lock(mu_);
  auto it = running_.find(id);
  if (it == running_.end()) return;
  RunRecord r = std::move(it->second);
  running_.erase(it);
  r.ended_at_ms = now_ms;
  r.outcome = std::string(outcome);
  recent_.push_front(std::move(r));
  if (recent_.size() > recent_limit) recent_.pop_back();
}

std::vector<RunRecord> RunLog::running() const {
  std::lock_guard lock(mu_);
  std::vector<RunRecord> out;
  out.reserve(running_.size());
  for (const auto& [id, r] : running_) out.push_back(r);
  std::sort(out.begin(), out.end(), [](const RunRecord& a, const RunRecord& b) { return a.started_at_ms < b.started_at_ms; });
  return out;
}

std::vector<RunRecord> RunLog::recent() const {
  std::lock_guard lock(mu_);
  return {recent_.begin(), recent_.end()};
}

}  // namespace synapse::metrics
