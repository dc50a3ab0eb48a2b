#include "auth/capabilities.hpp"

#include <boost/json.hpp>

#include "auth/principal.hpp"
#include "protocol/topic.hpp"

namespace synapse::auth {
namespace json = boost::json;

bool Capabilities::allows(Capability c, std::string_view topic) const noexcept {
  for (const auto& p : of(c)) {
    if (protocol::topic_matches(p, topic)) return true;
  }
  return false;
}

std::optional<Capabilities> parse_capabilities(const json::value& v, std::string* why) {
  auto fail = [&](std::string text) -> std::optional<Capabilities> {
    if (why) *why = std::move(text);
    return std::nullopt;
  };
  const json::object* o = v.if_object();
  if (!o) return fail("caps must be an object of topic-pattern lists");
  Capabilities caps;
  for (const auto& kv : *o) {
    const std::string_view name(kv.key().data(), kv.key().size());
    std::size_t index = capability_names.size();
    for (std::size_t i = 0; i < capability_names.size(); ++i) {
      if (capability_names[i] == name) index = i;
    }
    if (index == capability_names.size()) {
      return fail("unknown capability '" + std::string(name) + "' (subscribe, publish, presence, history)");
    }
    const json::array* arr = kv.value().if_array();
    if (!arr) return fail("caps." + std::string(name) + " must be an array of topic patterns");
    for (const auto& p : *arr) {
      if (!p.is_string() || p.as_string().empty() || p.as_string().size() > 255) {
        return fail("caps." + std::string(name) + " must hold topic patterns of 1..255 bytes");
      }
      caps.patterns[index].emplace_back(p.as_string());
    }
  }
  return caps;
}

std::optional<Capabilities> parse_capabilities_text(std::string_view text, std::string* why) {
  boost::system::error_code ec;
  json::parse_options opts;
  opts.max_depth = 8;
  json::value v = json::parse(text, ec, {}, opts);
  if (ec) {
    if (why) *why = "caps are not JSON";
    return std::nullopt;
  }
  return parse_capabilities(v, why);
}

std::string capabilities_json(const Capabilities& c) {
  json::object o;
  for (std::size_t i = 0; i < capability_names.size(); ++i) {
    json::array arr;
    for (const auto& p : c.patterns[i]) arr.emplace_back(p);
    o[capability_names[i]] = std::move(arr);
  }
  return json::serialize(o);
}

bool permitted(const Principal& p, Capability c, std::string_view topic) {
  if (p.admin) return true;
  if (p.key_caps && !p.key_caps->allows(c, topic)) return false;
  if (p.token_caps && !p.token_caps->allows(c, topic)) return false;
  return true;
}

}  // namespace synapse::auth
