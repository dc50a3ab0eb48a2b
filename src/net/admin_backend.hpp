// What the admin API (protocol section 6, /api/admin/...) needs from the
// network layer, without socket types: connection snapshots, and
// server-side disconnect and unsubscribe.
//
// Connections live on their I/O threads and are touched only there, so
// nothing here reads them directly: each call posts a task to every I/O
// thread and the last thread to finish calls `done` (on that thread). No
// thread ever waits for another; the HTTP answer is sent when `done` runs.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace synapse::net {

class IoThreads;

struct ConnectionView {
  std::uint64_t id = 0;
  std::string peer;  // ip:port
  std::string ip;
  std::string key_id;
  std::string agent_id;
  std::string tenant;
  bool via_token = false;
  std::int64_t opened_at_ms = 0;  // unix time
  std::size_t thread = 0;
  std::vector<std::string> topics;
};

// Which connections a disconnect applies to: one id, or every connection of
// a key (an empty field matches nothing).
struct ConnectionMatch {
  std::uint64_t connection_id = 0;
  std::string key_id;
  bool matches(const ConnectionView& v) const {
    return (connection_id != 0 && v.id == connection_id) || (!key_id.empty() && v.key_id == key_id);
  }
};

class AdminBackend {
 public:
  virtual ~AdminBackend() = default;
  virtual void connections(std::function<void(std::vector<ConnectionView>)> done) = 0;
  // Closes the matching connections (1008, "disconnected by an admin"); `done` gets how many.
  virtual void disconnect(ConnectionMatch match, std::function<void(std::size_t)> done) = 0;
  // Makes connection `id` leave `topic`; `done` gets whether it had joined it.
  virtual void unsubscribe(std::uint64_t id, std::string topic, std::function<void(bool)> done) = 0;
};

// The implementation over the server's I/O threads.
std::unique_ptr<AdminBackend> make_admin_backend(IoThreads& threads);

}  // namespace synapse::net
