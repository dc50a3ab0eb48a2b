#include "cortex/arg_schema.hpp"

namespace synapse::cortex {
namespace json = boost::json;

std::size_t utf8_length(std::string_view s) noexcept {
  std::size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

namespace {

std::string_view type_of(const json::value& v) {
  switch (v.kind()) {
    case json::kind::string: return "string";
    case json::kind::int64:
    case json::kind::uint64: return "integer";
    case json::kind::double_: return "number";
    case json::kind::bool_: return "boolean";
    case json::kind::array: return "array";
    case json::kind::object: return "object";
    case json::kind::null: return "null";
  }
  return "unknown";
}

bool matches_type(const json::value& v, std::string_view type) {
  if (type == "number") return v.is_number();
  if (type == "integer") {
    if (v.is_int64() || v.is_uint64()) return true;
    // 3.0 is an integer in JSON Schema.
    return v.is_double() && v.get_double() == static_cast<double>(static_cast<long long>(v.get_double())) &&
           v.get_double() > -9e15 && v.get_double() < 9e15;
  }
  return type_of(v) == type;
}

double as_double(const json::value& v) {
  if (v.is_int64()) return static_cast<double>(v.get_int64());
  if (v.is_uint64()) return static_cast<double>(v.get_uint64());
  return v.get_double();
}

std::string str(const json::value& v) { return v.is_string() ? std::string(v.get_string()) : std::string(); }

void check_value(const json::object& schema, const json::value& v, const std::string& path,
                 std::vector<protocol::FieldError>& errors) {
  if (const json::value* t = schema.if_contains("type"); t && t->is_string()) {
    if (!matches_type(v, t->get_string())) {
      errors.push_back({path, "must be of type " + str(*t) + ", got " + std::string(type_of(v))});
      return;
    }
  }
  if (v.is_number()) {
    const double d = as_double(v);
    if (const json::value* m = schema.if_contains("minimum"); m && m->is_number() && d < as_double(*m)) {
      errors.push_back({path, "must be at least " + json::serialize(*m)});
    }
    if (const json::value* m = schema.if_contains("maximum"); m && m->is_number() && d > as_double(*m)) {
      errors.push_back({path, "must be at most " + json::serialize(*m)});
    }
  }
  if (v.is_string()) {
    const std::string_view s(v.get_string().data(), v.get_string().size());
    // A NUL would be stored and then cut short by C string handling
    // somewhere downstream; no tool takes one.
    if (s.find('\0') != std::string_view::npos) errors.push_back({path, "must not contain NUL characters"});
    const std::size_t len = utf8_length(s);
    if (const json::value* m = schema.if_contains("minLength"); m && m->is_int64() && len < static_cast<std::size_t>(m->get_int64())) {
      errors.push_back({path, "must be at least " + std::to_string(m->get_int64()) + " characters"});
    }
    if (const json::value* m = schema.if_contains("maxLength"); m && m->is_int64() && len > static_cast<std::size_t>(m->get_int64())) {
      errors.push_back({path, "must be at most " + std::to_string(m->get_int64()) + " characters"});
    }
    if (const json::value* e = schema.if_contains("enum"); e && e->is_array()) {
      bool found = false;
      for (const auto& option : e->get_array()) found |= option == v;
      if (!found) errors.push_back({path, "must be one of " + json::serialize(*e)});
    }
  }
  if (v.is_array()) {
    const auto& arr = v.get_array();
    if (const json::value* m = schema.if_contains("maxItems"); m && m->is_int64() && arr.size() > static_cast<std::size_t>(m->get_int64())) {
      errors.push_back({path, "must have at most " + std::to_string(m->get_int64()) + " items"});
    }
    if (const json::value* items = schema.if_contains("items"); items && items->is_object()) {
      for (std::size_t i = 0; i < arr.size(); ++i) {
        check_value(items->get_object(), arr[i], path + "[" + std::to_string(i) + "]", errors);
      }
    }
  }
  if (v.is_object()) {
    const auto& obj = v.get_object();
    const json::object* props = nullptr;
    if (const json::value* p = schema.if_contains("properties"); p && p->is_object()) props = &p->get_object();
    if (const json::value* req = schema.if_contains("required"); req && req->is_array()) {
      for (const auto& name : req->get_array()) {
        if (name.is_string() && !obj.contains(name.get_string())) {
          errors.push_back({path.empty() ? str(name) : path + "." + str(name), "is required"});
        }
      }
    }
    const json::value* extra = schema.if_contains("additionalProperties");
    const bool closed = extra && extra->is_bool() && !extra->get_bool();
    for (const auto& kv : obj) {
      const std::string key(kv.key());
      const std::string sub = path.empty() ? key : path + "." + key;
      const json::value* ps = props ? props->if_contains(kv.key()) : nullptr;
      if (ps && ps->is_object()) {
        check_value(ps->get_object(), kv.value(), sub, errors);
      } else if (closed) {
        errors.push_back({sub, "is not an accepted argument"});
      }
    }
  }
}

}  // namespace

std::vector<protocol::FieldError> check_args(const json::object& schema, const json::object& args) {
  std::vector<protocol::FieldError> errors;
  check_value(schema, json::value(args), "", errors);
  for (auto& e : errors) e.field = e.field.empty() ? "args" : "args." + e.field;
  return errors;
}

}  // namespace synapse::cortex
