// The HTTP/1.1 request parser of the plain endpoints and the upgrade, on top
// of Beast's basic_parser (the documented extension point) instead of
// http::request_parser, because the stock parser has three holes a hostile
// client can reach:
//
//  - Trailer fields of a chunked body are stored with no size limit, and a
//    value over 64 KiB makes basic_fields throw std::length_error out of the
//    completion handler (a remote crash). Here trailers are counted against
//    `trailer_limit` and never stored.
//  - A Transfer-Encoding other than a final `chunked` (identity, gzip,
//    "chunked, identity", xchunked) makes basic_parser treat the body as
//    empty, so the body is read as a second request (smuggling). RFC 9112
//    §6.1: a server that does not understand a coding answers 501 and closes;
//    Content-Length beside Transfer-Encoding is refused with 400 (§6.3).
//  - Header names and values are kept in a small list of our own, bounded by
//    the header limit, so no header can throw either.
//
// Contract: after an async_read completes with an error, `refusal()` says
// what to answer (status and code) when the error is ours; Beast's own
// errors (header_limit, body_limit, bad_*) are mapped by the caller.
// Include only from net/ (Beast headers are expensive).
#pragma once

#include <boost/beast/http/basic_parser.hpp>
#include <boost/beast/http/field.hpp>
#include <boost/beast/http/verb.hpp>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace synapse::net {

// The unknown (to Beast) header fields a request keeps: MCP's (docs/mcp.md).
inline constexpr std::string_view kept_unknown_fields[] = {"mcp-session-id", "mcp-protocol-version",
                                                           "last-event-id"};

class RequestParser : public boost::beast::http::basic_parser<true> {
 public:
  enum class Refusal {
    none,
    trailer_too_large,    // 431
    transfer_coding,      // 501: a coding other than exactly `chunked`
    length_and_encoding,  // 400: Content-Length with Transfer-Encoding
  };

  RequestParser(std::size_t header_limit, std::size_t body_limit, std::size_t trailer_limit);

  Refusal refusal() const noexcept { return refusal_; }
  boost::beast::http::verb method() const noexcept { return method_; }
  const std::string& method_string() const noexcept { return method_string_; }
  const std::string& target() const noexcept { return target_; }
  int version() const noexcept { return version_; }  // 11 for HTTP/1.1, 10 for HTTP/1.0
  std::string& body() noexcept { return body_; }
  // The first value of a header, or empty.
  std::string_view header(boost::beast::http::field f) const noexcept;
  // Every value of a header that may be sent on several lines (RFC 9110
  // section 5.3), joined with ",".
  std::string header_list(boost::beast::http::field f) const;
  // Whether the header is present at all (an empty Origin still counts).
  bool has_header(boost::beast::http::field f) const noexcept;
  // Headers Beast has no field for, kept only when listed in
  // kept_unknown_fields (the MCP transport's): first value, or empty.
  std::string_view extra_header(std::string_view name) const noexcept;
  bool has_extra_header(std::string_view name) const noexcept;

 private:
  void on_request_impl(boost::beast::http::verb method, boost::beast::string_view method_str,
                       boost::beast::string_view target, int version, boost::beast::error_code& ec) override;
  void on_response_impl(int, boost::beast::string_view, int, boost::beast::error_code&) override {}
  void on_field_impl(boost::beast::http::field name, boost::beast::string_view name_string,
                     boost::beast::string_view value, boost::beast::error_code& ec) override;
  void on_header_impl(boost::beast::error_code& ec) override;
  void on_body_init_impl(const boost::optional<std::uint64_t>& content_length,
                         boost::beast::error_code& ec) override;
  std::size_t on_body_impl(boost::beast::string_view body, boost::beast::error_code& ec) override;
  void on_chunk_header_impl(std::uint64_t size, boost::beast::string_view extensions,
                            boost::beast::error_code& ec) override;
  std::size_t on_chunk_body_impl(std::uint64_t remain, boost::beast::string_view body,
                                 boost::beast::error_code& ec) override;
  void on_finish_impl(boost::beast::error_code& ec) override;

  std::size_t trailer_limit_;
  std::size_t trailer_bytes_ = 0;
  bool header_done_ = false;
  Refusal refusal_ = Refusal::none;
  boost::beast::http::verb method_ = boost::beast::http::verb::unknown;
  std::string method_string_;
  std::string target_;
  int version_ = 11;
  std::string body_;
  std::vector<std::pair<boost::beast::http::field, std::string>> headers_;  // known fields only
  std::vector<std::pair<std::string, std::string>> extra_;                  // kept_unknown_fields only
  std::string transfer_encoding_;  // every Transfer-Encoding line, comma-joined
  bool has_content_length_ = false;
};

// Whether a Transfer-Encoding value is exactly the one coding Synapse reads
// (`chunked`, case-insensitive, optional whitespace). Exposed for tests.
bool only_chunked(std::string_view transfer_encoding) noexcept;

}  // namespace synapse::net
