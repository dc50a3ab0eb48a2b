// Channel capabilities (protocol.md section 9): which topic patterns a
// credential may subscribe to, publish on, be tracked in presence on, and
// recover history from.
//
// A credential may carry two layers: its API key's capabilities and its
// token's `caps` claim. Each layer that is present restricts; an operation is
// allowed only when every present layer allows it. Inside a present layer a
// capability that is not listed allows nothing, so {"subscribe": ["room:*"]}
// is a subscribe-only credential. A credential with no layer keeps today's
// behaviour (everything allowed). Admin keys bypass every layer.
#pragma once

#include <array>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <boost/json/fwd.hpp>

namespace synapse::auth {

struct Principal;

enum class Capability : std::size_t { subscribe = 0, publish = 1, presence = 2, history = 3 };
inline constexpr std::array<std::string_view, 4> capability_names = {"subscribe", "publish", "presence", "history"};

// One layer: per capability, the topic patterns (protocol::topic_matches
// syntax: exact, `prefix*`, `*`) it allows.
struct Capabilities {
  std::array<std::vector<std::string>, 4> patterns;

  const std::vector<std::string>& of(Capability c) const { return patterns[static_cast<std::size_t>(c)]; }
  std::vector<std::string>& of(Capability c) { return patterns[static_cast<std::size_t>(c)]; }
  bool allows(Capability c, std::string_view topic) const noexcept;
  bool operator==(const Capabilities&) const = default;
};

// {"subscribe": [...], "publish": [...], ...}: every key optional, unknown
// keys and non-string patterns refused (nullopt with `why` set). Patterns
// are 1..255 bytes.
std::optional<Capabilities> parse_capabilities(const boost::json::value& v, std::string* why = nullptr);
std::optional<Capabilities> parse_capabilities_text(std::string_view json_text, std::string* why = nullptr);
std::string capabilities_json(const Capabilities& c);

// Whether `p` may do `c` on `topic`: admin always; otherwise every present
// layer (key, token) must allow it.
bool permitted(const Principal& p, Capability c, std::string_view topic);

}  // namespace synapse::auth
