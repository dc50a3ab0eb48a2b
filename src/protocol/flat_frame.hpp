// A decoder for the commonest hot-path frame shape without building a JSON
// tree: [join_ref, ref, topic, event, {"key": "string", ...}], every payload
// value a string. An agent worker's `token {run_id, text}` is such a frame
// (protocol.md section 10), sent thousands of times a second per run; the
// full decode (envelope.hpp) allocates a node per value for it.
//
// Contract: decode_flat() accepts a strict subset of what decode() accepts,
// and for a frame it accepts, it yields the same envelope fields and the
// same payload (keys and string values) that decode() would. Anything else
// (numbers, nested values, \u escapes, an escape in the envelope strings or
// in a key, duplicate keys, more than max_flat_fields keys) is refused, and
// the caller takes the full decode: refusal is never an error. The text is
// valid UTF-8 already (the WebSocket reader checks every text message).
#pragma once

#include <array>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace synapse::protocol {

inline constexpr std::size_t max_flat_fields = 8;

struct FlatField {
  std::string_view key;
  std::string_view raw;  // the value's characters between its quotes, escapes as written
  bool escaped = false;  // raw holds at least one backslash escape
};

struct FlatFrame {
  std::optional<std::string_view> join_ref;
  std::optional<std::string_view> ref;
  std::string_view topic;
  std::string_view event;
  std::string_view payload_raw;  // the payload object's text, as Envelope::payload_raw
  std::array<FlatField, max_flat_fields> fields;
  std::size_t n_fields = 0;

  // The field named `key`, or null.
  const FlatField* find(std::string_view key) const noexcept {
    for (std::size_t i = 0; i < n_fields; ++i) {
      if (fields[i].key == key) return &fields[i];
    }
    return nullptr;
  }
};

// True when `text` is a frame of the shape above; `out` then holds views
// into `text`.
bool decode_flat(std::string_view text, FlatFrame& out) noexcept;

// A field's value as a string: `raw` itself when it has no escape, else
// unescaped into `scratch` (which the result then points into).
std::string_view flat_value(const FlatField& f, std::string& scratch);

}  // namespace synapse::protocol
