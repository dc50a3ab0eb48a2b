#include "net.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace bench {

namespace wire = synapse::wire;

namespace {

Rng& mask_rng() {
  static Rng rng(now_ns() | 1);
  return rng;
}

// One buffer for every read: the loop is single-threaded and frames are
// handled before the next read.
constexpr std::size_t kReadBuf = 256 * 1024;
char g_read_buf[kReadBuf];

std::string base64(const unsigned char* p, std::size_t n) {
  std::string out(4 * ((n + 2) / 3) + 1, '\0');
  const int len = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), p, static_cast<int>(n));
  out.resize(static_cast<std::size_t>(len));
  return out;
}

std::string websocket_accept(const std::string& key) {
  const std::string in = key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(in.data(), in.size(), md, &len, EVP_sha1(), nullptr);
  return base64(md, len);
}

bool iequals_prefix(std::string_view s, std::string_view prefix) {
  if (s.size() < prefix.size()) return false;
  for (std::size_t i = 0; i < prefix.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(s[i])) != std::tolower(static_cast<unsigned char>(prefix[i])))
      return false;
  }
  return true;
}

SSL_CTX* g_tls_ctx = nullptr;

std::string tls_error_text() {
  char buf[256] = "";
  const unsigned long e = ERR_get_error();
  if (e) ERR_error_string_n(e, buf, sizeof buf);
  ERR_clear_error();
  return buf;
}

}  // namespace

bool init_tls_client(const std::string& ca_file, std::string* error) {
  if (g_tls_ctx) return true;
  SSL_CTX* c = SSL_CTX_new(TLS_client_method());
  if (!c) {
    *error = "SSL_CTX_new: " + tls_error_text();
    return false;
  }
  SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION);
  SSL_CTX_set_options(c, SSL_OP_IGNORE_UNEXPECTED_EOF);
  // A retried SSL_write may come from a moved, longer buffer (out_ grows).
  SSL_CTX_set_mode(c, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS);
  SSL_CTX_set_read_ahead(c, 1);
  if (ca_file.empty()) {
    SSL_CTX_set_verify(c, SSL_VERIFY_NONE, nullptr);
  } else {
    if (SSL_CTX_load_verify_locations(c, ca_file.c_str(), nullptr) != 1) {
      *error = "cannot load --tls-ca " + ca_file + ": " + tls_error_text();
      SSL_CTX_free(c);
      return false;
    }
    SSL_CTX_set_verify(c, SSL_VERIFY_PEER, nullptr);
  }
  g_tls_ctx = c;
  return true;
}

ssl_ctx_st* tls_client_ctx() { return g_tls_ctx; }

// ----------------------------------------------------------------------- Loop

Loop::Loop() : ep_(epoll_create1(EPOLL_CLOEXEC)) {
  if (ep_ < 0) throw std::runtime_error("epoll_create1 failed");
}

Loop::~Loop() { ::close(ep_); }

void Loop::add(int fd, std::uint32_t events, Handler* h) {
  epoll_event e{};
  e.events = events;
  e.data.ptr = h;
  epoll_ctl(ep_, EPOLL_CTL_ADD, fd, &e);
}

void Loop::modify(int fd, std::uint32_t events, Handler* h) {
  epoll_event e{};
  e.events = events;
  e.data.ptr = h;
  epoll_ctl(ep_, EPOLL_CTL_MOD, fd, &e);
}

void Loop::remove(int fd) { epoll_ctl(ep_, EPOLL_CTL_DEL, fd, nullptr); }

Loop::TimerId Loop::at(std::uint64_t when_ns, std::function<void()> fn) {
  return timers_.emplace(when_ns, std::move(fn));
}

void Loop::fire_timers() {
  const auto now = now_ns();
  // A timer may add timers; only those already due run now.
  while (!timers_.empty() && timers_.begin()->first <= now) {
    auto fn = std::move(timers_.begin()->second);
    timers_.erase(timers_.begin());
    fn();
  }
}

bool Loop::run_until(const std::function<bool()>& done, std::uint64_t deadline_ns) {
  epoll_event events[1024];
  for (;;) {
    fire_timers();
    if (done()) return true;
    const auto now = now_ns();
    if (now >= deadline_ns) return false;
    std::uint64_t wake = deadline_ns;
    if (!timers_.empty()) wake = std::min(wake, timers_.begin()->first);
    const std::uint64_t wait = wake > now ? wake - now : 0;
    timespec ts{static_cast<time_t>(wait / 1000000000ull), static_cast<long>(wait % 1000000000ull)};
    const int n = epoll_pwait2(ep_, events, 1024, &ts, nullptr);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw std::runtime_error(std::string("epoll_pwait2: ") + std::strerror(errno));
    }
    for (int i = 0; i < n; ++i) static_cast<Handler*>(events[i].data.ptr)->on_event(events[i].events);
  }
}

// -------------------------------------------------------------------- helpers

bool parse_url(const std::string& url, Target& t, std::string* error) {
  std::string rest;
  t.tls = false;
  if (url.rfind("ws://", 0) == 0) {
    rest = url.substr(5);
  } else if (url.rfind("http://", 0) == 0) {
    rest = url.substr(7);
  } else if (url.rfind("wss://", 0) == 0) {
    rest = url.substr(6);
    t.tls = true;
  } else if (url.rfind("https://", 0) == 0) {
    rest = url.substr(8);
    t.tls = true;
  } else {
    *error = "only ws:// and wss:// URLs are supported: " + url;
    return false;
  }
  std::string hostport = rest;
  const auto slash = rest.find('/');
  if (slash != std::string::npos) {
    hostport = rest.substr(0, slash);
    t.path = rest.substr(slash);
  }
  const auto colon = hostport.rfind(':');
  t.host = colon == std::string::npos ? hostport : hostport.substr(0, colon);
  t.port = colon == std::string::npos ? (t.tls ? 443 : 80) : std::atoi(hostport.c_str() + colon + 1);
  if (t.host == "localhost") t.host = "127.0.0.1";
  t.addr = {};
  t.addr.sin_family = AF_INET;
  t.addr.sin_port = htons(static_cast<std::uint16_t>(t.port));
  if (inet_pton(AF_INET, t.host.c_str(), &t.addr.sin_addr) != 1) {
    *error = "host must be an IPv4 address: " + t.host;
    return false;
  }
  return true;
}

std::uint64_t raise_fd_limit() {
  rlimit rl{};
  getrlimit(RLIMIT_NOFILE, &rl);
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  getrlimit(RLIMIT_NOFILE, &rl);
  return rl.rlim_cur;
}

// ------------------------------------------------------------------- WsClient

WsClient::~WsClient() {
  if (fd_ >= 0) {
    loop_.remove(fd_);
    ::close(fd_);
  }
  SSL_free(ssl_);
}

ssize_t WsClient::io_recv(char* buf, std::size_t n) {
  if (!ssl_) return ::recv(fd_, buf, n, 0);
  // Fills `buf` until it is full or the socket is drained, so that a short
  // read means what it means for recv(): plaintext OpenSSL still holds
  // would not raise epoll readiness.
  std::size_t got = 0;
  while (got < n) {
    const int r = SSL_read(ssl_, buf + got, static_cast<int>(std::min<std::size_t>(n - got, 1 << 30)));
    if (r > 0) {
      got += static_cast<std::size_t>(r);
      continue;
    }
    const int e = SSL_get_error(ssl_, r);
    if (got > 0) return static_cast<ssize_t>(got);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
      errno = EAGAIN;
      return -1;
    }
    if (e == SSL_ERROR_ZERO_RETURN) return 0;
    if (e != SSL_ERROR_SYSCALL || errno == 0) errno = EPROTO;
    return -1;
  }
  return static_cast<ssize_t>(got);
}

ssize_t WsClient::io_send(const char* data, std::size_t n) {
  if (!ssl_) return ::send(fd_, data, n, MSG_NOSIGNAL);
  const int r = SSL_write(ssl_, data, static_cast<int>(std::min<std::size_t>(n, 1 << 30)));
  if (r > 0) return r;
  const int e = SSL_get_error(ssl_, r);
  if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
    errno = EAGAIN;
  } else if (e != SSL_ERROR_SYSCALL || errno == 0) {
    errno = EPROTO;
  }
  return -1;
}

void WsClient::tls_handshake() {
  const int r = SSL_do_handshake(ssl_);
  if (r == 1) {
    state_ = State::upgrading;
    write_pending();
    return;
  }
  const int e = SSL_get_error(ssl_, r);
  if (e == SSL_ERROR_WANT_READ) {
    want_write(false);
  } else if (e == SSL_ERROR_WANT_WRITE) {
    want_write(true);
  } else {
    finish(false, "TLS handshake failed: " + tls_error_text());
  }
}

bool WsClient::connect(const Target& t, std::string* error) {
  fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd_ < 0) {
    *error = std::string("socket: ") + std::strerror(errno);
    return false;
  }
  const int one = 1;
  setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (!t.sources.empty()) {
    // The port is picked at connect time for the whole 4-tuple.
    setsockopt(fd_, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    sockaddr_in src{};
    src.sin_family = AF_INET;
    src.sin_addr = t.sources[id_ % t.sources.size()];
    if (::bind(fd_, reinterpret_cast<sockaddr*>(&src), sizeof src) != 0) {
      *error = std::string("bind: ") + std::strerror(errno);
      ::close(fd_);
      fd_ = -1;
      return false;
    }
  }
  const int rc = ::connect(fd_, reinterpret_cast<const sockaddr*>(&t.addr), sizeof t.addr);
  if (rc != 0 && errno != EINPROGRESS) {
    *error = std::string("connect: ") + std::strerror(errno);
    ::close(fd_);
    fd_ = -1;
    return false;
  }

  unsigned char nonce[16];
  auto& rng = mask_rng();
  for (auto& b : nonce) b = static_cast<unsigned char>(rng.next());
  const std::string key = base64(nonce, sizeof nonce);
  accept_ = websocket_accept(key);
  out_ = "GET " + t.path + " HTTP/1.1\r\nHost: " + t.host + ":" + std::to_string(t.port) +
         "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + key +
         "\r\nSec-WebSocket-Version: 13\r\nUser-Agent: synapse-bench\r\n\r\n";
  out_off_ = 0;
  state_ = State::connecting;
  tls_ = t.tls;
  writing_ = true;
  loop_.add(fd_, EPOLLIN | EPOLLOUT | EPOLLRDHUP, this);
  return true;
}

void WsClient::want_write(bool on) {
  if (on == writing_ || fd_ < 0) return;
  writing_ = on;
  loop_.modify(fd_, EPOLLIN | EPOLLRDHUP | (on ? EPOLLOUT : 0u), this);
}

void WsClient::append_frame(wire::Opcode op, std::string_view payload) {
  std::uint8_t mask[4];
  const std::uint64_t r = mask_rng().next();
  std::memcpy(mask, &r, 4);
  std::uint8_t header[wire::max_header_size];
  const std::size_t hlen = wire::encode_header(header, op, payload.size(), true, mask);
  // Drop what was written already so the buffer does not grow without bound.
  if (out_off_ > 0 && out_off_ == out_.size()) {
    out_.clear();
    out_off_ = 0;
  }
  const std::size_t at = out_.size();
  out_.append(reinterpret_cast<const char*>(header), hlen);
  out_.append(payload);
  wire::apply_mask(out_.data() + at + hlen, payload.size(), mask, 0);
}

void WsClient::queue_text(std::string_view payload) {
  if (state_ != State::open) return;
  append_frame(wire::Opcode::text, payload);
}

void WsClient::send_text(std::string_view payload) {
  if (state_ != State::open) return;
  append_frame(wire::Opcode::text, payload);
  flush();
}

void WsClient::flush() {
  if (!writing_) write_pending();
}

void WsClient::write_pending() {
  while (out_off_ < out_.size()) {
    const ssize_t n = io_send(out_.data() + out_off_, out_.size() - out_off_);
    if (n > 0) {
      out_off_ += static_cast<std::size_t>(n);
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      want_write(true);
      return;
    }
    if (n < 0 && errno == EINTR) continue;
    finish(false, std::string("send: ") + (errno == EPROTO && ssl_ ? "TLS: " + tls_error_text() : std::strerror(errno)));
    return;
  }
  out_.clear();
  out_off_ = 0;
  want_write(false);
}

void WsClient::close(std::uint16_t code) {
  if (state_ == State::connecting || state_ == State::tls_handshake || state_ == State::upgrading) {
    abort("closed before open");
    return;
  }
  if (state_ != State::open) return;
  const char payload[2] = {static_cast<char>(code >> 8), static_cast<char>(code & 0xFF)};
  append_frame(wire::Opcode::close, std::string_view(payload, 2));
  close_sent_ = true;
  state_ = State::closing;
  flush();
}

void WsClient::abort(std::string_view why) {
  if (fd_ < 0) return;
  const linger lg{1, 0};
  setsockopt(fd_, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  finish(false, why);
}

void WsClient::finish(bool clean, std::string_view why) {
  if (fd_ < 0) return;
  loop_.remove(fd_);
  ::close(fd_);
  fd_ = -1;
  SSL_free(ssl_);
  ssl_ = nullptr;
  state_ = State::closed;
  out_.clear();
  out_.shrink_to_fit();
  out_off_ = 0;
  ev_.on_closed(*this, clean, why);
}

void WsClient::on_event(std::uint32_t events) {
  if (fd_ < 0) return;
  if (state_ == State::connecting) {
    if (events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) {
      int err = 0;
      socklen_t len = sizeof err;
      getsockopt(fd_, SOL_SOCKET, SO_ERROR, &err, &len);
      if (err != 0) {
        finish(false, std::string("connect: ") + std::strerror(err));
        return;
      }
      if (tls_) {
        if (!tls_client_ctx() || !(ssl_ = SSL_new(tls_client_ctx())) || SSL_set_fd(ssl_, fd_) != 1) {
          finish(false, "cannot start TLS: " + tls_error_text());
          return;
        }
        SSL_set_connect_state(ssl_);
        state_ = State::tls_handshake;
        tls_handshake();
        return;
      }
      state_ = State::upgrading;
      write_pending();
    }
    return;
  }
  if (state_ == State::tls_handshake) {
    tls_handshake();
    return;
  }
  if (events & EPOLLOUT) write_pending();
  if (fd_ < 0) return;
  if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
    if (state_ == State::upgrading) {
      read_handshake();
    } else {
      read_frames();
    }
  }
}

void WsClient::read_handshake() {
  for (;;) {
    const ssize_t n = io_recv(g_read_buf, kReadBuf);
    if (n == 0) {
      finish(false, "connection closed during the upgrade");
      return;
    }
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      if (errno == EINTR) continue;
      finish(false, std::string("recv: ") + std::strerror(errno));
      return;
    }
    now_ = now_ns();
    handshake_.append(g_read_buf, static_cast<std::size_t>(n));
    const auto end = handshake_.find("\r\n\r\n");
    if (end == std::string::npos) {
      if (handshake_.size() > 16384) {
        finish(false, "upgrade response too large");
        return;
      }
      continue;
    }
    const std::string_view head(handshake_.data(), end);
    if (head.rfind("HTTP/1.1 101", 0) != 0) {
      const auto eol = head.find("\r\n");
      std::string status(head.substr(0, eol));
      // Keep the JSON error body's reason when it came with the headers.
      const std::string body = handshake_.substr(end + 4, 200);
      finish(false, "upgrade refused: " + status + (body.empty() ? "" : " " + body));
      return;
    }
    bool accepted = false;
    std::size_t pos = 0;
    while (pos < head.size()) {
      auto eol = head.find("\r\n", pos);
      if (eol == std::string_view::npos) eol = head.size();
      std::string_view line = head.substr(pos, eol - pos);
      if (iequals_prefix(line, "sec-websocket-accept:")) {
        std::string_view v = line.substr(21);
        while (!v.empty() && v.front() == ' ') v.remove_prefix(1);
        while (!v.empty() && v.back() == ' ') v.remove_suffix(1);
        accepted = v == accept_;
      }
      pos = eol + 2;
    }
    if (!accepted) {
      finish(false, "bad Sec-WebSocket-Accept");
      return;
    }
    std::string rest = handshake_.substr(end + 4);
    std::string().swap(handshake_);
    std::string().swap(accept_);
    state_ = State::open;
    ev_.on_open(*this, now_);
    if (fd_ >= 0 && !rest.empty()) {
      bytes_in_ += rest.size();
      reader_.feed(rest.data(), rest.size(), *this);
    }
    return;
  }
}

void WsClient::read_frames() {
  // Read once unless the buffer filled: level-triggered epoll reports the rest,
  // and a read that would only return EAGAIN is saved.
  for (int i = 0; i < 8 && fd_ >= 0; ++i) {
    const ssize_t n = io_recv(g_read_buf, kReadBuf);
    if (n == 0) {
      finish(close_received_ || close_sent_, close_received_ ? "closed" : "connection closed by the server");
      return;
    }
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      if (errno == EINTR) continue;
      finish(false, std::string("recv: ") + std::strerror(errno));
      return;
    }
    now_ = now_ns();
    bytes_in_ += static_cast<std::uint64_t>(n);
    if (!reader_.finished()) reader_.feed(g_read_buf, static_cast<std::size_t>(n), *this);
    if (static_cast<std::size_t>(n) < kReadBuf) return;
  }
}

void WsClient::on_message(wire::Opcode op, std::string_view payload) {
  if (op != wire::Opcode::text) {
    ev_.on_text(*this, std::string_view(), now_);  // reported as unparseable
    return;
  }
  if (state_ == State::open || state_ == State::closing) ev_.on_text(*this, payload, now_);
}

void WsClient::on_ping(std::string_view payload) {
  if (state_ != State::open) return;
  append_frame(wire::Opcode::pong, payload);
  flush();
}

void WsClient::on_pong(std::string_view) {}

void WsClient::on_close(std::uint16_t code, std::string_view reason) {
  close_received_ = true;
  if (!close_sent_) {
    // The server started the close: answer it, then wait for its FIN.
    const char p[2] = {static_cast<char>(code >> 8), static_cast<char>(code & 0xFF)};
    append_frame(wire::Opcode::close, std::string_view(p, code == 1005 ? 0 : 2));
    close_sent_ = true;
    state_ = State::closing;
    flush();
    std::string why = "server closed with " + std::to_string(code);
    if (!reason.empty()) why += " " + std::string(reason);
    // Not clean: we did not ask for it.
    finish(false, why);
    return;
  }
  // Our close was answered; the server closes TCP next (read_frames sees EOF),
  // so the TIME_WAIT state stays on its side.
}

void WsClient::on_violation(std::uint16_t code, std::string_view why) {
  finish(false, "protocol violation by the server (" + std::to_string(code) + "): " + std::string(why));
}

}  // namespace bench
