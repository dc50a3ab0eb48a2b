// Backend hooks: the application decides who connects, joins and publishes.
//
// For each configured hook Synapse POSTs a JSON description of the action to
// the application's URL and waits (asynchronously, never on an I/O thread)
// for its answer, at most `timeout`:
//   200..299 {"allow": true|false, "reason"?: string,
//             "data"?: object      (connect: attached to the connection),
//             "payload"?: object}  (publish: replaces the published payload)
// Anything else (another status, a body that is not such an object, a
// refused connection, the timeout) is a failure, and the hook's failure
// policy decides: deny (the default) or allow. A hook that is not
// configured costs nothing: enabled() is false and no request is made.
//
// Thread safety: call() from any thread; `done` runs on the HTTP client's
// thread, so callers post it back to their connection's thread.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "hooks/http_client.hpp"

namespace synapse::hooks {

enum class Hook : std::size_t { connect = 0, join = 1, publish = 2 };
std::string_view hook_name(Hook h) noexcept;

struct HookTarget {
  std::optional<HttpUrl> url;  // none: the hook is off
  bool allow_on_failure = false;
};

struct HooksOptions {
  std::array<HookTarget, 3> targets;
  std::chrono::milliseconds timeout{2000};
  std::string secret;  // non-empty: X-Synapse-Signature: sha256=<hex HMAC of the body>
};

struct Verdict {
  bool allow = false;
  bool failed = false;    // the backend gave no usable answer; the policy decided
  std::string reason;     // the backend's reason, or why it failed
  std::string data_json;  // connect: the `data` object's text (empty if none)
  std::optional<std::string> payload_json;  // publish: the replacement payload
};

// Parses a backend's answer (status and body). Exposed for unit tests.
Verdict parse_verdict(int status, std::string_view body);

class Hooks {
 public:
  Hooks(HooksOptions options, HttpClient& client);

  bool enabled(Hook h) const noexcept { return options_.targets[static_cast<std::size_t>(h)].url.has_value(); }
  // POSTs `body_json` to the hook; `done(verdict)` runs once.
  void call(Hook h, std::string body_json, std::function<void(Verdict)> done);
  std::uint64_t calls() const noexcept { return counts_->calls.load(std::memory_order_relaxed); }
  std::uint64_t failures() const noexcept { return counts_->failures.load(std::memory_order_relaxed); }

 private:
  struct Counts {
    std::atomic<std::uint64_t> calls{0};
    std::atomic<std::uint64_t> failures{0};
  };
  HooksOptions options_;
  HttpClient& client_;
  // Shared with completions, which may run after this object is gone (the
  // client's thread stops after it).
  std::shared_ptr<Counts> counts_ = std::make_shared<Counts>();
};

}  // namespace synapse::hooks
