// The RFC 6455 codec: what a server must accept, refuse and report.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "wire/ws_frame.hpp"

using namespace synapse::wire;

namespace {

struct Event {
  std::string kind;
  std::string payload;
  std::uint16_t code = 0;
};

struct Recorder final : FrameSink {
  std::vector<Event> events;
  void on_message(Opcode op, std::string_view p) override {
    events.push_back({op == Opcode::text ? "text" : "binary", std::string(p), 0});
  }
  void on_ping(std::string_view p) override { events.push_back({"ping", std::string(p)}); }
  void on_pong(std::string_view p) override { events.push_back({"pong", std::string(p)}); }
  void on_close(std::uint16_t c, std::string_view r) override { events.push_back({"close", std::string(r), c}); }
  void on_violation(std::uint16_t c, std::string_view why) override { events.push_back({"violation", std::string(why), c}); }
};

const std::uint8_t mask[4] = {0x12, 0x34, 0x56, 0x78};

std::string frame(Opcode op, std::string_view payload, bool fin = true) {
  return encode_client_frame(op, payload, mask, fin);
}

std::vector<Event> feed_all(const std::string& bytes, std::size_t max = 1 << 20, std::size_t chunk = 0) {
  FrameReader reader(max, Role::server);
  Recorder rec;
  std::string copy = bytes;
  if (chunk == 0) {
    reader.feed(copy.data(), copy.size(), rec);
  } else {
    for (std::size_t i = 0; i < copy.size(); i += chunk) {
      reader.feed(copy.data() + i, std::min(chunk, copy.size() - i), rec);
    }
  }
  return rec.events;
}

}  // namespace

TEST(WsFrame, EncodesHeaderLengthsAtEachBoundary) {
  std::uint8_t h[max_header_size];
  EXPECT_EQ(encode_header(h, Opcode::text, 125, true, nullptr), 2u);
  EXPECT_EQ(h[0], 0x81);
  EXPECT_EQ(h[1], 125);
  EXPECT_EQ(encode_header(h, Opcode::text, 126, true, nullptr), 4u);
  EXPECT_EQ(h[1], 126);
  EXPECT_EQ((h[2] << 8) | h[3], 126);
  EXPECT_EQ(encode_header(h, Opcode::binary, 65536, true, nullptr), 10u);
  EXPECT_EQ(h[1], 127);
  EXPECT_EQ(encode_header(h, Opcode::text, 5, true, mask), 6u);
  EXPECT_EQ(h[1], 0x85);
}

TEST(WsFrame, ServerMessageCarriesHeaderAndPayload) {
  const Message m = Message::text("hello");
  ASSERT_EQ(m.size(), 7u);
  EXPECT_EQ(static_cast<unsigned char>(m.data()[0]), 0x81);
  EXPECT_EQ(m.payload(), "hello");
  Message copy = m;  // shares the block
  EXPECT_EQ(copy.data(), m.data());
}

TEST(WsFrame, TextPartsConcatenates) {
  const Message m = Message::text_parts({"ab", "", "cde"});
  EXPECT_EQ(m.payload(), "abcde");
}

TEST(WsFrame, CloseFrameCarriesCodeAndCutsReasonOnCharacterBoundary) {
  const std::string reason(122, 'a');
  const Message m = Message::close(4008, reason + "\xC3\xA9\xC3\xA9");  // 126 bytes of reason
  const auto p = m.payload();
  ASSERT_LE(p.size(), 125u);
  EXPECT_EQ(static_cast<unsigned char>(p[0]) << 8 | static_cast<unsigned char>(p[1]), 4008);
  EXPECT_TRUE(is_valid_utf8(p.substr(2)));
}

TEST(WsFrame, ReadsMaskedTextInOnePiece) {
  auto ev = feed_all(frame(Opcode::text, R"(["1","1","phoenix","heartbeat",{}])"));
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].kind, "text");
  EXPECT_EQ(ev[0].payload, R"(["1","1","phoenix","heartbeat",{}])");
}

TEST(WsFrame, ReadsFramesSplitAtEveryByte) {
  const std::string big(70000, 'x');
  const std::string bytes = frame(Opcode::text, "first") + frame(Opcode::ping, "p") + frame(Opcode::text, big);
  auto ev = feed_all(bytes, 1 << 20, 1);
  ASSERT_EQ(ev.size(), 3u);
  EXPECT_EQ(ev[0].payload, "first");
  EXPECT_EQ(ev[1].kind, "ping");
  EXPECT_EQ(ev[2].payload, big);
}

TEST(WsFrame, AssemblesFragmentsWithInterleavedControlFrames) {
  const std::string bytes = frame(Opcode::text, "hel", false) + frame(Opcode::ping, "x") +
                            encode_client_frame(Opcode::continuation, "lo", mask, false) +
                            encode_client_frame(Opcode::continuation, "!", mask, true);
  auto ev = feed_all(bytes, 1 << 20, 3);
  ASSERT_EQ(ev.size(), 2u);
  EXPECT_EQ(ev[0].kind, "ping");
  EXPECT_EQ(ev[1].payload, "hello!");
}

TEST(WsFrame, RefusesUnmaskedClientFrame) {
  std::uint8_t h[max_header_size];
  const std::size_t n = encode_header(h, Opcode::text, 2, true, nullptr);
  std::string bytes(reinterpret_cast<char*>(h), n);
  bytes += "hi";
  auto ev = feed_all(bytes);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].kind, "violation");
  EXPECT_EQ(ev[0].code, close_code::protocol_error);
}

TEST(WsFrame, RefusesOversizedMessageFromHeaderAlone) {
  // Only the header of a 2 MiB frame arrives: the limit trips before any payload.
  std::uint8_t h[max_header_size];
  const std::size_t n = encode_header(h, Opcode::text, 2u << 20, true, mask);
  auto ev = feed_all(std::string(reinterpret_cast<char*>(h), n), 1 << 20);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].kind, "violation");
  EXPECT_EQ(ev[0].code, close_code::too_big);
}

TEST(WsFrame, RefusesFragmentsThatTogetherExceedTheLimit) {
  const std::string part(600, 'a');
  const std::string bytes = frame(Opcode::text, part, false) + encode_client_frame(Opcode::continuation, part, mask, true);
  auto ev = feed_all(bytes, 1000);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].code, close_code::too_big);
}

TEST(WsFrame, MessageAtExactlyTheLimitIsAccepted) {
  auto ev = feed_all(frame(Opcode::text, std::string(1000, 'a')), 1000);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].kind, "text");
}

TEST(WsFrame, InvalidUtf8FailsTheStreamWith1007) {
  auto ev = feed_all(frame(Opcode::text, "\xC3\x28") + frame(Opcode::text, "ok"));
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].kind, "violation");
  EXPECT_EQ(ev[0].code, close_code::invalid_payload);
}

TEST(WsFrame, InvalidUtf8FailsAtTheOffendingFragmentBeforeTheMessageEnds) {
  // The first fragment is already invalid; the message's end never comes.
  auto ev = feed_all(frame(Opcode::text, "ok \xFF", false));
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].kind, "violation");
  EXPECT_EQ(ev[0].code, close_code::invalid_payload);
}

TEST(WsFrame, ATextMessageEndingInsideACharacterFailsWith1007) {
  const std::string bytes = frame(Opcode::text, "a", false) + encode_client_frame(Opcode::continuation, "\xE2\x82", mask, true);
  auto ev = feed_all(bytes);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].code, close_code::invalid_payload);
}

TEST(WsFrame, BinaryMessagesAreNotCheckedForUtf8) {
  auto ev = feed_all(frame(Opcode::binary, "\xFF\xFE"));
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].kind, "binary");
}

TEST(WsFrame, CloseCodesOutsideTheRegisteredRangesAnswer1002) {
  for (std::uint16_t c : {0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535}) {
    const std::string body{static_cast<char>(c >> 8), static_cast<char>(c & 0xFF)};
    auto ev = feed_all(frame(Opcode::close, body));
    ASSERT_EQ(ev.size(), 1u) << c;
    EXPECT_EQ(ev[0].kind, "violation") << c;
    EXPECT_EQ(ev[0].code, close_code::protocol_error) << c;
  }
  for (std::uint16_t c : {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4999}) {
    const std::string body{static_cast<char>(c >> 8), static_cast<char>(c & 0xFF)};
    auto ev = feed_all(frame(Opcode::close, body));
    ASSERT_EQ(ev.size(), 1u) << c;
    EXPECT_EQ(ev[0].kind, "close") << c;
    EXPECT_EQ(ev[0].code, c);
  }
}

TEST(WsFrame, Utf8SplitAcrossFragmentsIsValid) {
  const std::string bytes = frame(Opcode::text, "\xE2\x82", false) + encode_client_frame(Opcode::continuation, "\xAC", mask, true);
  auto ev = feed_all(bytes);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].kind, "text");
  EXPECT_EQ(ev[0].payload, "\xE2\x82\xAC");
}

TEST(WsFrame, CloseFrameReportsCodeAndReason) {
  std::string body = "\x0F\xA0" "bye";  // 4000
  auto ev = feed_all(frame(Opcode::close, body) + frame(Opcode::text, "ignored"));
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].kind, "close");
  EXPECT_EQ(ev[0].code, 4000);
  EXPECT_EQ(ev[0].payload, "bye");
}

TEST(WsFrame, EmptyCloseMeansNoStatus) {
  auto ev = feed_all(frame(Opcode::close, ""));
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].code, close_code::no_status);
}

TEST(WsFrame, ProtocolViolations) {
  struct Case {
    const char* name;
    std::string bytes;
  };
  std::uint8_t h[max_header_size];
  const std::size_t n = encode_header(h, Opcode::text, 0, true, mask);
  std::string rsv(reinterpret_cast<char*>(h), n);
  rsv[0] = static_cast<char>(rsv[0] | 0x40);
  std::string unknown_op = frame(Opcode::text, "");
  unknown_op[0] = static_cast<char>(0x83);
  const Case cases[] = {
      {"reserved bit", rsv},
      {"unknown opcode", unknown_op},
      {"fragmented ping", frame(Opcode::ping, "x", false)},
      {"long ping", frame(Opcode::ping, std::string(126, 'x'))},
      {"continuation first", encode_client_frame(Opcode::continuation, "x", mask, true)},
      {"text inside fragmented text", frame(Opcode::text, "a", false) + frame(Opcode::text, "b")},
      {"close with one byte", frame(Opcode::close, "\x03")},
      {"close with code 1005", frame(Opcode::close, "\x03\xED")},
  };
  for (const auto& c : cases) {
    auto ev = feed_all(c.bytes);
    ASSERT_FALSE(ev.empty()) << c.name;
    EXPECT_EQ(ev.back().kind, "violation") << c.name;
    EXPECT_EQ(ev.back().code, close_code::protocol_error) << c.name;
  }
}

TEST(WsFrame, ShrinkReleasesAssemblyAfterLargeMessage) {
  FrameReader reader(1 << 20, Role::server);
  Recorder rec;
  std::string bytes = frame(Opcode::text, std::string(200000, 'z'));
  reader.feed(bytes.data(), bytes.size() / 2, rec);
  EXPECT_GT(reader.buffered(), 90000u);  // half the frame is held
  reader.feed(bytes.data() + bytes.size() / 2, bytes.size() - bytes.size() / 2, rec);
  ASSERT_EQ(rec.events.size(), 1u);
  EXPECT_EQ(reader.buffered(), 0u);
}

TEST(WsFrame, HoldsNoAssemblyForWholeMessagesAndEmptyFragments) {
  // The assembly buffer is made on first use (FrameReader::assembly_): a
  // message delivered in place, or fragments that are all empty, make none.
  FrameReader reader(1 << 20, Role::server);
  Recorder rec;
  std::string bytes = frame(Opcode::text, "whole") + frame(Opcode::text, "", false) +
                      frame(Opcode::continuation, "", false) + frame(Opcode::continuation, "");
  reader.feed(bytes.data(), bytes.size(), rec);
  ASSERT_EQ(rec.events.size(), 2u);
  EXPECT_EQ(rec.events[0].payload, "whole");
  EXPECT_EQ(rec.events[1].kind, "text");
  EXPECT_EQ(rec.events[1].payload, "");
  EXPECT_EQ(reader.buffered(), 0u);
  // A fragmented message that arrives in one read is assembled in the
  // read's own state: nothing is held once it is delivered.
  std::string parts = frame(Opcode::text, "ab", false) + frame(Opcode::continuation, "cd");
  reader.feed(parts.data(), parts.size(), rec);
  ASSERT_EQ(rec.events.size(), 3u);
  EXPECT_EQ(rec.events[2].payload, "abcd");
  EXPECT_EQ(reader.buffered(), 0u);
  // Across reads, the open message is held between them and dropped at its end.
  std::string first = frame(Opcode::text, "ef", false);
  std::string second = frame(Opcode::continuation, "gh");
  reader.feed(first.data(), first.size(), rec);
  EXPECT_GT(reader.buffered(), 0u);
  reader.feed(second.data(), second.size(), rec);
  ASSERT_EQ(rec.events.size(), 4u);
  EXPECT_EQ(rec.events[3].payload, "efgh");
  EXPECT_EQ(reader.buffered(), 0u);
}

TEST(WsFrame, IdleReaderIsSmallAndHoldsNothingBetweenFrames) {
#if defined(__GLIBCXX__) && defined(__x86_64__)
  EXPECT_LE(sizeof(FrameReader), 16u);
#endif
  // A stream of frames of every kind, cut at every byte offset: the same
  // events as one read, and nothing held whenever a cut falls on a frame
  // boundary of a finished message.
  const std::string bytes = frame(Opcode::text, "hello") + frame(Opcode::ping, "p") +
                            frame(Opcode::text, "caf\xC3\xA9 ", false) + frame(Opcode::ping, "") +
                            frame(Opcode::continuation, "\xF0\x9F\x98\x80") + frame(Opcode::binary, std::string(300, 'b')) +
                            frame(Opcode::pong, std::string(125, 'q'));
  std::vector<std::size_t> boundaries;  // offsets where a message has just ended
  {
    std::size_t at = 0;
    for (const std::string& f : {frame(Opcode::text, "hello"), frame(Opcode::ping, "p")}) boundaries.push_back(at += f.size());
  }
  std::string one = bytes;
  FrameReader whole(1 << 20, Role::server);
  Recorder expected;
  whole.feed(one.data(), one.size(), expected);
  ASSERT_EQ(expected.events.size(), 6u);  // the empty ping arrives inside the text message
  EXPECT_EQ(expected.events[2].kind, "ping");
  EXPECT_EQ(expected.events[3].payload, "caf\xC3\xA9 \xF0\x9F\x98\x80");
  EXPECT_EQ(whole.buffered(), 0u);
  for (std::size_t cut = 1; cut < bytes.size(); ++cut) {
    std::string copy = bytes;
    FrameReader reader(1 << 20, Role::server);
    Recorder rec;
    reader.feed(copy.data(), cut, rec);
    for (std::size_t b : boundaries) {
      if (b == cut) {
        EXPECT_EQ(reader.buffered(), 0u) << "cut at " << cut;
      }
    }
    reader.feed(copy.data() + cut, copy.size() - cut, rec);
    ASSERT_EQ(rec.events.size(), expected.events.size()) << "cut at " << cut;
    for (std::size_t k = 0; k < rec.events.size(); ++k) {
      EXPECT_EQ(rec.events[k].kind, expected.events[k].kind) << "cut at " << cut;
      EXPECT_EQ(rec.events[k].payload, expected.events[k].payload) << "cut at " << cut;
    }
    EXPECT_EQ(reader.buffered(), 0u) << "cut at " << cut;
  }
}

TEST(WsFrame, InvalidUtf8SplitAcrossReadsFailsAtTheOffendingBytes) {
  // The validator's position survives the read boundary: a 4-byte character
  // cut after its first byte, then a bad continuation byte in the next read.
  FrameReader reader(1 << 20, Role::server);
  Recorder rec;
  std::string bytes = frame(Opcode::text, "ok\xF0\x9F", false) + frame(Opcode::continuation, "\x41");
  const std::size_t cut = bytes.size() - 3;  // inside the continuation frame's payload area
  reader.feed(bytes.data(), cut, rec);
  EXPECT_TRUE(rec.events.empty());
  EXPECT_GT(reader.buffered(), 0u);
  reader.feed(bytes.data() + cut, bytes.size() - cut, rec);
  ASSERT_EQ(rec.events.size(), 1u);
  EXPECT_EQ(rec.events[0].kind, "violation");
  EXPECT_EQ(rec.events[0].code, close_code::invalid_payload);
  EXPECT_TRUE(reader.finished());
  EXPECT_EQ(reader.buffered(), 0u);
}

TEST(WsFrame, ClientRoleReadsUnmaskedServerFrames) {
  FrameReader reader(1 << 20, Role::client);
  Recorder rec;
  Message m = Message::text("pushed");
  std::string bytes(m.data(), m.size());
  reader.feed(bytes.data(), bytes.size(), rec);
  ASSERT_EQ(rec.events.size(), 1u);
  EXPECT_EQ(rec.events[0].payload, "pushed");
}

TEST(Utf8, AcceptsAndRefuses) {
  EXPECT_TRUE(is_valid_utf8("plain ascii"));
  EXPECT_TRUE(is_valid_utf8("\xF0\x9F\x98\x80 emoji"));
  EXPECT_FALSE(is_valid_utf8("\xC0\xAF"));          // overlong
  EXPECT_FALSE(is_valid_utf8("\xED\xA0\x80"));      // surrogate
  EXPECT_FALSE(is_valid_utf8("\xF4\x90\x80\x80"));  // past U+10FFFF
  EXPECT_FALSE(is_valid_utf8("\xE2\x82"));          // truncated
  EXPECT_FALSE(is_valid_utf8("\xFF"));
}

TEST(WsFrame, DeclaredLengthIsNotReservedBeforeTheBytesArrive) {
  FrameReader reader(1 << 20, Role::server);
  Recorder rec;
  std::uint8_t h[max_header_size];
  const std::size_t n = encode_header(h, Opcode::text, (1 << 20) - 1, true, mask);
  std::string bytes(reinterpret_cast<char*>(h), n);
  bytes += "0123456789";
  reader.feed(bytes.data(), bytes.size(), rec);
  EXPECT_TRUE(rec.events.empty());
  EXPECT_LT(reader.buffered(), 4096u);
}
