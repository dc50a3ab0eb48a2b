#include <gtest/gtest.h>

#include "net/outbound_queue.hpp"

using synapse::net::OutboundQueue;
using synapse::wire::Message;

TEST(OutboundQueue, GathersInOrderAndConsumesPartialWrites) {
  OutboundQueue q;
  std::vector<Message> msgs;
  for (int i = 0; i < 20; ++i) {
    msgs.push_back(Message::text("m" + std::to_string(i)));
    q.push(msgs.back());
  }
  std::size_t total = 0;
  for (const auto& m : msgs) total += m.size();
  EXPECT_EQ(q.bytes(), total);
  iovec iov[64];
  ASSERT_EQ(q.gather(iov, 64), 20u);
  EXPECT_EQ(iov[0].iov_base, msgs[0].data());  // the shared bytes, not a copy
  // Write one and a half messages.
  const std::size_t first = msgs[0].size();
  EXPECT_EQ(q.consume(first + 2), 1u);
  ASSERT_EQ(q.gather(iov, 1), 1u);
  EXPECT_EQ(static_cast<char*>(iov[0].iov_base), msgs[1].data() + 2);
  EXPECT_EQ(iov[0].iov_len, msgs[1].size() - 2);
  EXPECT_EQ(q.consume(q.bytes()), 19u);
  EXPECT_TRUE(q.empty());
  EXPECT_EQ(q.bytes(), 0u);
}

TEST(OutboundQueue, ClearReleasesEverything) {
  OutboundQueue q;
  for (int i = 0; i < 100; ++i) q.push(Message::text("x"));
  q.clear();
  EXPECT_TRUE(q.empty());
  EXPECT_EQ(q.bytes(), 0u);
  iovec iov[4];
  EXPECT_EQ(q.gather(iov, 4), 0u);
}

TEST(OutboundQueue, DropUnsentKeepsAPartlyWrittenHead) {
  OutboundQueue q;
  const Message a = Message::text("aaaa");
  q.push(a);
  q.push(Message::text("bbbb"));
  q.push(Message::text("cccc"));
  q.consume(2);
  q.drop_unsent();
  EXPECT_EQ(q.size(), 1u);
  EXPECT_EQ(q.bytes(), a.size() - 2);
  EXPECT_EQ(q.consume(q.bytes()), 1u);
  q.push(Message::text("dd"));
  q.drop_unsent();  // nothing started: all goes
  EXPECT_TRUE(q.empty());
  EXPECT_EQ(q.bytes(), 0u);
}
