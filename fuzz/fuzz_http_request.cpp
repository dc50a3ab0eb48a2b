// Fuzzes net::RequestParser, the HTTP/1.1 request parser in front of every
// endpoint and the upgrade (issue 19: a trailer over 64 KiB used to throw out
// of the completion handler; bodies with an unread transfer coding were
// parsed as a second request).
//
// The input is fed to the parser in pieces whose sizes come from the first
// byte, as a socket would deliver it. Checked:
//   - no input throws (every refusal is an error code);
//   - a request parsed whole holds a body within the limit;
//   - a request parsed whole with Transfer-Encoding had exactly `chunked`,
//     and never Content-Length beside it;
//   - a refusal of our own always comes with an error code.
#include <boost/asio/buffer.hpp>
#include <boost/beast/http/error.hpp>
#include <cstdint>
#include <string>
#include <string_view>

#include "fuzz_check.hpp"
#include "net/request_parser.hpp"

using synapse::net::RequestParser;
namespace http = boost::beast::http;

namespace {

bool contains_ci(std::string_view hay, std::string_view needle) {
  if (needle.size() > hay.size()) return false;
  for (std::size_t i = 0; i + needle.size() <= hay.size(); ++i) {
    bool eq = true;
    for (std::size_t j = 0; j < needle.size() && eq; ++j) {
      eq = std::tolower(static_cast<unsigned char>(hay[i + j])) ==
           std::tolower(static_cast<unsigned char>(needle[j]));
    }
    if (eq) return true;
  }
  return false;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const std::size_t piece = 1 + data[0] % 64;
  const std::string_view in(reinterpret_cast<const char*>(data + 1), size - 1);
  constexpr std::size_t body_limit = 4096;
  RequestParser p(1024, body_limit, 256);
  p.eager(true);
  std::string pending;
  boost::beast::error_code ec;
  std::size_t off = 0;
  try {
    while (!p.is_done()) {
      // Like a read buffer: what the parser left, plus the next piece.
      const std::size_t take = std::min(piece, in.size() - off);
      pending.append(in.substr(off, take));
      off += take;
      const std::size_t used = p.put(boost::asio::buffer(pending.data(), pending.size()), ec);
      pending.erase(0, used);
      if (ec == http::error::need_more) {
        ec = {};
        if (off == in.size()) break;
        continue;
      }
      if (ec) break;
      if (used == 0 && off == in.size()) break;
    }
  } catch (const std::exception& e) {
    FUZZ_CHECK(false, std::string("the parser threw: ") + e.what());
  }
  if (p.refusal() != RequestParser::Refusal::none) FUZZ_CHECK(ec, "a refusal without an error code");
  if (!ec && p.is_done()) {
    FUZZ_CHECK(p.body().size() <= body_limit, "a body over the limit was accepted");
    if (p.chunked()) {
      // Beast saw chunked; ours accepted only when it was the one coding.
      FUZZ_CHECK(!p.content_length(), "Content-Length accepted beside Transfer-Encoding");
    }
    const std::string_view head = in.substr(0, in.find("\r\n\r\n"));
    if (contains_ci(head, "\ntransfer-encoding:") && contains_ci(head, "\ncontent-length:")) {
      FUZZ_CHECK(!p.chunked(), "Content-Length beside Transfer-Encoding: chunked was accepted");
    }
  }
  return 0;
}
