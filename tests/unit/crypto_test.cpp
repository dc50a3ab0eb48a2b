// core/crypto: the digests against published test vectors (FIPS 180-2's
// "abc" and the empty string, RFC 6455's handshake example), and from
// several threads at once, as the I/O threads hash keys and nonces.
#include <gtest/gtest.h>

#include <string>
#include <thread>
#include <vector>

#include "core/crypto.hpp"

using namespace synapse;

namespace {

template <std::size_t N>
std::string hex(const std::array<std::uint8_t, N>& d) {
  return core::hex_encode(std::string_view(reinterpret_cast<const char*>(d.data()), d.size()));
}

TEST(Digests, MatchThePublishedVectors) {
  EXPECT_EQ(hex(core::sha256("abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(hex(core::sha256("")), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(hex(core::sha256("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(hex(core::sha1("abc")), "a9993e364706816aba3e25717850c26c9cd0d89d");
  EXPECT_EQ(hex(core::sha1("")), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
  // RFC 6455 section 1.3: the server's Sec-WebSocket-Accept for the sample nonce.
  const auto accept = core::sha1("dGhlIHNhbXBsZSBub25jZQ==258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
  EXPECT_EQ(core::base64_encode(std::string_view(reinterpret_cast<const char*>(accept.data()), accept.size())),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

TEST(Digests, AgreeAcrossThreads) {
  const std::string expected = hex(core::sha256("syn_k1_secret"));
  std::vector<std::thread> threads;
  std::vector<int> mismatches(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 2000; ++i) {
        if (hex(core::sha256("syn_k1_secret")) != expected) ++mismatches[t];
        if (hex(core::sha1("abc")) != "a9993e364706816aba3e25717850c26c9cd0d89d") ++mismatches[t];
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < 4; ++t) EXPECT_EQ(mismatches[t], 0) << "thread " << t;
}

}  // namespace
