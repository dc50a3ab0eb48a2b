// A joined topic's handler. One per (connection, topic); lives on the
// connection's thread.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "core/small_text.hpp"
#include "protocol/envelope.hpp"
#include "protocol/flat_frame.hpp"

namespace synapse::channels {

class Channel {
 public:
  virtual ~Channel() = default;
  // The joined topic and the join's join_ref (every reply and push of the
  // join carries it). Kept here once, for the channel and for the session's
  // routing alike; set from the join by the constructor.
  std::string_view topic() const noexcept { return ident_.view().substr(0, topic_size_); }
  std::optional<std::string_view> join_ref() const noexcept {
    return has_join_ref_ ? std::optional<std::string_view>(ident_.view().substr(topic_size_)) : std::nullopt;
  }
  // A client event other than phx_join / phx_leave on this topic.
  virtual void handle_in(const protocol::Envelope& env) = 0;
  // The hot-path variant (protocol/flat_frame.hpp): a channel that answers
  // true for `event` gets the frames of that event that decode_flat() reads
  // through handle_flat() instead of handle_in(), after the same checks and
  // rate limit. `env` then has no JSON tree (payload is null, payload_raw
  // is set); `frame` holds the payload's string fields.
  virtual bool takes_flat(std::string_view event) const {
    (void)event;
    return false;
  }
  // Whether takes_flat() can answer true for some event: a session none of
  // whose channels does never tries the flat decode, so other frames are
  // not parsed twice.
  virtual bool takes_any_flat() const { return false; }
  virtual void handle_flat(const protocol::Envelope& env, const protocol::FlatFrame& frame) {
    (void)env;
    (void)frame;
  }
  // The member leaves (phx_leave, duplicate join, crash, disconnect); after
  // this the channel sends nothing more.
  virtual void leave() = 0;
  // The server is shutting down while the socket is still open: finish work
  // with its final event now. leave() follows.
  virtual void shutdown() {}
  // Whether the join is still waiting for its answer (a cluster's pub/sub
  // join): the channel then replies to it later, on this thread, and tells
  // the session with Session::join_done. Meanwhile the session holds the
  // client's events for the topic.
  virtual bool join_pending() const { return false; }

 protected:
  explicit Channel(const protocol::Envelope& join)
      : ident_(join.join_ref ? SmallText(std::string(join.topic) + std::string(*join.join_ref)) : SmallText(join.topic)),
        topic_size_(static_cast<std::uint32_t>(join.topic.size())),
        has_join_ref_(join.join_ref.has_value()) {}

 private:
  // The topic followed by the join_ref, in one SmallText: a short pair (as
  // `room:lobby` and `3`, up to 15 characters) lives inside the object, a
  // longer one in one block of its exact size (a std::string would allocate
  // past 15 characters too). 16 bytes instead of a std::string's 32 in
  // every channel; the text never changes after the join.
  SmallText ident_;
  std::uint32_t topic_size_ = 0;
  bool has_join_ref_ = false;  // a join may have no join_ref (null)
};

}  // namespace synapse::channels
