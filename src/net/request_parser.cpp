#include "net/request_parser.hpp"

#include <boost/beast/core/string.hpp>
#include <boost/beast/http/error.hpp>

namespace synapse::net {
namespace http = boost::beast::http;
using boost::beast::error_code;
using boost::beast::string_view;

bool only_chunked(std::string_view te) noexcept {
  auto trim = [](std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
  };
  // One coding only: "chunked" alone. Empty list elements (", chunked") are
  // allowed by the list syntax and ignored.
  int codings = 0;
  bool chunked = false;
  while (true) {
    const auto comma = te.find(',');
    const auto item = trim(te.substr(0, comma));
    if (!item.empty()) {
      ++codings;
      chunked = boost::beast::iequals(item, "chunked");
    }
    if (comma == std::string_view::npos) break;
    te.remove_prefix(comma + 1);
  }
  return codings == 1 && chunked;
}

RequestParser::RequestParser(std::size_t header_limit, std::size_t body_limit, std::size_t trailer_limit)
    : trailer_limit_(trailer_limit) {
  this->header_limit(static_cast<std::uint32_t>(header_limit));
  this->body_limit(body_limit);
}

std::string_view RequestParser::header(http::field f) const noexcept {
  for (const auto& [name, value] : headers_) {
    if (name == f) return value;
  }
  return {};
}

std::string RequestParser::header_list(http::field f) const {
  std::string out;
  for (const auto& [name, value] : headers_) {
    if (name != f) continue;
    if (!out.empty()) out += ',';
    out += value;
  }
  return out;
}

bool RequestParser::has_header(http::field f) const noexcept {
  for (const auto& h : headers_) {
    if (h.first == f) return true;
  }
  return false;
}

void RequestParser::on_request_impl(http::verb method, string_view method_str, string_view target, int version,
                                    error_code&) {
  method_ = method;
  version_ = version;
  method_string_.assign(method_str.data(), method_str.size());
  target_.assign(target.data(), target.size());
}

std::string_view RequestParser::extra_header(std::string_view name) const noexcept {
  for (const auto& [n, value] : extra_) {
    if (boost::beast::iequals(n, name)) return value;
  }
  return {};
}

bool RequestParser::has_extra_header(std::string_view name) const noexcept {
  for (const auto& h : extra_) {
    if (boost::beast::iequals(h.first, name)) return true;
  }
  return false;
}

void RequestParser::on_field_impl(http::field name, string_view name_string, string_view value, error_code& ec) {
  if (header_done_) {
    // A trailer field: counted, never stored (no endpoint reads trailers).
    trailer_bytes_ += value.size() + 4;
    if (trailer_bytes_ > trailer_limit_) {
      refusal_ = Refusal::trailer_too_large;
      ec = http::error::header_limit;
    }
    return;
  }
  switch (name) {
    case http::field::transfer_encoding:
      if (!transfer_encoding_.empty()) transfer_encoding_ += ',';
      transfer_encoding_.append(value.data(), value.size());
      return;
    case http::field::content_length:
      has_content_length_ = true;
      return;
    case http::field::unknown:
      // Beast knows no MCP header: those the /mcp endpoint reads are kept
      // (by name, first value only); every other unknown field is dropped.
      for (std::string_view kept : kept_unknown_fields) {
        if (boost::beast::iequals(kept, std::string_view(name_string.data(), name_string.size())) &&
            !has_extra_header(kept)) {
          extra_.emplace_back(std::string(kept), std::string(value.data(), value.size()));
        }
      }
      return;
    default:
      // Bounded by the header limit the base class enforces.
      if (headers_.capacity() == 0) headers_.reserve(12);  // an upgrade sends 6 to 10: one allocation, not four
      headers_.emplace_back(name, std::string(value.data(), value.size()));
  }
}

void RequestParser::on_header_impl(error_code& ec) {
  header_done_ = true;
  if (transfer_encoding_.empty()) return;
  if (has_content_length_) {
    refusal_ = Refusal::length_and_encoding;
    ec = http::error::bad_transfer_encoding;
    return;
  }
  if (!only_chunked(transfer_encoding_)) {
    refusal_ = Refusal::transfer_coding;
    ec = http::error::bad_transfer_encoding;
  }
}

void RequestParser::on_body_init_impl(const boost::optional<std::uint64_t>& content_length, error_code&) {
  // The base class already refused a Content-Length over the body limit.
  if (content_length) body_.reserve(static_cast<std::size_t>(*content_length));
}

std::size_t RequestParser::on_body_impl(string_view body, error_code&) {
  body_.append(body.data(), body.size());
  return body.size();
}

void RequestParser::on_chunk_header_impl(std::uint64_t, string_view, error_code&) {}

std::size_t RequestParser::on_chunk_body_impl(std::uint64_t, string_view body, error_code&) {
  body_.append(body.data(), body.size());
  return body.size();
}

void RequestParser::on_finish_impl(error_code&) {}

}  // namespace synapse::net
