#include "hooks/hooks.hpp"

#include <boost/json.hpp>
#include <spdlog/spdlog.h>

#include "core/crypto.hpp"

namespace synapse::hooks {
namespace json = boost::json;

std::string_view hook_name(Hook h) noexcept {
  switch (h) {
    case Hook::connect: return "connect";
    case Hook::join: return "join";
    case Hook::publish: return "publish";
  }
  return "?";
}

Verdict parse_verdict(int status, std::string_view body) {
  Verdict v;
  auto garbage = [&](std::string why) {
    v.failed = true;
    v.reason = std::move(why);
    return v;
  };
  if (status < 200 || status > 299) return garbage("the backend answered HTTP " + std::to_string(status));
  json::parse_options opts;
  opts.max_depth = 64;
  boost::system::error_code ec;
  json::value doc = json::parse(body, ec, {}, opts);
  if (ec || !doc.is_object()) return garbage("the backend's answer is not a JSON object");
  const auto& o = doc.as_object();
  const json::value* allow = o.if_contains("allow");
  if (!allow || !allow->is_bool()) return garbage("the backend's answer has no boolean \"allow\"");
  if (const json::value* r = o.if_contains("reason")) {
    if (!r->is_string()) return garbage("the backend's \"reason\" is not a string");
    v.reason = std::string(std::string_view(r->as_string()).substr(0, 256));
  }
  if (const json::value* d = o.if_contains("data")) {
    if (!d->is_object()) return garbage("the backend's \"data\" is not an object");
    v.data_json = json::serialize(*d);
  }
  if (const json::value* p = o.if_contains("payload")) {
    if (!p->is_object()) return garbage("the backend's \"payload\" is not an object");
    v.payload_json = json::serialize(*p);
  }
  v.allow = allow->as_bool();
  return v;
}

Hooks::Hooks(HooksOptions options, HttpClient& client) : options_(std::move(options)), client_(client) {}

void Hooks::call(Hook h, std::string body_json, std::function<void(Verdict)> done) {
  const HookTarget& t = options_.targets[static_cast<std::size_t>(h)];
  counts_->calls.fetch_add(1, std::memory_order_relaxed);
  ClientRequest req;
  req.method = "POST";
  req.url = *t.url;
  req.timeout = options_.timeout;
  req.max_body_bytes = 1 << 20;
  req.headers.emplace_back("X-Synapse-Hook", std::string(hook_name(h)));
  if (!options_.secret.empty()) {
    req.headers.emplace_back("X-Synapse-Signature",
                             "sha256=" + core::hex_encode(core::as_view(core::hmac_sha256(options_.secret, body_json))));
  }
  req.body = std::move(body_json);
  client_.request(std::move(req), [counts = counts_, h, allow_on_failure = t.allow_on_failure,
                                   done = std::move(done)](ClientResponse r) {
    Verdict v;
    if (!r.ok) {
      v.failed = true;
      v.reason = r.error;
    } else {
      v = parse_verdict(r.status, r.body);
    }
    if (v.failed) {
      counts->failures.fetch_add(1, std::memory_order_relaxed);
      v.allow = allow_on_failure;
      v.data_json.clear();
      v.payload_json.reset();
      spdlog::warn("hook {} failed ({}); policy: {}", hook_name(h), v.reason, allow_on_failure ? "allow" : "deny");
    }
    done(std::move(v));
  });
}

}  // namespace synapse::hooks
