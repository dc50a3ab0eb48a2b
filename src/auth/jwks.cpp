#include "auth/jwks.hpp"

#include <spdlog/spdlog.h>

namespace synapse::auth {

JwksCache::JwksCache(Options options, Fetch fetch) : options_(std::move(options)), fetch_(std::move(fetch)) {}

JwksCache::~JwksCache() {
  {
    std::unique_lock lock(mu_);
    stop_ = true;
    // A fetch still running would call back into this object: wait for it
    // (the owner's HTTP client bounds every request by its timeout).
    cv_.wait_for(lock, std::chrono::seconds(15), [this] { return !in_flight_; });
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

bool JwksCache::start(std::chrono::milliseconds timeout) {
  auto loaded = std::make_shared<std::promise<void>>();
  auto fut = loaded->get_future();
  refresh([loaded] { loaded->set_value(); });
  fut.wait_for(timeout);
  thread_ = std::thread([this] { loop(); });
  return current() != nullptr;
}

std::shared_ptr<const KeySet> JwksCache::current() const {
  std::lock_guard lock(mu_);
  return set_;
}

std::uint64_t JwksCache::fetches() const {
  std::lock_guard lock(mu_);
  return fetches_;
}

void JwksCache::refresh_for_unknown(std::function<void()> done) {
  {
    std::unique_lock lock(mu_);
    const auto now = std::chrono::steady_clock::now();
    if (!in_flight_ && fetches_ > 0 && now - last_start_ < options_.min_refresh) {
      lock.unlock();
      done();
      return;
    }
  }
  refresh(std::move(done));
}

void JwksCache::refresh(std::function<void()> done) {
  {
    std::lock_guard lock(mu_);
    if (done) waiters_.push_back(std::move(done));
    if (in_flight_) return;
    in_flight_ = true;
    ++fetches_;
    last_start_ = std::chrono::steady_clock::now();
  }
  fetch_([this](bool ok, std::string body) { on_fetched(ok, body); });
}

void JwksCache::on_fetched(bool ok, const std::string& body) {
  std::shared_ptr<const KeySet> fresh;
  if (!ok) {
    spdlog::warn("jwks: fetching {} failed: {}; keeping the previous keys", options_.source, body);
  } else {
    JwksParse p = parse_jwks(body);
    for (const auto& s : p.skipped) spdlog::warn("jwks: {}: key {} skipped", options_.source, s);
    if (!p.set) {
      spdlog::warn("jwks: {}: {}; keeping the previous keys", options_.source, p.error);
    } else {
      spdlog::info("jwks: {} loaded, {} key(s)", options_.source, p.set->keys.size());
      fresh = std::move(p.set);
    }
  }
  std::vector<std::function<void()>> waiters;
  {
    std::lock_guard lock(mu_);
    if (fresh) set_ = std::move(fresh);
    in_flight_ = false;
    waiters.swap(waiters_);
  }
  cv_.notify_all();
  for (auto& w : waiters) w();
}

void JwksCache::loop() {
  std::unique_lock lock(mu_);
  while (!stop_) {
    // The in-flight check is part of the wake-up test, so a completed fetch
    // (which notifies) does not cut the interval short.
    const auto until = std::chrono::steady_clock::now() + options_.refresh_every;
    if (cv_.wait_until(lock, until, [this] { return stop_; })) break;
    lock.unlock();
    refresh({});
    lock.lock();
  }
}

}  // namespace synapse::auth
