#include "pubsub/publish_frame.hpp"

#include <charconv>

#include "protocol/envelope.hpp"

namespace synapse::pubsub {

namespace {

constexpr std::string_view meta_open = ",\"_meta\":{\"from\":";

// The payload's bytes before its closing brace, where _meta goes.
std::string_view payload_open(std::string_view payload_json) {
  const auto close = payload_json.rfind('}');
  return payload_json.substr(0, close == std::string_view::npos ? 0 : close);
}

// An empty payload `{}` takes `"_meta"` without the leading comma.
std::string_view meta_for(bool payload_empty) { return payload_empty ? meta_open.substr(1) : meta_open; }

bool parse_i64(std::string_view s, std::int64_t& out) {
  const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc{} && p == s.data() + s.size();
}

// The frame from its parts; `tail` closes _meta, the payload and the array.
wire::Message frame(std::string_view topic, const MessageBody& b, std::string_view tail) {
  std::string topic_json;
  protocol::append_json_string(topic_json, topic);
  char ts[24];
  const auto ts_end = std::to_chars(ts, ts + sizeof ts, b.ts_ms).ptr;
  return wire::Message::text_parts({"[null,null,", topic_json, ",", b.event_json, ",", payload_open(b.payload_json),
                                    meta_for(b.payload_empty), b.from_json, ",\"ts\":",
                                    std::string_view(ts, static_cast<std::size_t>(ts_end - ts)), tail});
}

}  // namespace

std::string publish_head(std::string_view topic, std::string_view event, std::string_view payload_json,
                         bool payload_empty, std::string_view from, std::int64_t ts_ms) {
  std::string head = "[null,null,";
  head.reserve(96 + topic.size() + event.size() + payload_json.size() + from.size());
  protocol::append_json_string(head, topic);
  head.push_back(',');
  protocol::append_json_string(head, event);
  head.push_back(',');
  head.append(payload_open(payload_json));
  head += meta_for(payload_empty);
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

std::string encode_body(std::string_view event, std::string_view payload_json, bool payload_empty,
                        std::string_view from, std::int64_t ts_ms) {
  std::string body = std::to_string(ts_ms);
  body.reserve(body.size() + 16 + event.size() + from.size() + payload_json.size());
  body += payload_empty ? "\n1\n" : "\n0\n";
  protocol::append_json_string(body, event);
  body.push_back('\n');
  protocol::append_json_string(body, from);
  body.push_back('\n');
  body.append(payload_json);
  return body;
}

std::optional<MessageBody> decode_body(std::string_view s) {
  std::string_view parts[4];
  for (auto& p : parts) {
    const auto nl = s.find('\n');
    if (nl == std::string_view::npos) return std::nullopt;
    p = s.substr(0, nl);
    s.remove_prefix(nl + 1);
  }
  MessageBody b;
  if (!parse_i64(parts[0], b.ts_ms) || (parts[1] != "0" && parts[1] != "1")) return std::nullopt;
  if (parts[2].size() < 2 || parts[3].size() < 2 || parts[2].front() != '"' || parts[3].front() != '"') {
    return std::nullopt;
  }
  b.payload_empty = parts[1] == "1";
  b.event_json = parts[2];
  b.from_json = parts[3];
  b.payload_json = s;
  return b;
}

wire::Message frame_numbered(std::string_view topic, const MessageBody& body, std::string_view epoch,
                             std::uint64_t offset) {
  char tail[96];
  std::string_view tail_view;
  if (epoch.size() <= 48) {
    // The tail in a stack buffer: epochs are 16 hex digits.
    char* p = tail;
    auto put = [&p](std::string_view s) {
      for (char c : s) *p++ = c;
    };
    put(",\"epoch\":\"");
    put(epoch);
    put("\",\"offset\":");
    p = std::to_chars(p, tail + sizeof tail, offset).ptr;
    put("}}]");
    tail_view = std::string_view(tail, static_cast<std::size_t>(p - tail));
    return frame(topic, body, tail_view);
  }
  const std::string t = numbered_tail(epoch, offset);
  return frame(topic, body, t);
}

wire::Message frame_local(std::string_view topic, const MessageBody& body) { return frame(topic, body, local_tail); }

}  // namespace synapse::pubsub
