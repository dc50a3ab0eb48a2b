// The per-connection objects every idle joined member holds (issue 16 item
// 2, docs/performance.md "Per-connection memory and setup"): bounds on their
// sizes, so a field added without thought shows up here rather than as RSS
// in the benchmark, and SmallText, the 16-byte text presence keeps per member.
#include <gtest/gtest.h>

#include <string>
#include <utility>

#include "channels/channel.hpp"
#include "channels/session.hpp"
#include "core/small_text.hpp"
#include "net/ws_connection.hpp"
#include "pubsub/broker.hpp"
#include "wire/ws_frame.hpp"

using namespace synapse;

namespace {

TEST(MemoryLayout, PerConnectionObjectsStayWithinTheirBounds) {
#if defined(__GLIBCXX__) && defined(__x86_64__)
  // Measured on x86-64 with libstdc++ (std::string 32 B). malloc rounds a
  // block up to 16 bytes with 8 of its own, so growing one of these past
  // its bound costs 16 bytes per connection.
  // Connection: 520 + 16 B of make_shared control block = a 544 B chunk.
  EXPECT_LE(sizeof(net::Connection), 520u);
  EXPECT_LE(sizeof(channels::Session), 120u);
  // The frame reader: no padding, the assembly string behind a pointer.
  EXPECT_LE(sizeof(wire::FrameReader), 80u);
  // The outbound queue: no stream positions outside the exempt record.
  EXPECT_LE(sizeof(net::OutboundQueue), 56u);
  // Channel: topic and join_ref in one string; Subscriber: 32-bit slots,
  // its phx_ref and agent id SmallTexts. PubSubChannel (both, plus 24 B)
  // is then 168 B.
  EXPECT_LE(sizeof(channels::Channel), 48u);
  EXPECT_LE(sizeof(pubsub::Subscriber), 88u);
#else
  GTEST_SKIP() << "bounds measured for x86-64 libstdc++";
#endif
}

TEST(SmallText, KeepsShortTextInlineAndLongTextExactly) {
  EXPECT_EQ(sizeof(SmallText), 16u);
  SmallText empty;
  EXPECT_TRUE(empty.empty());
  EXPECT_EQ(empty.view(), "");
  for (std::size_t n : {1u, 14u, 15u, 16u, 17u, 100u, 5000u}) {
    std::string s;
    for (std::size_t i = 0; i < n; ++i) s.push_back(static_cast<char>('a' + i % 26));
    SmallText t(s);
    EXPECT_EQ(t.view(), s) << n;
    EXPECT_EQ(t.size(), n);
    SmallText copy(t);
    EXPECT_EQ(copy.view(), s);
    SmallText moved(std::move(copy));
    EXPECT_EQ(moved.view(), s);
    EXPECT_TRUE(copy.empty());  // NOLINT(bugprone-use-after-move): a moved-from SmallText is empty
    SmallText assigned;
    assigned = t;
    EXPECT_EQ(assigned.view(), s);
    assigned = std::string_view("{");
    EXPECT_EQ(assigned.view(), "{");
    assigned = std::move(moved);
    EXPECT_EQ(assigned.view(), s);
    assigned = assigned;  // self-assignment keeps the text
    EXPECT_EQ(assigned.view(), s);
  }
  // clear() frees a long text and leaves it empty.
  SmallText cleared(std::string(40, 'x'));
  cleared.clear();
  EXPECT_TRUE(cleared.empty());
  cleared = std::string_view("n1-7");
  EXPECT_EQ(cleared.view(), "n1-7");
  // Embedded NULs are text like any other.
  const std::string nul("a\0b", 3);
  EXPECT_EQ(SmallText(nul).view(), nul);
}

}  // namespace
