#include "redis/connection.hpp"

#include <boost/asio/connect.hpp>
#include <boost/asio/write.hpp>
#include <hiredis/hiredis.h>

namespace synapse::redis {
namespace asio = boost::asio;
using boost::system::error_code;
using tcp = asio::ip::tcp;

namespace {

Reply convert(const redisReply* r) {
  Reply out;
  switch (r->type) {
    case REDIS_REPLY_STRING:
      out.type = Reply::Type::string;
      out.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_STATUS:
      out.type = Reply::Type::status;
      out.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_ERROR:
      out.type = Reply::Type::error;
      out.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_INTEGER:
      out.type = Reply::Type::integer;
      out.integer = r->integer;
      break;
    case REDIS_REPLY_ARRAY:
      out.type = Reply::Type::array;
      out.elements.reserve(r->elements);
      for (std::size_t i = 0; i < r->elements; ++i) out.elements.push_back(convert(r->element[i]));
      break;
    default:
      out.type = Reply::Type::nil;
  }
  return out;
}

}  // namespace

std::int64_t Reply::as_int(std::int64_t fallback) const noexcept {
  if (type == Type::integer) return integer;
  if (type != Type::string || str.empty()) return fallback;
  std::int64_t v = 0;
  bool neg = false;
  std::size_t i = 0;
  if (str[0] == '-') neg = true, i = 1;
  if (i == str.size()) return fallback;
  for (; i < str.size(); ++i) {
    if (str[i] < '0' || str[i] > '9') return fallback;
    v = v * 10 + (str[i] - '0');
  }
  return neg ? -v : v;
}

void append_command(std::string& out, const std::vector<std::string>& args) {
  out += '*';
  out += std::to_string(args.size());
  out += "\r\n";
  for (const auto& a : args) {
    out += '$';
    out += std::to_string(a.size());
    out += "\r\n";
    out += a;
    out += "\r\n";
  }
}

Connection::Connection(asio::io_context& ioc, Callback on_push, std::function<void(const std::string&)> on_close)
    : ioc_(ioc), socket_(ioc), timer_(ioc), on_push_(std::move(on_push)), on_close_(std::move(on_close)) {
  reader_ = redisReaderCreate();
}

Connection::~Connection() {
  if (reader_) redisReaderFree(reader_);
}

void Connection::connect(const Url& url, const std::string& name, std::chrono::milliseconds timeout,
                         std::function<void(const std::string&)> done) {
  auto self = shared_from_this();
  auto finished = std::make_shared<bool>(false);
  auto finish = [this, self, finished, done](const std::string& err) {
    if (*finished) return;
    *finished = true;
    timer_.cancel();
    if (!err.empty()) {
      // Not open yet as far as the owner knows: no on_close.
      open_ = false;
      closed_ = true;
      pending_.clear();
      error_code ec;
      socket_.close(ec);
    }
    done(err);
  };
  timer_.expires_after(timeout);
  timer_.async_wait([finish](const error_code& ec) {
    if (!ec) finish("timed out after connecting for a while");
  });
  auto resolver = std::make_shared<tcp::resolver>(ioc_);
  resolver->async_resolve(
      url.host, std::to_string(url.port),
      [this, self, resolver, finish, url, name](const error_code& ec, const tcp::resolver::results_type& results) {
        if (ec) return finish("cannot resolve " + url.host + ": " + ec.message());
        asio::async_connect(socket_, results, [this, self, finish, url, name](const error_code& ec2,
                                                                             const tcp::endpoint&) {
          if (ec2) return finish(ec2.message());
          error_code ignored;
          socket_.set_option(tcp::no_delay(true), ignored);
          open_ = true;
          read_loop();
          // SELECT answers before anything queued after it, and PING proves
          // the server speaks RESP (not some other service on the port).
          const bool push = static_cast<bool>(on_push_);
          auto check = [finish](Reply r) {
            if (!r.ok()) finish(r.str.empty() ? "no answer" : r.str);
          };
          if (push) {
            // A subscriber connection cannot SELECT once subscribed, and
            // pub/sub ignores databases; just prove it answers.
            send({"CLIENT", "SETNAME", name}, {});
            send({"PING"}, {});
            finish("");
            return;
          }
          send({"CLIENT", "SETNAME", name}, check);
          send({"SELECT", std::to_string(url.db)}, check);
          send({"PING"}, [finish](Reply r) {
            if (!r.ok()) return finish(r.str.empty() ? "no answer" : r.str);
            finish("");
          });
        });
      });
}

void Connection::send(const std::vector<std::string>& args, Callback cb) {
  if (!open_) {
    if (cb) cb(Reply::failure(Reply::Type::not_connected, "not connected to Redis"));
    return;
  }
  if (!on_push_) pending_.push_back(std::move(cb));
  append_command(out_, args);
  flush();
}

void Connection::flush() {
  if (write_in_flight_ || out_.empty() || !open_) return;
  write_in_flight_ = true;
  writing_.swap(out_);
  out_.clear();
  asio::async_write(socket_, asio::buffer(writing_), [this, self = shared_from_this()](const error_code& ec, std::size_t) {
    write_in_flight_ = false;
    writing_.clear();
    if (ec) return fail("write failed: " + ec.message());
    flush();
  });
}

void Connection::read_loop() {
  socket_.async_read_some(asio::buffer(buf_), [this, self = shared_from_this()](const error_code& ec, std::size_t n) {
    if (ec) return fail(ec == asio::error::eof ? "Redis closed the connection" : "read failed: " + ec.message());
    if (redisReaderFeed(reader_, buf_.data(), n) != REDIS_OK) return fail("unreadable reply");
    for (;;) {
      void* raw = nullptr;
      if (redisReaderGetReply(reader_, &raw) != REDIS_OK) return fail("malformed reply from Redis");
      if (!raw) break;
      Reply r = convert(static_cast<redisReply*>(raw));
      freeReplyObject(raw);
      if (on_push_) {
        on_push_(std::move(r));
      } else if (!pending_.empty()) {
        Callback cb = std::move(pending_.front());
        pending_.pop_front();
        if (cb) cb(std::move(r));
      }
      if (closed_) return;  // a callback closed us
    }
    read_loop();
  });
}

void Connection::fail(const std::string& why) {
  if (closed_) return;
  closed_ = true;
  const bool was_open = open_;
  open_ = false;
  error_code ec;
  socket_.close(ec);
  timer_.cancel();
  auto pending = std::move(pending_);
  pending_.clear();
  for (auto& cb : pending) {
    if (cb) cb(Reply::failure(Reply::Type::lost, "connection to Redis lost: " + why));
  }
  if (was_open && on_close_) on_close_(why);
}

void Connection::close(const std::string& why) { fail(why); }

}  // namespace synapse::redis
