// `--log-format json`: every log record becomes one JSON object on one
// line, so a log shipper needs no parser of ours. The message text stays as
// written; the identifiers our log lines carry as `key=value` (conn=,
// topic=, run=, ref=, peer=, key=, event=) are lifted into fields of their
// own, so records can be filtered by connection, topic or run.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace spdlog {
class formatter;
}

namespace synapse::logging {

// The formatter installed on the default logger by `use_json_format`.
std::unique_ptr<spdlog::formatter> make_json_formatter();
// Formats one record (exposed for unit tests). `ts_ms` is unix time.
std::string json_record(std::string_view level, std::int64_t ts_ms, std::size_t thread, std::string_view message);
// Switches the default logger to JSON lines.
void use_json_format();

}  // namespace synapse::logging
