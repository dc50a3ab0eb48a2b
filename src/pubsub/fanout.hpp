// Delivery of framed messages to a topic's members on their own I/O threads,
// shared by the in-process and the Redis broker.
//
// Each I/O thread has an inbox (guarded by its mutex) and a member table
// (touched only by that thread). queue() appends one delivery to the inbox
// of every thread that has members and posts one drain task per batch; the
// drain hands each member its share of a run of deliveries for one topic in
// one send_batch call, so its waiting messages leave in one write.
//
// Filters, per member: a message at or below the member's start offset
// predates its join (it came in the recovered history, or was not asked
// for); a presence diff at or below presence_start is already in its
// presence_state; the publisher's own connection is skipped.
//
// A drain yields: after `slice_sends` send_batch calls it posts its own
// continuation and returns, so the thread reads its sockets (a publisher's
// next messages, a heartbeat) between slices of a fan-out to thousands. When
// it resumes on the last run of its batch, the messages queued meanwhile for
// that run's topic join the run for the members not served yet; the members
// served before get them from the next drain, and the ones that already got
// them skip them there by offset (their start moves past them). A member's
// latency is then one pass over the members, not two.
//
// A member whose join is still pending (the Redis broker's asynchronous
// join) is listed from the join's start but has no start offset yet: the
// drain holds its share, in order, and activate() replays it through the
// same filters once the join's offset is known. So a pending member sees
// exactly what it would have seen had its join completed at once.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "core/poster.hpp"
#include "presence/presence_tracker.hpp"
#include "pubsub/broker.hpp"
#include "wire/message.hpp"

namespace synapse::metrics {
struct Metrics;
}

namespace synapse::pubsub {

enum class DeliveryKind : std::uint8_t {
  message,
  presence,
  // Forget the members' start offsets: the topic's offsets started again
  // (a new epoch), so old filters would drop new messages.
  reset,
};

// An offset no filter drops: a message that has no offset.
inline constexpr std::uint64_t unnumbered = ~std::uint64_t{0};

struct Delivery {
  std::uint64_t topic_id = 0;
  std::uint64_t offset = 0;  // message offset, or the presence diff's sequence number
  std::uint64_t exclude_connection = 0;
  wire::Message msg;
  DeliveryKind kind = DeliveryKind::message;
  std::int64_t queued_us = 0;  // steady clock, set by queue(): the fan-out latency histogram's start
};

class Fanout {
 public:
  // slice_sends: send_batch calls per drain slice (see above).
  Fanout(std::vector<Poster> threads, metrics::Metrics& metrics, std::size_t slice_sends = default_slice_sends);
  static constexpr std::size_t default_slice_sends = 128;
  ~Fanout();

  std::size_t threads() const noexcept { return posters_.size(); }

  // On `req.thread`: records the join in `sub` (its topic, thread and
  // filters) and adds it to its thread's member list (and presence list).
  void add(Subscriber& sub, const JoinRequest& req, std::uint64_t topic_id, std::uint64_t start_offset,
           std::uint64_t presence_start);
  // The same for a join whose offsets are not known yet: deliveries are
  // held for it (on `req.thread`) until activate().
  void add_pending(Subscriber& sub, const JoinRequest& req, std::uint64_t topic_id);
  // On `sub.thread`: the pending join completed at these offsets. Sends the
  // held deliveries that pass the filters, in order, then delivers directly.
  void activate(Subscriber& sub, std::uint64_t start_offset, std::uint64_t presence_start);
  // On `sub.thread`'s own thread (pending or not; what was held is dropped).
  void remove(Subscriber& sub);
  // Any thread: queues `d` for every thread i with counts[i] != 0.
  void queue(const std::vector<std::uint32_t>& counts, const Delivery& d);
  // Publishes `tracker`'s pending changes as one presence_diff, numbered
  // ++seq, to the topic's presence members (the caller holds the topic's lock).
  void flush_presence(std::uint64_t topic_id, std::string_view topic, presence::PresenceTracker& tracker,
                      std::uint64_t& seq, const std::vector<std::uint32_t>& presence_per_thread);

 private:
  struct Inbox {
    std::mutex mu;
    std::vector<Delivery> items;
    bool scheduled = false;
  };

  // A member as the drain loop needs it: sink and filters inline, so the
  // loop reads one contiguous array and never the channel object.
  struct LocalMember {
    MessageSink* sink;            // null while the member's join is pending
    Subscriber* sub;              // to keep its slot index right on removal
    std::uint64_t connection_id;  // the publisher's own connection is skipped
    std::uint64_t start;          // start_offset, or presence_start
  };

  struct LocalTopic {
    std::vector<LocalMember> members;
    std::vector<LocalMember> presence_members;
  };

  struct ThreadTable {
    std::unordered_map<std::uint64_t, LocalTopic> topics;
    std::vector<Delivery> draining;           // reused between drains
    std::vector<const wire::Message*> batch;  // one member's share of a run
    // Deliveries for members whose join is pending, in drain order.
    std::unordered_map<const Subscriber*, std::vector<Delivery>> held;
    // The drain in progress (between slices): `draining` is its batch,
    // [run, run_end) the run of one topic and kind being handed out, and
    // members [0, next_member) of that run's list have their share.
    bool in_round = false;
    bool resume_posted = false;  // a continuation is queued on the thread
    bool deferred = false;       // a drain task came mid-round; its inbox waits
    std::size_t run = 0;
    std::size_t run_end = 0;
    std::size_t run_end_own = 0;  // run_end before messages queued meanwhile joined
    std::size_t next_member = 0;
    std::size_t copied = 0;  // inbox items already copied into the run
    std::uint64_t run_topic = 0;
    DeliveryKind run_kind = DeliveryKind::message;
  };

  void hold(ThreadTable& table, const LocalMember& m, std::size_t from, std::size_t to);

  void drain(std::size_t thread);
  void resume(std::size_t thread);
  // Hands out the batch from where it stopped until it ends or a slice is
  // used up (then posts resume()).
  void work(std::size_t thread);
  bool take_inbox(std::size_t thread);
  void start_run(ThreadTable& table);
  void extend_run(std::size_t thread);

  std::vector<Poster> posters_;
  metrics::Metrics& metrics_;
  std::size_t slice_sends_;
  std::vector<std::unique_ptr<Inbox>> inboxes_;
  std::vector<ThreadTable> tables_;
};

}  // namespace synapse::pubsub
