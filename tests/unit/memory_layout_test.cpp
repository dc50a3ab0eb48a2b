// The per-connection objects every idle joined member holds (issue 16 item
// 2, docs/performance.md "Per-connection memory and setup"): bounds on their
// sizes, so a field added without thought shows up here rather than as RSS
// in the benchmark, and SmallText, the 16-byte text presence keeps per member.
#include <gtest/gtest.h>

#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "channels/channel.hpp"
#include "channels/session.hpp"
#include "core/inline_vector.hpp"
#include "core/small_text.hpp"
#include "limits/accept_gate.hpp"
#include "limits/connection_limiter.hpp"
#include "limits/rate_limiter.hpp"
#include "net/peer_address.hpp"
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
  // Connection: 328 + 16 B of make_shared control block = a 352 B chunk
  // (its peer a 23-byte PeerAddress, its session in place with the flag
  // among the connection's flags, its services its thread's, its frame
  // reader 16 B). 336 would be a 368 B chunk: the next 8 bytes matter.
  EXPECT_LE(sizeof(net::Connection), 328u);
  // Session: its message bucket's state only (the rates derived on use, the
  // query bucket in its Rare record).
  EXPECT_LE(sizeof(channels::Session), 80u);
  // The buckets' per-connection part: when it is full again.
  EXPECT_LE(sizeof(limits::BucketState), 8u);
  // The permits point at the limiter's and the gate's map entries (which
  // name their limiter or gate): 16 + 8 B where they were 24 + 16.
  EXPECT_LE(sizeof(limits::Permit), 16u);
  EXPECT_LE(sizeof(limits::SocketPermit), 8u);
  // The frame reader: its bound and flags, and a pointer to the open
  // frame's or message's state, which exists only between reads that split
  // one (wire/ws_frame.hpp, FrameReader::Open).
  EXPECT_LE(sizeof(wire::FrameReader), 16u);
  // The outbound queue: no stream positions outside the exempt record.
  EXPECT_LE(sizeof(net::OutboundQueue), 56u);
  // Channel: topic and join_ref in one SmallText; Subscriber: 32-bit
  // slots, its phx_ref and agent id SmallTexts, its start offsets and
  // connection id only in the Fanout's member slot. PubSubChannel (both,
  // plus 24 B: the session reference, the flags, the publish hook's
  // pointer) is then 120 B, a 128 B malloc chunk.
  EXPECT_LE(sizeof(channels::Channel), 32u);
  EXPECT_LE(sizeof(pubsub::Subscriber), 64u);
#else
  GTEST_SKIP() << "bounds measured for x86-64 libstdc++";
#endif
}

TEST(PeerAddress, FormatsAsTheEndpointDid) {
  namespace ip = boost::asio::ip;
  // What the connection used to keep: address().to_string() + ":" + port.
  const auto old_text = [](const ip::tcp::endpoint& ep) {
    return ep.address().to_string() + ":" + std::to_string(ep.port());
  };
  for (const char* a : {"127.0.0.1", "0.0.0.0", "255.255.255.255", "10.1.2.3", "::1", "::",
                        "::ffff:127.0.0.1", "2001:db8:85a3::8a2e:370:7334",
                        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "fe80::1"}) {
    for (std::uint16_t port : {std::uint16_t{0}, std::uint16_t{1}, std::uint16_t{8080}, std::uint16_t{65535}}) {
      const ip::tcp::endpoint ep(ip::make_address(a), port);
      const net::PeerAddress p(ep);
      EXPECT_FALSE(p.empty());
      EXPECT_EQ(p.to_string(), old_text(ep)) << a;
      EXPECT_EQ(p.ip(), ep.address().to_string()) << a;
      EXPECT_EQ(p.port(), port);
    }
  }
  // Every octet value in every position formats as Asio formats it (the
  // IPv4 text is made by hand).
  for (unsigned v = 0; v < 256; ++v) {
    for (int pos = 0; pos < 4; ++pos) {
      ip::address_v4::bytes_type b{{1, 20, 3, 240}};
      b[static_cast<std::size_t>(pos)] = static_cast<unsigned char>(v);
      const ip::tcp::endpoint ep(ip::address_v4(b), 9);
      ASSERT_EQ(net::PeerAddress(ep).ip(), ep.address().to_string()) << v << " at " << pos;
      ASSERT_EQ(net::PeerAddress(ep).to_string(), old_text(ep));
    }
  }
  // An IPv6 scope id is kept.
  ip::address_v6 scoped = ip::make_address_v6("fe80::1");
  scoped.scope_id(7);
  const ip::tcp::endpoint ep(scoped, 443);
  EXPECT_EQ(net::PeerAddress(ep).to_string(), old_text(ep));
  // No peer formats as nothing, as the empty string it replaces.
  EXPECT_TRUE(net::PeerAddress().empty());
  EXPECT_EQ(net::PeerAddress().to_string(), "");
  EXPECT_EQ(net::PeerAddress().ip(), "");
  EXPECT_EQ(sizeof(net::PeerAddress), 23u);
}

// InlineOneVector: the session's list of joined topics. Its first element
// is inside the object (no heap block for a connection on one topic), in a
// std::vector's 24 bytes.
TEST(InlineOneVector, HoldsOneElementInsideAndMoreOnTheHeap) {
  EXPECT_LE(sizeof(InlineOneVector<std::unique_ptr<int>>), sizeof(std::vector<std::unique_ptr<int>>));
  struct TwoPointers {
    std::unique_ptr<int> a, b;
  };
  EXPECT_EQ(sizeof(InlineOneVector<TwoPointers>), 24u);  // as Session::Joined

  InlineOneVector<std::unique_ptr<int>> v;
  EXPECT_TRUE(v.empty());
  EXPECT_EQ(v.begin(), v.end());
  v.push_back(std::make_unique<int>(1));
  EXPECT_FALSE(v.on_heap());
  EXPECT_EQ(v.size(), 1u);
  EXPECT_EQ(*v.back(), 1);
  // The element is inside the object.
  const auto* self = reinterpret_cast<const char*>(&v);
  const auto* first = reinterpret_cast<const char*>(&v[0]);
  EXPECT_TRUE(first >= self && first < self + sizeof v);
  v.push_back(std::make_unique<int>(2));
  EXPECT_TRUE(v.on_heap());
  EXPECT_EQ(*v[0], 1);
  EXPECT_EQ(*v[1], 2);
  v.erase(v.begin());
  EXPECT_EQ(v.size(), 1u);
  EXPECT_EQ(*v[0], 2);
  v.clear();
  EXPECT_TRUE(v.empty());
  EXPECT_TRUE(v.on_heap());  // as a vector keeps its capacity
}

// Against std::vector: random pushes, erases at random places and clears,
// with an element that counts its lives, so a lost destruction or a double
// one shows (and ASan sees a use of a moved block).
TEST(InlineOneVector, DoesWhatAStdVectorDoesAndDestroysEveryElementOnce) {
  static int alive = 0;
  struct Counted {
    explicit Counted(int v) : value(std::make_unique<int>(v)) { ++alive; }
    Counted(Counted&& o) noexcept : value(std::move(o.value)) { ++alive; }
    Counted& operator=(Counted&& o) noexcept {
      value = std::move(o.value);
      return *this;
    }
    ~Counted() { --alive; }
    std::unique_ptr<int> value;
  };
  std::mt19937 rng(7);
  for (int round = 0; round < 50; ++round) {
    {
      InlineOneVector<Counted> v;
      std::vector<int> model;
      for (int step = 0; step < 200; ++step) {
        const auto what = rng() % 10;
        if (what < 6) {
          const int x = static_cast<int>(rng() % 1000);
          v.push_back(Counted(x));
          model.push_back(x);
        } else if (what < 9 && !model.empty()) {
          const auto at = rng() % model.size();
          v.erase(v.begin() + static_cast<std::ptrdiff_t>(at));
          model.erase(model.begin() + static_cast<std::ptrdiff_t>(at));
        } else if (what == 9 && rng() % 4 == 0) {
          v.clear();
          model.clear();
        }
        ASSERT_EQ(v.size(), model.size());
        std::size_t i = 0;
        for (const auto& c : v) {
          ASSERT_TRUE(c.value);
          ASSERT_EQ(*c.value, model[i++]) << "round " << round << " step " << step;
        }
        ASSERT_EQ(alive, static_cast<int>(model.size()));
      }
    }
    ASSERT_EQ(alive, 0) << "round " << round;
  }
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

// A channel keeps its topic and join_ref in one SmallText: inline up to 15
// characters together, on the heap past that, and a null join_ref stays
// null (not empty).
class ProbeChannel final : public channels::Channel {
 public:
  explicit ProbeChannel(const protocol::Envelope& join) : Channel(join) {}
  void handle_in(const protocol::Envelope&) override {}
  void leave() override {}
};

TEST(ChannelIdent, TopicAndJoinRefSurviveEveryLength) {
  for (std::size_t topic_len : {1u, 10u, 14u, 15u, 16u, 40u, 255u}) {
    for (int ref_kind = 0; ref_kind < 4; ++ref_kind) {
      const std::string topic = "t:" + std::string(topic_len, 'a');
      protocol::Envelope join;
      join.topic = topic;
      std::string ref;
      if (ref_kind == 1) ref = "";                   // an empty join_ref is not null
      if (ref_kind == 2) ref = "3";
      if (ref_kind == 3) ref = std::string(64, '9');  // protocol::max_ref_bytes
      if (ref_kind > 0) join.join_ref = std::string_view(ref);
      const ProbeChannel ch(join);
      EXPECT_EQ(ch.topic(), topic);
      if (ref_kind == 0) {
        EXPECT_FALSE(ch.join_ref().has_value());
      } else {
        ASSERT_TRUE(ch.join_ref().has_value());
        EXPECT_EQ(*ch.join_ref(), ref);
      }
    }
  }
}

}  // namespace
