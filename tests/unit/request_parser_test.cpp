// The HTTP request parser's refusals (issue 19, items 1 and 2): trailers are
// bounded and never stored, only a lone `chunked` coding is read, and
// Content-Length beside Transfer-Encoding is refused. Fed whole and byte by
// byte, as a socket may deliver it.
#include <gtest/gtest.h>

#include <boost/asio/buffer.hpp>
#include <boost/beast/http/error.hpp>
#include <string>

#include "net/request_parser.hpp"

using synapse::net::only_chunked;
using synapse::net::RequestParser;
namespace http = boost::beast::http;

namespace {

struct Parsed {
  boost::beast::error_code ec;
  RequestParser::Refusal refusal;
  bool done;
  std::string body;
  std::size_t consumed;
};

Parsed parse(const std::string& in, std::size_t piece) {
  RequestParser p(16 * 1024, 1 << 20, 4096);
  p.eager(true);
  std::string pending;
  std::size_t off = 0, consumed = 0;
  boost::beast::error_code ec;
  while (!p.is_done()) {
    const std::size_t take = std::min(piece, in.size() - off);
    pending.append(in, off, take);
    off += take;
    const std::size_t used = p.put(boost::asio::buffer(pending.data(), pending.size()), ec);
    pending.erase(0, used);
    consumed += used;
    if (ec == http::error::need_more) {
      ec = {};
      if (off == in.size()) break;
      continue;
    }
    if (ec) break;
  }
  return {ec, p.refusal(), p.is_done(), p.body(), consumed};
}

const std::string smuggled = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n";

}  // namespace

TEST(RequestParser, OnlyALoneChunkedCodingIsRead) {
  EXPECT_TRUE(only_chunked("chunked"));
  EXPECT_TRUE(only_chunked(" Chunked "));
  EXPECT_TRUE(only_chunked(", chunked"));
  EXPECT_FALSE(only_chunked("identity"));
  EXPECT_FALSE(only_chunked("gzip"));
  EXPECT_FALSE(only_chunked("xchunked"));
  EXPECT_FALSE(only_chunked("chunked, identity"));
  EXPECT_FALSE(only_chunked("gzip, chunked"));
  EXPECT_FALSE(only_chunked("chunked, chunked"));
  EXPECT_FALSE(only_chunked(""));
}

TEST(RequestParser, ATransferCodingItCannotReadIsRefusedBeforeTheBody) {
  for (const char* coding : {"identity", "gzip", "xchunked", "chunked, identity"}) {
    for (std::size_t piece : {std::size_t{1}, std::size_t{4096}}) {
      const auto r = parse(std::string("POST /x HTTP/1.1\r\nTransfer-Encoding: ") + coding + "\r\n\r\n" + smuggled,
                           piece);
      EXPECT_EQ(r.refusal, RequestParser::Refusal::transfer_coding) << coding;
      EXPECT_EQ(r.ec, http::error::bad_transfer_encoding) << coding;
    }
  }
}

TEST(RequestParser, ContentLengthBesideTransferEncodingIsRefused) {
  const auto r = parse("POST /x HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 4096);
  // Beast's field checks refuse this pair before our header check runs; ours
  // stays as the second line. Either way: an error and no body.
  EXPECT_TRUE(r.ec);
  EXPECT_FALSE(r.done);
  const auto g = parse("POST /x HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: gzip\r\n\r\nhello", 4096);
  EXPECT_TRUE(g.ec);
  EXPECT_TRUE(g.body.empty());
}

TEST(RequestParser, TrailersAreBoundedAndNeverThrow) {
  for (std::size_t n : {std::size_t{5000}, std::size_t{70 * 1024}}) {
    const std::string in = "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Big: " +
                           std::string(n, 'a') + "\r\n\r\n";
    Parsed r{};
    EXPECT_NO_THROW(r = parse(in, 4096)) << n;
    EXPECT_EQ(r.refusal, RequestParser::Refusal::trailer_too_large) << n;
    EXPECT_EQ(r.ec, http::error::header_limit) << n;
  }
}

TEST(RequestParser, AChunkedBodyWithASmallTrailerIsReadWhole) {
  const std::string in = "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n";
  for (std::size_t piece : {std::size_t{1}, std::size_t{7}, std::size_t{4096}}) {
    const auto r = parse(in + smuggled, piece);
    EXPECT_FALSE(r.ec) << piece;
    EXPECT_TRUE(r.done);
    EXPECT_EQ(r.body, "hello world");
    EXPECT_EQ(r.consumed, in.size()) << "the next request stays unread";
  }
}

// Beast has no field for MCP's headers: the parser keeps those the /mcp
// endpoint reads (case-insensitive name, first value) and drops the other
// unknown ones.
TEST(RequestParser, KeepsTheMcpHeadersOnly) {
  const std::string in =
      "POST /mcp HTTP/1.1\r\nHost: x\r\nmcp-SESSION-id: abc\r\nMcp-Session-Id: second\r\n"
      "MCP-Protocol-Version: 2025-06-18\r\nX-Other: dropped\r\nContent-Length: 2\r\n\r\n{}";
  RequestParser p(16 * 1024, 1 << 20, 4096);
  p.eager(true);
  boost::beast::error_code ec;
  p.put(boost::asio::buffer(in.data(), in.size()), ec);
  ASSERT_FALSE(ec) << ec.message();
  ASSERT_TRUE(p.is_done());
  EXPECT_TRUE(p.has_extra_header("Mcp-Session-Id"));
  EXPECT_EQ(p.extra_header("mcp-session-id"), "abc");
  EXPECT_EQ(p.extra_header("mcp-protocol-version"), "2025-06-18");
  EXPECT_FALSE(p.has_extra_header("x-other"));
  EXPECT_FALSE(p.has_extra_header("last-event-id"));
  EXPECT_EQ(p.body(), "{}");
}
