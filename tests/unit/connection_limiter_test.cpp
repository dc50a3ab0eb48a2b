// Per-IP and per-key admission, and counts that always come back.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "limits/connection_limiter.hpp"

using namespace synapse::limits;

// Every permit was given back: nothing counted, and a sweep forgets every
// address.
void expect_drained(ConnectionLimiter& lim) {
  const auto c = lim.counts();
  EXPECT_EQ(c.ip_connections, 0);
  EXPECT_EQ(c.key_connections, 0);
  EXPECT_EQ(c.tracked_keys, 0);
  lim.sweep();
  EXPECT_EQ(lim.counts().tracked_ips, 0);
}

TEST(ConnectionLimiter, PerKeyConcurrentLimit) {
  ConnectionLimiter lim({0, 0, 2});
  Permit a, b, c;
  EXPECT_EQ(lim.admit("1.1.1.1", "k", true, a).verdict, Admission::ok);
  EXPECT_EQ(lim.admit("1.1.1.2", "k", true, b).verdict, Admission::ok);
  EXPECT_EQ(lim.admit("1.1.1.3", "k", true, c).verdict, Admission::too_many_connections);
  EXPECT_EQ(lim.admit("1.1.1.3", "other", true, c).verdict, Admission::ok);
  a.release();
  Permit d;
  EXPECT_EQ(lim.admit("1.1.1.4", "k", true, d).verdict, Admission::ok);
}

TEST(ConnectionLimiter, UncountedKeySkipsPerKeyLimit) {
  ConnectionLimiter lim({0, 0, 1});
  std::vector<Permit> permits(5);
  for (auto& p : permits) EXPECT_EQ(lim.admit("ip", "k", false, p).verdict, Admission::ok);
  EXPECT_EQ(lim.counts().key_connections, 0);
}

TEST(ConnectionLimiter, PerIpConcurrentLimit) {
  ConnectionLimiter lim({3, 0, 0});
  std::vector<Permit> permits(4);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(lim.admit("9.9.9.9", "k" + std::to_string(i), true, permits[i]).verdict, Admission::ok);
  const auto r = lim.admit("9.9.9.9", "k9", true, permits[3]);
  EXPECT_EQ(r.verdict, Admission::too_many_connections);
  EXPECT_GE(r.retry_after_s, 1);
}

TEST(ConnectionLimiter, NewConnectionRatePerIp) {
  ConnectionLimiter lim({0, 2, 0});
  Permit a, b, c;
  EXPECT_EQ(lim.admit("ip", "k", true, a).verdict, Admission::ok);
  a.release();
  EXPECT_EQ(lim.admit("ip", "k", true, b).verdict, Admission::ok);
  b.release();
  const auto r = lim.admit("ip", "k", true, c);
  EXPECT_EQ(r.verdict, Admission::connection_rate_exceeded);
  EXPECT_GE(r.retry_after_s, 1);
  EXPECT_LE(r.retry_after_s, 30);
}

TEST(ConnectionLimiter, RefusalSpendsNoArrivalToken) {
  ConnectionLimiter lim({1, 2, 0});
  Permit a, b, c;
  EXPECT_EQ(lim.admit("ip", "k", true, a).verdict, Admission::ok);
  EXPECT_EQ(lim.admit("ip", "k", true, b).verdict, Admission::too_many_connections);
  a.release();
  EXPECT_EQ(lim.admit("ip", "k", true, c).verdict, Admission::ok);  // the refusal did not count
}

TEST(ConnectionLimiter, CountsReturnToZero) {
  ConnectionLimiter lim({100, 0, 10});
  {
    std::vector<Permit> permits(50);
    for (std::size_t i = 0; i < permits.size(); ++i) {
      ASSERT_EQ(lim.admit("10.0.0." + std::to_string(i % 7), "key" + std::to_string(i % 5), true, permits[i]).verdict,
                Admission::ok);
    }
    const auto c = lim.counts();
    EXPECT_EQ(c.ip_connections, 50);
    EXPECT_EQ(c.key_connections, 50);
    // Moves keep exactly one owner.
    Permit moved = std::move(permits[0]);
    EXPECT_FALSE(permits[0]);
    EXPECT_TRUE(moved);
  }
  expect_drained(lim);
}

// A permit points at the limiter's map entries (their nodes hold the
// address and the key) and reaches its limiter through the address's
// entry: moved, it has one owner; released, it gives back once; and the
// entries stay where they are while thousands of others come and go
// (rehashes included).
TEST(ConnectionLimiter, PermitsGiveBackOnceThroughTheirEntriesAcrossRehashes) {
  ConnectionLimiter lim({0, 0, 0});
  ConnectionLimiter other({0, 0, 5});
  EXPECT_EQ(sizeof(Permit), 16u);

  Permit a, b;
  ASSERT_EQ(lim.admit("10.1.1.1", "k", true, a).verdict, Admission::ok);  // per_key 0: the key is not counted
  ASSERT_EQ(other.admit("10.1.1.1", "k", true, b).verdict, Admission::ok);
  EXPECT_EQ(lim.counts().tracked_keys, 0);
  EXPECT_EQ(other.counts().key_connections, 1);
  // Move construction and assignment: exactly one owner, nothing given back.
  Permit moved(std::move(a));
  EXPECT_FALSE(a);
  EXPECT_TRUE(moved);
  Permit assigned;
  assigned = std::move(moved);
  EXPECT_FALSE(moved);
  EXPECT_EQ(lim.counts().ip_connections, 1);
  // Assigning onto a holding permit gives its own counts back, to its limiter.
  assigned = std::move(b);
  EXPECT_EQ(lim.counts().ip_connections, 0);
  EXPECT_EQ(other.counts().ip_connections, 1);
  EXPECT_EQ(other.counts().key_connections, 1);
  assigned.release();
  assigned.release();
  moved.release();  // moved-from: nothing
  a = Permit{};
  EXPECT_EQ(other.counts().ip_connections, 0);
  EXPECT_EQ(other.counts().key_connections, 0);
  EXPECT_EQ(other.counts().tracked_keys, 0);

  // Many connects and closes over many addresses and keys, checked against
  // a count kept here.
  ConnectionLimiter big({1000, 0, 1000});
  std::vector<Permit> held;
  std::map<std::string, std::int64_t> by_ip, by_key;
  auto ip_of = [](std::size_t i) { return "10.2." + std::to_string(i % 97) + "." + std::to_string(i % 13); };
  auto key_of = [](std::size_t i) { return "key-" + std::to_string(i % 211); };
  std::vector<std::size_t> who;
  for (std::size_t i = 0; i < 5000; ++i) {
    held.emplace_back();
    ASSERT_EQ(big.admit(ip_of(i), key_of(i), true, held.back()).verdict, Admission::ok) << i;
    who.push_back(i);
    ++by_ip[ip_of(i)];
    ++by_key[key_of(i)];
    if (i % 3 == 2) {  // close one from the middle, the vector moving the rest
      const std::size_t j = held.size() / 2;
      --by_ip[ip_of(who[j])];
      if (--by_key[key_of(who[j])] == 0) by_key.erase(key_of(who[j]));
      held.erase(held.begin() + static_cast<std::ptrdiff_t>(j));
      who.erase(who.begin() + static_cast<std::ptrdiff_t>(j));
    }
  }
  auto c = big.counts();
  EXPECT_EQ(c.ip_connections, static_cast<std::int64_t>(held.size()));
  EXPECT_EQ(c.key_connections, static_cast<std::int64_t>(held.size()));
  EXPECT_EQ(c.tracked_keys, static_cast<std::int64_t>(by_key.size()));
  // Each address's and key's own count, as the shared store would be told.
  auto snap = big.shared_snapshot();
  std::sort(snap.begin(), snap.end());
  std::vector<std::pair<std::string, std::int64_t>> want;
  for (const auto& [ip, n] : by_ip) {
    if (n > 0) want.emplace_back("i:" + ip, n);
  }
  for (const auto& [k, n] : by_key) want.emplace_back("k:" + k, n);
  std::sort(want.begin(), want.end());
  EXPECT_EQ(snap, want);
  held.clear();
  expect_drained(big);
}

// The arrival buckets of all addresses spend at the limiter's one rate,
// each address on its own.
TEST(ConnectionLimiter, EveryAddressHasItsOwnArrivalsAtTheSharedRate) {
  ConnectionLimiter lim({0, 2, 0});
  for (const char* ip : {"10.3.0.1", "10.3.0.2", "10.3.0.3"}) {
    Permit a, b, c;
    EXPECT_EQ(lim.admit(ip, "k", true, a).verdict, Admission::ok) << ip;
    EXPECT_EQ(lim.admit(ip, "k", true, b).verdict, Admission::ok) << ip;
    EXPECT_EQ(lim.admit(ip, "k", true, c).verdict, Admission::connection_rate_exceeded) << ip;
  }
  lim.sweep();  // not refilled yet: the addresses stay tracked
  EXPECT_EQ(lim.counts().tracked_ips, 3);
}

namespace {

// Another node's connections, as the shared store would report them.
class FakeShared final : public SharedCounts {
 public:
  std::int64_t other_nodes_on_key = 0;
  bool down = false;
  std::vector<std::string> acquired, released;

  Verdict acquire(const std::string& ip_field, std::int64_t, const std::string& key_field,
                  std::int64_t key_limit) override {
    if (down) return Verdict::unavailable;
    const std::int64_t mine = static_cast<std::int64_t>(acquired.size()) - static_cast<std::int64_t>(released.size());
    if (!key_field.empty() && key_limit > 0 && other_nodes_on_key + mine >= key_limit) return Verdict::key_full;
    acquired.push_back(ip_field + "|" + key_field);
    return Verdict::ok;
  }
  void release(const std::string& ip_field, const std::string& key_field) override {
    released.push_back(ip_field + "|" + key_field);
  }
  void replace(std::vector<std::pair<std::string, std::int64_t>>) override {}
};

}  // namespace

TEST(ConnectionLimiter, SharedCountsRefuseAcrossNodesAndUndoTheLocalCount) {
  ConnectionLimiter lim({0, 0, 3});
  FakeShared shared;
  shared.other_nodes_on_key = 2;  // two connections of key k on other nodes
  lim.share(&shared);
  Permit a, b;
  EXPECT_EQ(lim.admit("1.1.1.1", "k", true, a).verdict, Admission::ok);
  EXPECT_EQ(lim.admit("1.1.1.1", "k", true, b).verdict, Admission::too_many_connections);
  EXPECT_FALSE(b);
  // The refusal left no local count behind.
  EXPECT_EQ(lim.counts().key_connections, 1);
  ASSERT_EQ(shared.acquired.size(), 1u);
  EXPECT_EQ(shared.acquired[0], "|k:k");  // the per-IP limit is off: no IP field
  a.release();
  ASSERT_EQ(shared.released.size(), 1u);
  EXPECT_EQ(shared.released[0], "|k:k");
  EXPECT_EQ(lim.counts().key_connections, 0);
}

TEST(ConnectionLimiter, APermitGivenBackAfterShareNullptrCountsDownLocallyOnly) {
  // The server's shutdown: permits still held by tasks queued on stopped
  // threads are released after the cluster's shared counts are destroyed.
  ConnectionLimiter lim({5, 0, 3});
  Permit held, again;
  {
    auto shared = std::make_unique<FakeShared>();
    lim.share(shared.get());
    ASSERT_EQ(lim.admit("1.1.1.1", "k", true, held).verdict, Admission::ok);
    ASSERT_EQ(shared->acquired.size(), 1u);
    lim.share(nullptr);
    EXPECT_FALSE(lim.shares());
    EXPECT_TRUE(shared->released.empty());
  }  // the counts are gone; a release through them would touch freed memory (ASan)
  EXPECT_EQ(lim.counts().key_connections, 1);
  held.release();
  EXPECT_EQ(lim.counts().key_connections, 0);
  EXPECT_EQ(lim.counts().ip_connections, 0);
  // Admission goes on on the local counts alone.
  EXPECT_EQ(lim.admit("1.1.1.1", "k", true, again).verdict, Admission::ok);
  EXPECT_EQ(lim.counts().key_connections, 1);
}

TEST(ConnectionLimiter, SharedStoreDownAdmitsOnLocalCountsAndSnapshotsThem) {
  ConnectionLimiter lim({5, 0, 3});
  FakeShared shared;
  shared.down = true;
  lim.share(&shared);
  Permit a, b;
  EXPECT_EQ(lim.admit("1.1.1.1", "k", true, a).verdict, Admission::ok);
  EXPECT_EQ(lim.admit("1.1.1.1", "j", true, b).verdict, Admission::ok);
  auto snap = lim.shared_snapshot();
  std::sort(snap.begin(), snap.end());
  ASSERT_EQ(snap.size(), 3u);
  EXPECT_EQ(snap[0], (std::pair<std::string, std::int64_t>{"i:1.1.1.1", 2}));
  EXPECT_EQ(snap[1], (std::pair<std::string, std::int64_t>{"k:j", 1}));
  EXPECT_EQ(snap[2], (std::pair<std::string, std::int64_t>{"k:k", 1}));
}

namespace {

// A shared store that answers later, as Redis does (admit_async).
class LaterShared final : public SharedCounts {
 public:
  std::int64_t other_nodes_on_key = 0;
  std::vector<std::function<void()>> answers;
  int released = 0;

  Verdict acquire(const std::string&, std::int64_t, const std::string&, std::int64_t) override {
    ADD_FAILURE() << "admit_async must not block on acquire()";
    return Verdict::unavailable;
  }
  void acquire_async(const std::string&, std::int64_t, const std::string& key_field, std::int64_t key_limit,
                     AcquireDone done) override {
    const bool full = !key_field.empty() && key_limit > 0 && other_nodes_on_key >= key_limit;
    answers.push_back([done, full] { done(full ? Verdict::key_full : Verdict::ok); });
  }
  void release(const std::string&, const std::string&) override { ++released; }
  void replace(std::vector<std::pair<std::string, std::int64_t>>) override {}
};

}  // namespace

TEST(ConnectionLimiter, AdmitAsyncAnswersWhenTheSharedCountsDoAndUndoesARefusal) {
  ConnectionLimiter lim({0, 0, 3});
  LaterShared shared;
  lim.share(&shared);
  std::vector<std::pair<AdmissionResult, Permit>> results;
  auto record = [&](AdmissionResult r, Permit p) { results.emplace_back(r, std::move(p)); };
  lim.admit_async("1.1.1.1", "k", true, record);
  EXPECT_TRUE(results.empty()) << "answered before the shared counts did";
  EXPECT_EQ(lim.counts().key_connections, 1);  // held locally meanwhile
  ASSERT_EQ(shared.answers.size(), 1u);
  shared.answers[0]();
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].first.verdict, Admission::ok);
  EXPECT_TRUE(results[0].second);

  shared.other_nodes_on_key = 3;
  lim.admit_async("1.1.1.1", "k", true, record);
  shared.answers[1]();
  ASSERT_EQ(results.size(), 2u);
  EXPECT_EQ(results[1].first.verdict, Admission::too_many_connections);
  EXPECT_FALSE(results[1].second);
  EXPECT_EQ(lim.counts().key_connections, 1);  // the refusal gave its local count back
  EXPECT_EQ(shared.released, 0);              // and asked the store for nothing back

  results.clear();  // the admitted permit goes: its counts go back everywhere
  EXPECT_EQ(lim.counts().key_connections, 0);
  EXPECT_EQ(shared.released, 1);
}

TEST(ConnectionLimiter, AdmitAsyncWhoseAnswerNeverComesGivesTheLocalCountBack) {
  ConnectionLimiter lim({0, 0, 3});
  LaterShared shared;
  lim.share(&shared);
  lim.admit_async("1.1.1.1", "k", true, [](AdmissionResult, Permit) { ADD_FAILURE() << "answered"; });
  EXPECT_EQ(lim.counts().key_connections, 1);
  shared.answers.clear();  // the store dropped the callback (stopped)
  EXPECT_EQ(lim.counts().key_connections, 0);
}

TEST(ConnectionLimiter, AdmitAsyncWithNothingSharedAnswersAtOnce) {
  ConnectionLimiter lim({0, 0, 0});
  LaterShared shared;
  lim.share(&shared);
  bool answered = false;
  lim.admit_async("1.1.1.1", "k", true, [&](AdmissionResult r, Permit) {
    answered = true;
    EXPECT_EQ(r.verdict, Admission::ok);
  });
  EXPECT_TRUE(answered);
  EXPECT_TRUE(shared.answers.empty());
}
