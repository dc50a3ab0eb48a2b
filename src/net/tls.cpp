// OpenSSL stays in this file (and the load generator's own client). See
// tls.hpp for why OpenSSL is driven directly rather than through Asio.
#include "net/tls.hpp"

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <stdexcept>

namespace synapse::net {
namespace {

// One encrypt() takes at most this much plaintext (four full records): a
// burst leaves in sends of about this size, and a connection's ciphertext
// buffer never holds more than one such batch on top of its outbound queue,
// so the slow-consumer bound keeps its meaning.
constexpr std::size_t max_batch = 64 * 1024;
// A drained ciphertext buffer larger than this is given back: an idle
// connection keeps at most this much.
constexpr std::size_t keep_capacity = 1024;

// The oldest queued OpenSSL error as text ("" when none), and clears the queue.
std::string openssl_error() {
  std::string out;
  unsigned long e = 0;
  while ((e = ERR_get_error()) != 0) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    if (out.empty()) out = buf;
  }
  return out;
}

// Fails with the file's own error (missing, unreadable) before OpenSSL
// gives its less direct one.
void check_readable(const std::string& what, const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw std::runtime_error(fmt::format("cannot read the {} {}: {}", what, path, std::strerror(errno)));
  std::fclose(f);
}

std::string x509_name(X509_NAME* name) {
  BIO* b = BIO_new(BIO_s_mem());
  if (!b) return {};
  X509_NAME_print_ex(b, name, 0, XN_FLAG_RFC2253);
  char* data = nullptr;
  const long n = BIO_get_mem_data(b, &data);
  std::string out(data, static_cast<std::size_t>(std::max(0L, n)));
  BIO_free(b);
  return out;
}

std::string x509_serial(X509* x) {
  BIGNUM* bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), nullptr);
  if (!bn) return {};
  char* hex = BN_bn2hex(bn);
  std::string out = hex ? hex : "";
  OPENSSL_free(hex);
  BN_free(bn);
  return out;
}

std::int64_t x509_not_after(X509* x) {
  std::tm tm{};
  if (ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm) != 1) return 0;
  return static_cast<std::int64_t>(timegm(&tm));
}

std::int64_t cert_not_after(SSL_CTX* c) {
  X509* x = SSL_CTX_get0_certificate(c);
  return x ? x509_not_after(x) : 0;
}

}  // namespace

// The write side of every session: a BIO that appends each record to the
// session's buffer and never blocks, so SSL_write always completes and the
// connection sends the bytes itself (gathered, non-blocking, counted).
struct TlsBio {
  static int write(BIO* b, const char* data, int n) {
    auto* s = static_cast<TlsSession*>(BIO_get_data(b));
    if (!s || n < 0) return -1;
    s->out_.append(data, static_cast<std::size_t>(n));
    return n;
  }
  static long ctrl(BIO*, int cmd, long, void*) { return cmd == BIO_CTRL_FLUSH ? 1 : 0; }
  static int create(BIO* b) {
    BIO_set_init(b, 1);
    return 1;
  }
  static const BIO_METHOD* method() {
    static BIO_METHOD* m = [] {
      BIO_METHOD* bm = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "synapse-tls-out");
      if (bm) {
        BIO_meth_set_write(bm, write);
        BIO_meth_set_ctrl(bm, ctrl);
        BIO_meth_set_create(bm, create);
      }
      return bm;
    }();
    return m;
  }
};

// --- TlsContext --------------------------------------------------------------

TlsContext::TlsContext(std::string cert_path, std::string key_path)
    : cert_path_(std::move(cert_path)), key_path_(std::move(key_path)) {
  ctx_ = build();
  not_after_unix.store(cert_not_after(ctx_), std::memory_order_relaxed);
  spdlog::info("TLS on: {} (cert {}, key {})", describe(), cert_path_, key_path_);
}

TlsContext::~TlsContext() { SSL_CTX_free(ctx_); }

ssl_ctx_st* TlsContext::build() const {
  check_readable("certificate", cert_path_);
  check_readable("private key", key_path_);
  ERR_clear_error();
  SSL_CTX* c = SSL_CTX_new(TLS_server_method());
  if (!c) throw std::runtime_error("cannot create a TLS context: " + openssl_error());
  struct Guard {
    SSL_CTX* c;
    ~Guard() { SSL_CTX_free(c); }
  } guard{c};
  SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION);
  // No renegotiation (TLS 1.2): a session never needs to read while it
  // writes. An EOF without close_notify is an ordinary EOF (the WebSocket
  // close handshake, not TLS, says whether a connection ended cleanly).
  SSL_CTX_set_options(c, SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_CIPHER_SERVER_PREFERENCE |
                             SSL_OP_PRIORITIZE_CHACHA | SSL_OP_NO_COMPRESSION);
  // Record buffers are freed while a connection is idle; several records
  // are read per read() when they are there.
  SSL_CTX_set_mode(c, SSL_MODE_RELEASE_BUFFERS);
  SSL_CTX_set_read_ahead(c, 1);
  // AES-128-GCM first (the cheapest per byte with AES-NI); ChaCha20 for a
  // client that lists it first (no AES in hardware). TLS 1.2: ECDHE with AEAD only.
  SSL_CTX_set_ciphersuites(c, "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256");
  SSL_CTX_set_cipher_list(c,
                          "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
                          "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305");
  // An encrypted key would make OpenSSL ask on the terminal: refuse instead.
  SSL_CTX_set_default_passwd_cb(c, [](char*, int, int, void*) { return 0; });
  if (SSL_CTX_use_certificate_chain_file(c, cert_path_.c_str()) != 1) {
    throw std::runtime_error(
        fmt::format("cannot load the certificate {} (PEM expected): {}", cert_path_, openssl_error()));
  }
  if (SSL_CTX_use_PrivateKey_file(c, key_path_.c_str(), SSL_FILETYPE_PEM) != 1) {
    // Loading checks the key against the certificate already.
    bool mismatch = false;
    for (unsigned long e = 0; (e = ERR_peek_error()) != 0 && !mismatch;) {
      mismatch = ERR_GET_LIB(e) == ERR_LIB_X509 && ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH;
      if (!mismatch) ERR_get_error();
    }
    if (mismatch) {
      ERR_clear_error();
      throw std::runtime_error(
          fmt::format("the private key {} does not match the certificate {}", key_path_, cert_path_));
    }
    throw std::runtime_error(fmt::format("cannot load the private key {} (unencrypted PEM expected): {}", key_path_,
                                         openssl_error()));
  }
  if (SSL_CTX_check_private_key(c) != 1) {
    throw std::runtime_error(fmt::format("the private key {} does not match the certificate {}: {}", key_path_,
                                         cert_path_, openssl_error()));
  }
  guard.c = nullptr;
  return c;
}

bool TlsContext::reload() {
  SSL_CTX* fresh = nullptr;
  try {
    fresh = build();
  } catch (const std::exception& e) {
    reload_failures.fetch_add(1, std::memory_order_relaxed);
    spdlog::error("TLS reload failed, still serving the previous certificate ({}): {}", describe(), e.what());
    return false;
  }
  SSL_CTX* old = nullptr;
  {
    std::lock_guard lock(mu_);
    old = ctx_;
    ctx_ = fresh;
  }
  // Sessions made with the old context hold their own reference to it.
  SSL_CTX_free(old);
  not_after_unix.store(cert_not_after(fresh), std::memory_order_relaxed);
  reloads.fetch_add(1, std::memory_order_relaxed);
  spdlog::info("TLS reloaded: {}", describe());
  return true;
}

std::string TlsContext::describe() const {
  std::lock_guard lock(mu_);
  X509* x = SSL_CTX_get0_certificate(ctx_);
  if (!x) return "no certificate";
  const std::int64_t not_after = x509_not_after(x);
  char when[32] = "?";
  const std::time_t t = static_cast<std::time_t>(not_after);
  std::tm tm{};
  if (gmtime_r(&t, &tm)) std::strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return fmt::format("subject=\"{}\" serial={} not_after={}", x509_name(X509_get_subject_name(x)), x509_serial(x),
                     when);
}

TlsPtr TlsContext::session(int fd) {
  SSL_CTX* ctx = nullptr;
  {
    // Only a reference is taken under the lock: threads accepting at once
    // do not wait for each other's SSL_new.
    std::lock_guard lock(mu_);
    ctx = ctx_;
    SSL_CTX_up_ref(ctx);
  }
  SSL* ssl = SSL_new(ctx);  // holds its own reference to the context
  SSL_CTX_free(ctx);
  BIO* rbio = ssl ? BIO_new_socket(fd, BIO_NOCLOSE) : nullptr;
  BIO* wbio = rbio ? BIO_new(TlsBio::method()) : nullptr;
  if (!wbio) {
    spdlog::error("cannot create a TLS session: {}", openssl_error());
    BIO_free(rbio);
    SSL_free(ssl);
    return nullptr;
  }
  auto* s = new TlsSession(ssl, fd, *this);
  BIO_set_data(wbio, s);
  SSL_set_bio(ssl, rbio, wbio);  // the SSL owns both BIOs now
  SSL_set_accept_state(ssl);
  return TlsPtr(s);
}

// --- TlsSession --------------------------------------------------------------

void TlsSessionDeleter::operator()(TlsSession* s) const noexcept { delete s; }

TlsSession::TlsSession(ssl_st* ssl, int fd, TlsContext& ctx) : ssl_(ssl), fd_(fd), ctx_(ctx) {}

TlsSession::~TlsSession() { SSL_free(ssl_); }

void TlsSession::check_handshake() {
  if (!handshake_done_ && SSL_is_init_finished(ssl_)) {
    handshake_done_ = true;
    ctx_.handshakes.fetch_add(1, std::memory_order_relaxed);
  }
}

void TlsSession::note_failure(int ssl_error) {
  if (failed_) return;
  failed_ = true;
  const unsigned long e = ERR_peek_error();
  plaintext_http_ = !handshake_done_ && ERR_GET_LIB(e) == ERR_LIB_SSL && ERR_GET_REASON(e) == SSL_R_HTTP_REQUEST;
  error_ = openssl_error();
  if (error_.empty()) error_ = fmt::format("TLS error {}", ssl_error);
  if (!handshake_done_) ctx_.handshake_failures.fetch_add(1, std::memory_order_relaxed);
}

ssize_t TlsSession::read(int fd, char* buf, std::size_t n) {
  if (fd < 0 || fd != fd_) {
    errno = EBADF;
    return -1;
  }
  if (sticky_errno_ != 0) {
    errno = sticky_errno_;
    return -1;
  }
  if (eof_) return 0;
  std::size_t got = 0;
  while (got < n) {
    ERR_clear_error();
    const int r = SSL_read(ssl_, buf + got, static_cast<int>(std::min<std::size_t>(n - got, INT_MAX)));
    if (r > 0) {
      got += static_cast<std::size_t>(r);
      continue;
    }
    const int e = SSL_get_error(ssl_, r);
    check_handshake();
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
      if (got > 0) return static_cast<ssize_t>(got);
      errno = EAGAIN;
      return -1;
    }
    if (e == SSL_ERROR_ZERO_RETURN) {
      eof_ = true;
      return static_cast<ssize_t>(got);
    }
    // A failure: reported now, or after the bytes that came before it.
    if (e == SSL_ERROR_SYSCALL && errno != 0 && ERR_peek_error() == 0) {
      sticky_errno_ = errno;
      failed_ = true;
      error_ = std::strerror(errno);
    } else {
      note_failure(e);
      sticky_errno_ = EPROTO;
    }
    if (got > 0) return static_cast<ssize_t>(got);
    errno = sticky_errno_;
    return -1;
  }
  check_handshake();
  return static_cast<ssize_t>(got);
}

std::size_t TlsSession::encrypt(const iovec* iov, std::size_t n, std::size_t max) {
  if (failed_ || notify_queued_ || n == 0) return 0;
  max = std::min(max, max_batch);
  const void* data = iov[0].iov_base;
  std::size_t len = std::min(iov[0].iov_len, max);
  if (len < max && n > 1) {
    // Several frames: copied together so they share records.
    thread_local std::unique_ptr<char[]> stage(new char[max_batch]);
    len = 0;
    for (std::size_t i = 0; i < n && len < max; ++i) {
      const std::size_t take = std::min(iov[i].iov_len, max - len);
      std::memcpy(stage.get() + len, iov[i].iov_base, take);
      len += take;
    }
    data = stage.get();
  }
  if (len == 0) return 0;
  ERR_clear_error();
  const int r = SSL_write(ssl_, data, static_cast<int>(len));
  if (r <= 0) {
    note_failure(SSL_get_error(ssl_, r));
    return 0;
  }
  return static_cast<std::size_t>(r);
}

int TlsSession::flush(int fd, std::uint64_t& bytes, std::uint64_t& calls) {
  if (fd < 0 || fd != fd_) {
    errno = EBADF;
    return -1;
  }
  while (out_off_ < out_.size()) {
    const ssize_t r = ::send(fd, out_.data() + out_off_, out_.size() - out_off_, MSG_NOSIGNAL);
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
      return -1;
    }
    ++calls;
    bytes += static_cast<std::uint64_t>(r);
    out_off_ += static_cast<std::size_t>(r);
  }
  out_off_ = 0;
  if (out_.capacity() > keep_capacity) {
    std::string().swap(out_);
  } else {
    out_.clear();
  }
  return 1;
}

void TlsSession::discard_output() {
  std::string().swap(out_);
  out_off_ = 0;
}

void TlsSession::close_notify() {
  if (notify_queued_ || failed_ || !handshake_done_) return;
  notify_queued_ = true;
  ERR_clear_error();
  SSL_shutdown(ssl_);  // writes the alert into out_; the peer's is not awaited
  ERR_clear_error();
}

}  // namespace synapse::net
