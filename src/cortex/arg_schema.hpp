// Checks tool arguments against a JSON-Schema subset before a run starts:
// type (object, string, integer, number, boolean, array), required,
// properties, additionalProperties: false, minimum/maximum,
// minLength/maxLength (in characters), enum of strings, items.type, maxItems.
#pragma once

#include <boost/json.hpp>
#include <string>
#include <vector>

#include "protocol/errors.hpp"

namespace synapse::cortex {

std::vector<protocol::FieldError> check_args(const boost::json::object& schema, const boost::json::object& args);

// Number of UTF-8 characters (code points) in valid UTF-8 text.
std::size_t utf8_length(std::string_view s) noexcept;

}  // namespace synapse::cortex
