#include "protocol/topic.hpp"

namespace synapse::protocol {

bool valid_topic_name(std::string_view topic) noexcept {
  if (topic.empty() || topic.size() > max_topic_bytes) return false;
  for (char c : topic) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '_' || c == '-' || c == '.' || c == ':' || c == '@';
    if (!ok) return false;
  }
  const auto colon = topic.find(':');
  return colon != std::string_view::npos && colon > 0 && colon + 1 < topic.size();
}

TopicKind classify_topic(std::string_view topic) noexcept {
  if (topic == "phoenix") return TopicKind::phoenix;
  if (topic == "agent:*") return TopicKind::agent;
  if (!valid_topic_name(topic)) return TopicKind::invalid;
  if (topic.starts_with("cortex:")) return TopicKind::cortex;
  if (topic.starts_with("agent:")) return TopicKind::agent;
  return TopicKind::pubsub;
}

std::string_view cortex_agent(std::string_view topic) noexcept {
  return topic.starts_with("cortex:") ? topic.substr(7) : std::string_view();
}

bool is_reserved_event(std::string_view event) noexcept {
  return event.starts_with("phx_") || event.starts_with("presence_") || event.starts_with("_");
}

bool valid_event_name(std::string_view event) noexcept {
  if (event.empty() || event.size() > max_event_bytes) return false;
  for (char c : event) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7F) return false;
  }
  return true;
}

bool topic_matches(std::string_view pattern, std::string_view topic) noexcept {
  if (pattern == "*") return true;
  if (pattern.ends_with('*')) return topic.starts_with(pattern.substr(0, pattern.size() - 1));
  return pattern == topic;
}

}  // namespace synapse::protocol
