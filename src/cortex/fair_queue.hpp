// The worker pool's queue: waiting runs grouped by tenant, and within a
// tenant by API key, served round-robin at both levels, so that one tenant's
// backlog cannot delay another tenant's run by more than one turn.
//
// Contract (docs/cortex.md, "Scheduling"):
//   - push() appends to the back of its key's FIFO. A tenant (or key) that
//     had nothing waiting joins the back of the rotation, behind every
//     tenant (key) that was already waiting.
//   - pop() takes the front tenant, that tenant's front key, and that key's
//     oldest job; the key then goes to the back of its tenant's rotation and
//     the tenant to the back of the tenants' rotation (each only if it still
//     has jobs waiting; otherwise it leaves the rotation and costs nothing).
//   - Hence: if tenant X had nothing waiting when its job J arrived and k
//     other tenants had jobs waiting, at most k pops (one per such tenant)
//     return before J's tenant's turn; J itself is returned at that turn if
//     its key was X's only waiting key, or after at most one job of each of
//     X's m other waiting keys, at X's (m+1)-th turn at the latest, that is
//     within (m+1)(k+1) pops.
//   - Bounds: at most `total_limit` jobs wait in all, and at most
//     `tenant_limit` per tenant (0: no per-tenant bound); push() refuses past
//     either and leaves the queue unchanged.
// Not thread-safe: the worker pool holds its mutex around every call.
#pragma once

#include <cstddef>
#include <deque>
#include <list>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>

namespace synapse::cortex {

// Whose run a job is: its tenant and the API key (or the key that minted the
// token) it came through.
struct Lane {
  std::string tenant;
  std::string key;
};

// provider_full: a tool provider other than the worker pool (an MCP server)
// already runs its max_concurrent calls.
enum class Admit { accepted, queue_full, tenant_full, provider_full };

template <class T>
class FairQueue {
 public:
  FairQueue(std::size_t total_limit, std::size_t tenant_limit) : total_limit_(total_limit), tenant_limit_(tenant_limit) {}

  Admit push(const Lane& lane, T job) {
    if (size_ >= total_limit_) return Admit::queue_full;
    auto t = index_.find(lane.tenant);
    if (t != index_.end() && tenant_limit_ > 0 && t->second->queued >= tenant_limit_) return Admit::tenant_full;
    if (t == index_.end()) {
      ring_.emplace_back();
      ring_.back().name = lane.tenant;
      t = index_.emplace(lane.tenant, std::prev(ring_.end())).first;
    }
    TenantQ& tq = *t->second;
    auto k = tq.index.find(lane.key);
    if (k == tq.index.end()) {
      tq.ring.emplace_back();
      tq.ring.back().name = lane.key;
      k = tq.index.emplace(lane.key, std::prev(tq.ring.end())).first;
    }
    k->second->jobs.push_back(std::move(job));
    ++tq.queued;
    ++size_;
    return Admit::accepted;
  }

  // The next job in round-robin order, or nothing when empty.
  std::optional<T> pop() {
    if (ring_.empty()) return std::nullopt;
    auto t = ring_.begin();
    auto k = t->ring.begin();
    std::optional<T> job(std::move(k->jobs.front()));
    k->jobs.pop_front();
    --t->queued;
    --size_;
    if (k->jobs.empty()) {
      t->index.erase(k->name);
      t->ring.erase(k);
    } else {
      t->ring.splice(t->ring.end(), t->ring, k);
    }
    if (t->ring.empty()) {
      index_.erase(t->name);
      ring_.erase(t);
    } else {
      ring_.splice(ring_.end(), ring_, t);
    }
    return job;
  }

  std::size_t size() const noexcept { return size_; }
  bool empty() const noexcept { return size_ == 0; }
  // Jobs waiting for `tenant`.
  std::size_t queued(std::string_view tenant) const {
    auto t = index_.find(std::string(tenant));
    return t == index_.end() ? 0 : t->second->queued;
  }
  // Tenants with at least one job waiting.
  std::size_t tenants() const noexcept { return ring_.size(); }
  std::size_t total_limit() const noexcept { return total_limit_; }
  std::size_t tenant_limit() const noexcept { return tenant_limit_; }

  void clear() {
    index_.clear();
    ring_.clear();
    size_ = 0;
  }

 private:
  struct KeyQ {
    std::string name;
    std::deque<T> jobs;
  };
  struct TenantQ {
    std::string name;
    std::list<KeyQ> ring;  // keys with jobs waiting; front is served next
    std::unordered_map<std::string, typename std::list<KeyQ>::iterator> index;
    std::size_t queued = 0;
  };

  std::size_t total_limit_;
  std::size_t tenant_limit_;
  std::size_t size_ = 0;
  std::list<TenantQ> ring_;  // tenants with jobs waiting; front is served next
  // List iterators stay valid across splice(), so the indexes never go stale.
  std::unordered_map<std::string, typename std::list<TenantQ>::iterator> index_;
};

}  // namespace synapse::cortex
