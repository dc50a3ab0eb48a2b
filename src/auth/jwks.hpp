// The identity provider's key set, kept current in the background.
//
// Contract: current() is the last set that parsed; a fetch that fails or a
// document that does not parse keeps it (an identity provider's outage does
// not log everyone out). The set is refreshed every `refresh_every` by a
// thread of this object, and on demand when a token names an unknown kid
// (refresh_for_unknown), at most once per `min_refresh`: a flood of tokens
// with invented kids costs one fetch per interval, never one per token.
// The fetch itself is given by the owner (an asynchronous HTTP GET, or a file
// read) and must not block the caller; completions run on whatever thread
// the fetch finishes on, so callers post back to their own thread.
//
// Thread safety: every method may be called from any thread.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "auth/jwk.hpp"
#include "auth/jwt.hpp"

namespace synapse::auth {

class JwksCache {
 public:
  // ok=false: `body` is the error text.
  using FetchDone = std::function<void(bool ok, std::string body)>;
  using Fetch = std::function<void(FetchDone)>;

  struct Options {
    std::string source;  // the URL or file, for logs
    std::chrono::milliseconds refresh_every{300'000};
    std::chrono::milliseconds min_refresh{10'000};
  };

  JwksCache(Options options, Fetch fetch);
  ~JwksCache();
  JwksCache(const JwksCache&) = delete;
  JwksCache& operator=(const JwksCache&) = delete;

  // Fetches once and waits for it (at most `timeout`), then starts the
  // background refresh. False when no usable set was loaded (the server
  // still starts: IdP tokens are refused until a refresh succeeds).
  bool start(std::chrono::milliseconds timeout);

  std::shared_ptr<const KeySet> current() const;
  // Asks for a refresh because a token named an unknown kid; `done` runs
  // once, after that refresh (or at once when one ran within min_refresh).
  void refresh_for_unknown(std::function<void()> done);
  std::uint64_t fetches() const;

 private:
  // Starts a fetch unless one is running; `done` (may be empty) joins the waiters.
  void refresh(std::function<void()> done);
  void on_fetched(bool ok, const std::string& body);
  void loop();

  Options options_;
  Fetch fetch_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::shared_ptr<const KeySet> set_;
  bool in_flight_ = false;
  bool stop_ = false;
  std::uint64_t fetches_ = 0;
  std::chrono::steady_clock::time_point last_start_{};
  std::vector<std::function<void()>> waiters_;
  std::thread thread_;
};

// What an identity provider's tokens are checked against: its keys and the
// iss/aud/leeway rules. Owned by main; null in Services when not configured.
struct IdentityProvider {
  JwksCache& keys;
  IdpOptions options;
};

}  // namespace synapse::auth
