// Fuzzes protocol::decode, the V2 envelope [join_ref, ref, topic, event, payload].
//
// The input is one text frame. Checked:
//   - decode never crashes; a refusal always carries an error sentence;
//   - when it succeeds, encode_raw of the decoded fields (the payload
//     serialized again) decodes again, to the same join_ref, ref, topic,
//     event and an equal payload (keys in the same order; doubles within 2
//     ULP, see same_json);
//   - anything nested deeper than the limit is refused;
//   - oversized_fields names exactly the fields over their bounds, and after
//     drop_oversized none is left (what a reply echoes is small);
//   - the input used as raw strings: encode_raw(s, null, s, s, {}) of any
//     valid UTF-8 s (control characters, quotes, backslashes, DEL, NUL
//     included) decodes to s exactly: append_json_string escapes what it must;
//   - decode_flat (the tree-less fast path of string-only frames) accepts
//     only what decode accepts, to the same fields and the same payload.
#include <boost/json.hpp>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "fuzz_check.hpp"
#include "protocol/envelope.hpp"
#include "protocol/flat_frame.hpp"
#include "wire/utf8.hpp"

namespace json = boost::json;
using namespace synapse::protocol;
using synapse::fuzz::escaped;

namespace {

// Deepest nesting in `text` (arrays and objects, outside strings). Only
// meaningful for text that parsed as JSON.
int nesting(std::string_view text) {
  int depth = 0, deepest = 0;
  bool in_string = false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
      continue;
    }
    if (c == '"') in_string = true;
    else if (c == '[' || c == '{') deepest = std::max(deepest, ++depth);
    else if (c == ']' || c == '}') --depth;
  }
  return deepest;
}

bool same(const std::optional<std::string_view>& a, const std::optional<std::string_view>& b) {
  return a.has_value() == b.has_value() && (!a || *a == *b);
}

// Equal JSON, except that doubles may differ by 2 units in the last place:
// Boost.JSON 1.81's parser is not correctly rounded for long mantissas
// (1844678888888888888888888888888888888888880.1 reads 1 ULP below strtod),
// while its serializer is exact, so a double can move by an ULP when relayed.
bool same_json(const json::value& a, const json::value& b) {
  if (a.is_double() && b.is_double()) {
    const double x = a.get_double(), y = b.get_double();
    if (x == y) return true;
    const double up = std::nextafter(std::nextafter(x, y), y);
    return (x < y) ? y <= up : y >= up;
  }
  if (a.kind() != b.kind()) return false;
  if (a.is_array()) {
    const auto &p = a.get_array(), &q = b.get_array();
    if (p.size() != q.size()) return false;
    for (std::size_t i = 0; i < p.size(); ++i) {
      if (!same_json(p[i], q[i])) return false;
    }
    return true;
  }
  if (a.is_object()) {
    const auto &p = a.get_object(), &q = b.get_object();
    if (p.size() != q.size()) return false;
    auto i = p.begin();
    auto j = q.begin();
    for (; i != p.end(); ++i, ++j) {
      if (i->key() != j->key() || !same_json(i->value(), j->value())) return false;
    }
    return true;
  }
  return a == b;
}

void check_round_trip(std::string_view text) {
  Envelope env;
  std::string error;
  if (!decode(text, env, error)) {
    FUZZ_CHECK(!error.empty(), "refused without an error sentence");
    return;
  }
  FUZZ_CHECK(env.payload != nullptr, "decoded without a payload");
  {
    const auto too_long = oversized_fields(env);
    const bool over = (env.join_ref && env.join_ref->size() > max_ref_bytes) ||
                      (env.ref && env.ref->size() > max_ref_bytes) ||
                      env.topic.size() > max_envelope_topic_bytes || env.event.size() > max_envelope_event_bytes;
    FUZZ_CHECK(over == !too_long.empty(), "oversized_fields disagrees with the field sizes");
    Envelope dropped = env;
    drop_oversized(dropped);
    FUZZ_CHECK((!dropped.join_ref || dropped.join_ref->size() <= max_ref_bytes) &&
                   (!dropped.ref || dropped.ref->size() <= max_ref_bytes) &&
                   dropped.topic.size() <= max_envelope_topic_bytes,
               "drop_oversized left an oversized field to echo");
  }
  FUZZ_CHECK(nesting(text) <= max_json_depth, "accepted JSON nested deeper than the limit");
  FUZZ_CHECK(synapse::wire::is_valid_utf8(env.topic) && synapse::wire::is_valid_utf8(env.event),
             "decoded a topic or event that is not UTF-8");

  const std::string payload_json = json::serialize(*env.payload);
  const std::string again = encode_raw(env.join_ref, env.ref, env.topic, env.event, payload_json);
  Envelope env2;
  std::string error2;
  FUZZ_CHECK(decode(again, env2, error2), "re-encoded frame refused (" + error2 + "): " + escaped(again));
  FUZZ_CHECK(same(env.join_ref, env2.join_ref), "join_ref changed in the round trip");
  FUZZ_CHECK(same(env.ref, env2.ref), "ref changed in the round trip");
  FUZZ_CHECK(env.topic == env2.topic, "topic changed in the round trip: " + escaped(env2.topic));
  FUZZ_CHECK(env.event == env2.event, "event changed in the round trip: " + escaped(env2.event));
  FUZZ_CHECK(same_json(*env.payload, *env2.payload), "payload changed in the round trip: " + escaped(again));
}

void check_raw_strings(std::string_view s) {
  if (!synapse::wire::is_valid_utf8(s)) return;
  const std::string frame = encode_raw(s, std::nullopt, s, s, "{}");
  Envelope env;
  std::string error;
  FUZZ_CHECK(decode(frame, env, error), "encode_raw of a UTF-8 string refused (" + error + "): " + escaped(frame));
  FUZZ_CHECK(env.join_ref && *env.join_ref == s, "join_ref not preserved");
  FUZZ_CHECK(!env.ref, "null ref not preserved");
  FUZZ_CHECK(env.topic == s && env.event == s, "topic or event not preserved: " + escaped(s));
  FUZZ_CHECK(env.payload && env.payload->empty(), "empty payload not preserved");
  // The escaped form holds no raw control character (a JSON requirement).
  for (char c : frame) FUZZ_CHECK(static_cast<unsigned char>(c) >= 0x20, "raw control character in encoded frame");
}

void check_flat(std::string_view text) {
  if (!synapse::wire::is_valid_utf8(text)) return;  // the WebSocket reader refuses those first
  FlatFrame f;
  if (!decode_flat(text, f)) return;
  Envelope env;
  std::string error;
  FUZZ_CHECK(decode(text, env, error), "decode_flat accepted what decode refuses: " + escaped(text));
  FUZZ_CHECK(same(f.join_ref, env.join_ref) && same(f.ref, env.ref) && f.topic == env.topic && f.event == env.event,
             "decode_flat read other envelope fields: " + escaped(text));
  FUZZ_CHECK(f.payload_raw == env.payload_raw, "decode_flat read another payload_raw: " + escaped(text));
  FUZZ_CHECK(f.n_fields == env.payload->size(), "decode_flat read another number of fields: " + escaped(text));
  std::size_t i = 0;
  std::string scratch;
  for (const auto& kv : *env.payload) {
    FUZZ_CHECK(f.fields[i].key == std::string_view(kv.key()) && kv.value().is_string() &&
                   flat_value(f.fields[i], scratch) == std::string_view(kv.value().get_string()),
               "decode_flat read another field: " + escaped(text));
    ++i;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  check_round_trip(text);
  check_raw_strings(text);
  check_flat(text);
  return 0;
}
