#include "pubsub/publish_frame.hpp"

#include "protocol/envelope.hpp"

namespace synapse::pubsub {

std::string publish_head(std::string_view topic, std::string_view event, std::string_view payload_json,
                         bool payload_empty, std::string_view from, std::int64_t ts_ms) {
  const auto close = payload_json.rfind('}');
  std::string head = "[null,null,";
  head.reserve(96 + topic.size() + event.size() + payload_json.size() + from.size());
  protocol::append_json_string(head, topic);
  head.push_back(',');
  protocol::append_json_string(head, event);
  head.push_back(',');
  head.append(payload_json.substr(0, close == std::string_view::npos ? 0 : close));
  head += payload_empty ? "\"_meta\":{\"from\":" : ",\"_meta\":{\"from\":";
  protocol::append_json_string(head, from);
  head += ",\"ts\":";
  head += std::to_string(ts_ms);
  return head;
}

std::string numbered_tail(std::string_view epoch, std::uint64_t offset) {
  std::string t = ",\"epoch\":\"";
  t += epoch;
  t += "\",\"offset\":";
  t += std::to_string(offset);
  t += "}}]";
  return t;
}

}  // namespace synapse::pubsub
