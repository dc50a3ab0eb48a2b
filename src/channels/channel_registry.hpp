// Which channel serves a topic: one table of `pattern -> join function`,
// built by main and handed to every Session through Services (the idea of
// Phoenix's `channel "room:*", RoomChannel`). A pattern is a topic, or a
// prefix ending in `*`; the first entry that matches wins, so main lists
// the specific kinds (`cortex:*`, `agent:*`) before the catch-all pub/sub
// entry `*`.
//
// Built once before the server starts and read-only afterwards: I/O threads
// read it without a lock.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "channels/channel.hpp"
#include "protocol/topic.hpp"

namespace synapse::channels {

class Session;

// Checks the join and returns the channel; on refusal it has replied with
// the error and returns null.
using JoinChannel = std::function<std::unique_ptr<Channel>(Session&, const protocol::Envelope&)>;
// Optional: when the application's join hook is configured, a join of this
// kind is first checked by Synapse's own rules (this function, which replies
// the refusal itself), then asked of the hook, then joined.
using JoinPrecheck = std::function<bool(Session&, const protocol::Envelope&)>;

struct ChannelKind {
  std::string pattern;
  std::string name;  // for logs: "cortex", "agent", "pubsub"
  JoinChannel join;
  JoinPrecheck hook_precheck;  // empty: the join hook is not asked for this kind
};

class ChannelRegistry {
 public:
  void add(ChannelKind kind) { kinds_.push_back(std::move(kind)); }
  // The first kind whose pattern matches `topic`; null if none does.
  const ChannelKind* match(std::string_view topic) const {
    for (const auto& k : kinds_) {
      if (protocol::topic_matches(k.pattern, topic)) return &k;
    }
    return nullptr;
  }

 private:
  std::vector<ChannelKind> kinds_;
};

}  // namespace synapse::channels
