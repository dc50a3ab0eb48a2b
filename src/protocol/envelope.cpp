#include "protocol/envelope.hpp"

#include <cmath>

namespace synapse::protocol {
namespace json = boost::json;

bool numbers_finite(const json::value& v) {
  switch (v.kind()) {
    case json::kind::double_:
      return std::isfinite(v.get_double());
    case json::kind::array:
      for (const auto& e : v.get_array()) {
        if (!numbers_finite(e)) return false;
      }
      return true;
    case json::kind::object:
      for (const auto& kv : v.get_object()) {
        if (!numbers_finite(kv.value())) return false;
      }
      return true;
    default:
      return true;
  }
}

bool decode(std::string_view text, Envelope& out, std::string& error) {
  json::parse_options opts;
  opts.max_depth = max_json_depth;
  boost::system::error_code ec;
  out.root = json::parse(json::string_view(text.data(), text.size()), ec, {}, opts);
  if (ec) {
    if (ec == json::error::too_deep) {
      error = "JSON nested deeper than 64 levels";
    } else {
      error = "not valid JSON: " + ec.message();
    }
    return false;
  }
  const json::array* arr = out.root.if_array();
  if (!arr || arr->size() != 5) {
    error = "expected a JSON array [join_ref, ref, topic, event, payload]";
    return false;
  }
  auto nullable_string = [&](const json::value& v, std::optional<std::string_view>& dst,
                             const char* name) {
    if (v.is_null()) {
      dst.reset();
      return true;
    }
    if (const json::string* s = v.if_string()) {
      dst = std::string_view(s->data(), s->size());
      return true;
    }
    error = std::string(name) + " must be a string or null";
    return false;
  };
  if (!nullable_string((*arr)[0], out.join_ref, "join_ref")) return false;
  if (!nullable_string((*arr)[1], out.ref, "ref")) return false;
  const json::string* topic = (*arr)[2].if_string();
  if (!topic) {
    error = "topic must be a string";
    return false;
  }
  const json::string* event = (*arr)[3].if_string();
  if (!event) {
    error = "event must be a string";
    return false;
  }
  const json::object* payload = (*arr)[4].if_object();
  if (!payload) {
    error = "payload must be a JSON object";
    return false;
  }
  if (!numbers_finite((*arr)[4])) {
    error = "a number in the payload is too large for a double";
    return false;
  }
  out.topic = std::string_view(topic->data(), topic->size());
  out.event = std::string_view(event->data(), event->size());
  out.payload = payload;
  out.payload_raw = raw_payload(text);
  return true;
}

std::vector<FieldError> oversized_fields(const Envelope& env) {
  std::vector<FieldError> errors;
  auto bound = [&](std::size_t size, std::size_t max, const char* field) {
    if (size > max) errors.push_back({field, "must be at most " + std::to_string(max) + " bytes"});
  };
  if (env.join_ref) bound(env.join_ref->size(), max_ref_bytes, "join_ref");
  if (env.ref) bound(env.ref->size(), max_ref_bytes, "ref");
  bound(env.topic.size(), max_envelope_topic_bytes, "topic");
  bound(env.event.size(), max_envelope_event_bytes, "event");
  return errors;
}

void drop_oversized(Envelope& env) {
  if (env.join_ref && env.join_ref->size() > max_ref_bytes) env.join_ref.reset();
  if (env.ref && env.ref->size() > max_ref_bytes) env.ref.reset();
  if (env.topic.size() > max_envelope_topic_bytes) env.topic = "phoenix";
}

std::string_view raw_payload(std::string_view text) noexcept {
  // The first four elements are strings or null (decode checked that), so a
  // scan that skips strings and counts top-level commas finds the fifth.
  auto is_ws = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; };
  std::size_t i = text.find('[');
  if (i == std::string_view::npos) return {};
  ++i;
  int commas = 0;
  bool in_string = false;
  for (; i < text.size() && commas < 4; ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == ',') {
      ++commas;
    }
  }
  while (i < text.size() && is_ws(text[i])) ++i;
  std::size_t end = text.size();
  while (end > i && is_ws(text[end - 1])) --end;
  if (end == 0 || text[end - 1] != ']') return {};
  --end;  // the frame's closing bracket
  while (end > i && is_ws(text[end - 1])) --end;
  return text.substr(i, end - i);
}

void append_json_string(std::string& out, std::string_view s) {
  static constexpr char hex[] = "0123456789abcdef";
  out.push_back('"');
  std::size_t run = 0;  // start of the pending run of bytes that need no escape
  for (std::size_t i = 0; i < s.size(); ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c != '"' && c != '\\') continue;
    out.append(s.data() + run, i - run);
    run = i + 1;
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        out += "\\u00";
        out.push_back(hex[c >> 4]);
        out.push_back(hex[c & 0xF]);
    }
  }
  out.append(s.data() + run, s.size() - run);
  out.push_back('"');
}

namespace {
void append_nullable(std::string& out, std::optional<std::string_view> s) {
  if (s) {
    append_json_string(out, *s);
  } else {
    out += "null";
  }
}
}  // namespace

std::string encode_raw(std::optional<std::string_view> join_ref, std::optional<std::string_view> ref,
                       std::string_view topic, std::string_view event,
                       std::string_view payload_json) {
  std::string out;
  out.reserve(32 + topic.size() + event.size() + payload_json.size() +
               (join_ref ? join_ref->size() : 0) + (ref ? ref->size() : 0));
  out.push_back('[');
  append_nullable(out, join_ref);
  out.push_back(',');
  append_nullable(out, ref);
  out.push_back(',');
  append_json_string(out, topic);
  out.push_back(',');
  append_json_string(out, event);
  out.push_back(',');
  out.append(payload_json);
  out.push_back(']');
  return out;
}

std::string encode_push(std::optional<std::string_view> join_ref, std::string_view topic,
                        std::string_view event, const json::object& payload) {
  return encode_raw(join_ref, std::nullopt, topic, event, json::serialize(payload));
}

std::string encode_reply(std::optional<std::string_view> join_ref, std::optional<std::string_view> ref,
                         std::string_view topic, bool ok, const json::object& response) {
  std::string body = ok ? "{\"status\":\"ok\",\"response\":" : "{\"status\":\"error\",\"response\":";
  // An empty response (every heartbeat's) needs no serializer.
  if (response.empty()) {
    body += "{}";
  } else {
    body += json::serialize(response);
  }
  body.push_back('}');
  return encode_raw(join_ref, ref, topic, "phx_reply", body);
}

}  // namespace synapse::protocol
