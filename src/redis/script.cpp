#include "redis/script.hpp"

#include <memory>

#include "core/crypto.hpp"
#include "redis/link.hpp"

namespace synapse::redis {

namespace {

std::vector<std::string> build(const char* verb, const std::string& body, const std::vector<std::string>& keys,
                               const std::vector<std::string>& args) {
  std::vector<std::string> v;
  v.reserve(3 + keys.size() + args.size());
  v.emplace_back(verb);
  v.push_back(body);
  v.push_back(std::to_string(keys.size()));
  v.insert(v.end(), keys.begin(), keys.end());
  v.insert(v.end(), args.begin(), args.end());
  return v;
}

bool noscript(const Reply& r) { return r.type == Reply::Type::error && r.str.rfind("NOSCRIPT", 0) == 0; }

}  // namespace

Script::Script(std::string lua) : text(std::move(lua)) {
  const auto d = core::sha1(text);
  sha = core::hex_encode(std::string_view(reinterpret_cast<const char*>(d.data()), d.size()));
}

void eval(Link& link, const Script& s, std::vector<std::string> keys, std::vector<std::string> args,
          std::function<void(Reply)> cb) {
  // No EVAL retry here: it would need a copy of every argument (a publish's
  // payload) kept for a case the link's preloading rules out, and a retry
  // could overtake later commands. A flushed script cache fails this call
  // and reloads the scripts for the next ones.
  link.command(build("EVALSHA", s.sha, keys, args), [&link, cb = std::move(cb)](Reply r) {
    if (noscript(r)) link.reload_scripts();
    if (cb) cb(std::move(r));
  });
}

void eval(Link& link, const Script& s, std::vector<std::string> keys, std::vector<std::string> args,
          std::function<void(Reply)> cb, std::chrono::milliseconds timeout) {
  link.command(
      build("EVALSHA", s.sha, keys, args),
      [&link, cb = std::move(cb)](Reply r) {
        if (noscript(r)) link.reload_scripts();
        cb(std::move(r));
      },
      timeout);
}

Reply eval_call(Link& link, const Script& s, std::vector<std::string> keys, std::vector<std::string> args,
                std::chrono::milliseconds timeout) {
  Reply r = link.call(build("EVALSHA", s.sha, keys, args), timeout);
  if (noscript(r)) r = link.call(build("EVAL", s.text, keys, args), timeout);
  return r;
}

}  // namespace synapse::redis
