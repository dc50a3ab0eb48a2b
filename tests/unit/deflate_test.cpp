// permessage-deflate (RFC 7692) in wire/: the negotiation, the codec, the
// shared compressed variant of a Message, and the reader's RSV1 handling.
#include <gtest/gtest.h>

#include <atomic>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "wire/deflate.hpp"
#include "wire/message.hpp"
#include "wire/ws_frame.hpp"

using namespace synapse::wire;

namespace {

constexpr const char* accepted = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

struct Recorder final : FrameSink {
  std::vector<std::pair<std::string, std::string>> messages;
  std::uint16_t violation = 0;
  std::string why;
  void on_message(Opcode op, std::string_view p) override {
    messages.emplace_back(op == Opcode::text ? "text" : "binary", std::string(p));
  }
  void on_ping(std::string_view) override {}
  void on_pong(std::string_view) override {}
  void on_close(std::uint16_t, std::string_view) override {}
  void on_violation(std::uint16_t c, std::string_view w) override {
    violation = c;
    why = std::string(w);
  }
};

const std::uint8_t mask[4] = {0xA1, 0xB2, 0xC3, 0xD4};

std::string json_like(std::size_t n) {
  std::string s;
  while (s.size() < n) s += R"({"topic":"room:lobby","event":"note","payload":{"text":"hello there","n":12345}},)";
  s.resize(n);
  return s;
}

std::string random_bytes(std::size_t n) {
  std::mt19937 rng(7);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

std::string compressed(std::string_view payload) {
  std::string out;
  deflate_message(payload, 6, out);
  return out;
}

// A masked client frame; `rsv1` marks it compressed.
std::string client_frame(Opcode op, std::string_view payload, bool fin, bool rsv1) {
  std::string f = encode_client_frame(op, payload, mask, fin);
  if (rsv1) f[0] = static_cast<char>(f[0] | 0x40);
  return f;
}

Recorder read(const std::string& bytes, bool deflate, std::size_t max = 1 << 20, std::size_t chunk = 0) {
  FrameReader reader(max, Role::server);
  if (deflate) reader.enable_deflate();
  Recorder rec;
  std::string copy = bytes;
  if (chunk == 0) chunk = copy.size();
  for (std::size_t i = 0; i < copy.size() && !reader.finished(); i += chunk) {
    reader.feed(copy.data() + i, std::min(chunk, copy.size() - i), rec);
  }
  return rec;
}

}  // namespace

// --- negotiation (RFC 7692 section 7) ---------------------------------------

TEST(DeflateNegotiation, AcceptsThePlainOfferWithBothNoContextTakeovers) {
  EXPECT_EQ(negotiate_permessage_deflate("permessage-deflate"), accepted);
  // What websockets and browsers send.
  EXPECT_EQ(negotiate_permessage_deflate("permessage-deflate; client_max_window_bits"), accepted);
  EXPECT_EQ(negotiate_permessage_deflate("permessage-deflate; client_max_window_bits=12"), accepted);
  EXPECT_EQ(negotiate_permessage_deflate("permessage-deflate; client_max_window_bits=\"10\""), accepted);
  EXPECT_EQ(negotiate_permessage_deflate("Permessage-Deflate;server_no_context_takeover;client_no_context_takeover"),
            accepted);
}

TEST(DeflateNegotiation, AnswersAnAcceptedServerMaxWindowBits) {
  EXPECT_EQ(negotiate_permessage_deflate("permessage-deflate; server_max_window_bits=15"),
            std::string(accepted) + "; server_max_window_bits=15");
}

TEST(DeflateNegotiation, DeclinesOffersItCannotHonourAndTakesTheNextOne) {
  // A smaller server window would need frames of its own for that client.
  EXPECT_EQ(negotiate_permessage_deflate("permessage-deflate; server_max_window_bits=10"), "");
  EXPECT_EQ(negotiate_permessage_deflate("permessage-deflate; server_max_window_bits=10, permessage-deflate"),
            accepted);
  // Unknown, duplicate and invalid parameters decline the offer.
  EXPECT_EQ(negotiate_permessage_deflate("permessage-deflate; x_unknown"), "");
  EXPECT_EQ(negotiate_permessage_deflate("permessage-deflate; server_no_context_takeover; server_no_context_takeover"),
            "");
  EXPECT_EQ(negotiate_permessage_deflate("permessage-deflate; client_no_context_takeover=1"), "");
  EXPECT_EQ(negotiate_permessage_deflate("permessage-deflate; client_max_window_bits=7"), "");
  EXPECT_EQ(negotiate_permessage_deflate("permessage-deflate; client_max_window_bits=16"), "");
  EXPECT_EQ(negotiate_permessage_deflate("permessage-deflate; client_max_window_bits=09"), "");
  EXPECT_EQ(negotiate_permessage_deflate("permessage-deflate; server_max_window_bits"), "");
  // Other extensions are not ours; several header lines arrive joined.
  EXPECT_EQ(negotiate_permessage_deflate("x-webkit-deflate-frame"), "");
  EXPECT_EQ(negotiate_permessage_deflate(""), "");
  EXPECT_EQ(negotiate_permessage_deflate("foo; bar=\"a,b\",permessage-deflate; client_max_window_bits"), accepted);
}

// --- codec ------------------------------------------------------------------

TEST(DeflateCodec, RoundTripsWithoutTheFlushTail) {
  for (std::size_t n : {0u, 1u, 100u, 5000u, 300000u}) {
    const std::string plain = json_like(n);
    const std::string c = compressed(plain);
    ASSERT_GE(c.size(), 1u);
    if (c.size() >= 4) {
      EXPECT_NE(c.substr(c.size() - 4), std::string("\x00\x00\xff\xff", 4));
    }
    std::string back;
    ASSERT_EQ(inflate_message(c, 0, back), InflateResult::ok) << n;
    EXPECT_EQ(back, plain);
  }
  // Each message stands alone: no context carried from the last one.
  const std::string a = compressed(json_like(4000));
  const std::string b = compressed(json_like(4000));
  EXPECT_EQ(a, b);
}

TEST(DeflateCodec, InflationStopsAtTheLimit) {
  const std::string bomb = compressed(std::string(20u << 20, 'A'));  // 20 MiB of one byte
  EXPECT_LT(bomb.size(), 64u << 10);
  std::string out;
  EXPECT_EQ(inflate_message(bomb, 1u << 20, out), InflateResult::too_big);
  // Bounded by the limit (std::string may round its growth up to twice).
  EXPECT_LE(out.capacity(), 2 * ((1u << 20) + 1));
  // Exactly at the limit is fine; one byte over is not.
  const std::string exact = compressed(std::string(4096, 'z'));
  EXPECT_EQ(inflate_message(exact, 4096, out), InflateResult::ok);
  EXPECT_EQ(out.size(), 4096u);
  EXPECT_EQ(inflate_message(exact, 4095, out), InflateResult::too_big);
}

TEST(DeflateCodec, GarbageIsCorrupt) {
  std::string out;
  EXPECT_EQ(inflate_message(std::string("\xff\xff\xff\xff\xff\xff", 6), 0, out), InflateResult::corrupt);
}

// --- the shared compressed variant -------------------------------------------

TEST(DeflateMessage, LargeTextIsCompressedOnceAndShared) {
  const std::string plain = json_like(8000);
  const Message m = Message::text(plain);
  const Message d1 = m.deflated(1024, 1);
  ASSERT_TRUE(d1.compressed());
  EXPECT_FALSE(m.compressed());
  EXPECT_LT(d1.size(), m.size() / 3);
  EXPECT_EQ(static_cast<unsigned char>(d1.data()[0]), 0xC1);  // FIN | RSV1 | text
  std::string back;
  ASSERT_EQ(inflate_message(d1.payload(), 0, back), InflateResult::ok);
  EXPECT_EQ(back, plain);
  // Every later call is the same bytes, not a new compression.
  const Message d2 = m.deflated(1024, 1);
  EXPECT_EQ(d1.data(), d2.data());
  // A compressed frame is never compressed again.
  EXPECT_EQ(d1.deflated(1024, 1).data(), d1.data());
}

TEST(DeflateMessage, SmallControlAndIncompressibleFramesStayAsTheyAre) {
  const Message small = Message::text(json_like(1000));
  EXPECT_EQ(small.deflated(1024, 1).data(), small.data());
  const Message ping = Message::pong("hi");
  EXPECT_EQ(ping.deflated(0, 1).data(), ping.data());
  const Message close = Message::close(1001, "bye");
  EXPECT_EQ(close.deflated(0, 1).data(), close.data());
  const Message noise = Message::frame(Opcode::binary, random_bytes(4000));
  EXPECT_EQ(noise.deflated(0, 1).data(), noise.data());
}

TEST(DeflateMessage, ThreadsAskingAtOnceAllGetOneVariant) {
  for (int round = 0; round < 20; ++round) {
    const Message m = Message::text(json_like(20000));
    std::vector<const char*> seen(8);
    std::atomic<bool> go{false};
    std::vector<std::thread> threads;
    for (std::size_t i = 0; i < seen.size(); ++i) {
      threads.emplace_back([&, i] {
        while (!go.load()) {
        }
        Message d = m.deflated(1024, 1);
        // Each thread's copy is released here; the message keeps its own.
        seen[i] = d.data();
      });
    }
    go = true;
    for (auto& t : threads) t.join();
    const Message after = m.deflated(1024, 1);
    for (const char* p : seen) EXPECT_EQ(p, after.data());
  }
}

// --- the reader ----------------------------------------------------------------

TEST(DeflateReader, Rsv1WithoutNegotiationIsAProtocolError) {
  const auto rec = read(client_frame(Opcode::text, compressed(json_like(2000)), true, true), false);
  EXPECT_EQ(rec.violation, 1002);
  EXPECT_TRUE(rec.messages.empty());
}

TEST(DeflateReader, InflatesCompressedMessagesWholeSplitAndFragmented) {
  const std::string plain = json_like(50000);
  const std::string c = compressed(plain);
  for (std::size_t chunk : {0u, 7u, 1000u}) {
    const auto rec = read(client_frame(Opcode::text, c, true, true), true, 1 << 20, chunk);
    ASSERT_EQ(rec.violation, 0) << rec.why;
    ASSERT_EQ(rec.messages.size(), 1u);
    EXPECT_EQ(rec.messages[0].second, plain);
  }
  // Fragments: RSV1 on the first frame only.
  const std::string frames = client_frame(Opcode::text, c.substr(0, 100), false, true) +
                             client_frame(Opcode::continuation, c.substr(100), true, false) +
                             client_frame(Opcode::text, "plain after", true, false);
  const auto rec = read(frames, true);
  ASSERT_EQ(rec.violation, 0) << rec.why;
  ASSERT_EQ(rec.messages.size(), 2u);
  EXPECT_EQ(rec.messages[0].second, plain);
  EXPECT_EQ(rec.messages[1].second, "plain after");
}

TEST(DeflateReader, Rsv1OnContinuationOrControlFramesIsAProtocolError) {
  const std::string c = compressed(json_like(3000));
  auto rec = read(client_frame(Opcode::text, c.substr(0, 10), false, true) +
                      client_frame(Opcode::continuation, c.substr(10), true, true),
                  true);
  EXPECT_EQ(rec.violation, 1002);
  rec = read(client_frame(Opcode::ping, "x", true, true), true);
  EXPECT_EQ(rec.violation, 1002);
  // RSV2 and RSV3 stay errors with the extension on.
  std::string f = client_frame(Opcode::text, "x", true, false);
  f[0] = static_cast<char>(f[0] | 0x20);
  EXPECT_EQ(read(f, true).violation, 1002);
}

TEST(DeflateReader, ABombClosesWith1009) {
  const std::string bomb = compressed(std::string(16u << 20, '{'));
  const auto rec = read(client_frame(Opcode::text, bomb, true, true), true, 1 << 20);
  EXPECT_EQ(rec.violation, 1009);
  EXPECT_TRUE(rec.messages.empty());
}

TEST(DeflateReader, InvalidUtf8InsideIsA1007AndGarbageA1002) {
  const auto bad = read(client_frame(Opcode::text, compressed(std::string(2000, 'a') + "\xc3\x28"), true, true), true);
  EXPECT_EQ(bad.violation, 1007);
  const auto garbage = read(client_frame(Opcode::text, std::string("\xff\xff\xff\xff", 4), true, true), true);
  EXPECT_EQ(garbage.violation, 1002);
  // Binary payloads are not UTF-8 checked.
  const std::string bytes = std::string(3000, '\xc3');
  const auto bin = read(client_frame(Opcode::binary, compressed(bytes), true, true), true);
  ASSERT_EQ(bin.messages.size(), 1u);
  EXPECT_EQ(bin.messages[0].second, bytes);
}
