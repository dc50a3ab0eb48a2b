// The load generator's I/O: one epoll loop on one thread, and a WebSocket
// client connection (non-blocking connect, optional TLS (wss://) through
// OpenSSL on the same non-blocking socket, HTTP upgrade, RFC 6455 framing
// with the server's own codec in Role::client).
#pragma once

#include <netinet/in.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "util.hpp"
#include "wire/ws_frame.hpp"

struct ssl_st;
struct ssl_ctx_st;

namespace bench {

// The TLS client context for wss:// targets: made once; `ca_file` empty
// means the server's certificate is not verified (a benchmark, not a
// client). Returns false with a reason when the CA file cannot be used.
bool init_tls_client(const std::string& ca_file, std::string* error);
ssl_ctx_st* tls_client_ctx();

class Loop {
 public:
  struct Handler {
    virtual void on_event(std::uint32_t events) = 0;

   protected:
    ~Handler() = default;
  };

  Loop();
  ~Loop();
  Loop(const Loop&) = delete;
  Loop& operator=(const Loop&) = delete;

  void add(int fd, std::uint32_t events, Handler* h);
  void modify(int fd, std::uint32_t events, Handler* h);
  void remove(int fd);

  using TimerId = std::multimap<std::uint64_t, std::function<void()>>::iterator;
  TimerId at(std::uint64_t when_ns, std::function<void()> fn);
  void cancel(TimerId id) { timers_.erase(id); }

  // Runs until `done()` (checked after every batch of events and timers)
  // or the deadline; returns done().
  bool run_until(const std::function<bool()>& done, std::uint64_t deadline_ns);
  // Runs for a while, handling whatever arrives.
  void run_for(std::uint64_t ns) {
    const auto end = now_ns() + ns;
    run_until([] { return false; }, end);
  }

 private:
  void fire_timers();
  int ep_;
  std::multimap<std::uint64_t, std::function<void()>> timers_;
};

// Where and how to connect: resolved once, shared by every connection.
struct Target {
  sockaddr_in addr{};
  std::string host;  // for the Host header
  int port = 0;
  std::string path;  // request target, e.g. /cortex/websocket?vsn=2.0.0&api_key=...
  bool tls = false;  // wss:// (or https://)
  // Source addresses spread connections over several 127.0.0.x so that one
  // address's ephemeral ports never run out (empty: the kernel chooses).
  std::vector<in_addr> sources;
};

class WsClient final : public Loop::Handler, public synapse::wire::FrameSink {
 public:
  enum class State : std::uint8_t { idle, connecting, tls_handshake, upgrading, open, closing, closed };

  struct Events {
    virtual void on_open(WsClient& c, std::uint64_t now) = 0;
    virtual void on_text(WsClient& c, std::string_view text, std::uint64_t now) = 0;
    // The connection is gone. `clean` when it ended with a close handshake we asked for.
    virtual void on_closed(WsClient& c, bool clean, std::string_view why) = 0;

   protected:
    ~Events() = default;
  };

  WsClient(Loop& loop, Events& ev, std::uint32_t id) : loop_(loop), ev_(ev), id_(id) {}
  ~WsClient();
  WsClient(const WsClient&) = delete;
  WsClient& operator=(const WsClient&) = delete;

  // Starts a non-blocking connect; false (and on_closed is not called) on immediate failure.
  bool connect(const Target& t, std::string* error);
  // Appends a masked text frame and writes what the socket takes.
  void send_text(std::string_view payload);
  // Adds a masked text frame to the pending bytes without writing (see flush()).
  void queue_text(std::string_view payload);
  void flush();
  // Starts the closing handshake; the socket is closed when the server answers
  // (or by abort()).
  void close(std::uint16_t code = 1000);
  // Closes the socket at once with a TCP reset.
  void abort(std::string_view why);

  State state() const noexcept { return state_; }
  std::uint32_t id() const noexcept { return id_; }
  std::size_t pending_bytes() const noexcept { return out_.size() - out_off_; }
  std::uint64_t bytes_in() const noexcept { return bytes_in_; }

  void on_event(std::uint32_t events) override;

  // FrameSink
  void on_message(synapse::wire::Opcode op, std::string_view payload) override;
  void on_ping(std::string_view payload) override;
  void on_pong(std::string_view payload) override;
  void on_close(std::uint16_t code, std::string_view reason) override;
  void on_violation(std::uint16_t code, std::string_view why) override;

 private:
  void append_frame(synapse::wire::Opcode op, std::string_view payload);
  void want_write(bool on);
  void on_connected();
  void tls_handshake();
  // recv()/send() semantics, through TLS when the target is wss://.
  ssize_t io_recv(char* buf, std::size_t n);
  ssize_t io_send(const char* data, std::size_t n);
  void read_handshake();
  void read_frames();
  void write_pending();
  void finish(bool clean, std::string_view why);

  Loop& loop_;
  Events& ev_;
  std::uint32_t id_;
  int fd_ = -1;
  ssl_st* ssl_ = nullptr;
  bool tls_ = false;
  State state_ = State::idle;
  bool writing_ = false;  // EPOLLOUT armed
  bool close_sent_ = false;
  bool close_received_ = false;
  std::string out_;
  std::size_t out_off_ = 0;
  std::string handshake_;  // response bytes until the blank line
  std::string accept_;     // expected Sec-WebSocket-Accept
  synapse::wire::FrameReader reader_{64 * 1024 * 1024, synapse::wire::Role::client};
  std::uint64_t now_ = 0;  // time of the read being processed
  std::uint64_t bytes_in_ = 0;
};

// Parses ws:// or wss://host:port[/path]; fills addr, host, port, tls and (when given) path.
bool parse_url(const std::string& url, Target& t, std::string* error);
// How many open files this process may have after raising its soft limit.
std::uint64_t raise_fd_limit();

}  // namespace bench
