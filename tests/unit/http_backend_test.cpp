// The streaming HTTP agent backend: the stream parser on its own, then the
// HTTP client's streaming requests and the backend against a real HTTP
// server on loopback (plain POSIX sockets on a thread of the test).
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <future>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/crypto.hpp"
#include "cortex/http_backend.hpp"
#include "cortex/runs.hpp"
#include "hooks/http_client.hpp"

namespace {
using namespace synapse;
using cortex::AgentStreamParser;
namespace json = boost::json;
using namespace std::chrono_literals;

struct Parsed {
  std::vector<json::object> events;
  std::vector<std::string> bad;
  AgentStreamParser::OnEvent on_event() {
    return [this](json::object o) { events.push_back(std::move(o)); };
  }
  AgentStreamParser::OnBad on_bad() {
    return [this](std::string w) { bad.push_back(std::move(w)); };
  }
};

std::string ev(const json::object& o) { return std::string(o.at("event").as_string()); }

TEST(AgentStreamParser, FormatFollowsContentType) {
  EXPECT_EQ(AgentStreamParser::format_for("text/event-stream"), AgentStreamParser::Format::sse);
  EXPECT_EQ(AgentStreamParser::format_for("Text/Event-Stream; charset=utf-8"), AgentStreamParser::Format::sse);
  EXPECT_EQ(AgentStreamParser::format_for("application/x-ndjson"), AgentStreamParser::Format::ndjson);
  EXPECT_EQ(AgentStreamParser::format_for(""), AgentStreamParser::Format::ndjson);
}

TEST(AgentStreamParser, NdjsonLinesSplitAnywhereAcrossFeeds) {
  const std::string body =
      "{\"event\":\"thought\",\"thought\":\"a\"}\r\n\n  \n{\"event\":\"token\",\"text\":\"x\\ny\"}\n{\"event\":\"result\"}";
  for (std::size_t cut = 0; cut <= body.size(); ++cut) {
    AgentStreamParser p(AgentStreamParser::Format::ndjson, 1024);
    Parsed out;
    ASSERT_TRUE(p.feed(std::string_view(body).substr(0, cut), out.on_event(), out.on_bad()));
    ASSERT_TRUE(p.feed(std::string_view(body).substr(cut), out.on_event(), out.on_bad()));
    p.finish(out.on_event(), out.on_bad());  // the last line has no newline and still counts
    ASSERT_EQ(out.events.size(), 3u) << "cut at " << cut;
    EXPECT_EQ(ev(out.events[0]), "thought");
    EXPECT_EQ(out.events[1].at("text").as_string(), "x\ny");
    EXPECT_EQ(ev(out.events[2]), "result");
    EXPECT_TRUE(out.bad.empty());
  }
}

TEST(AgentStreamParser, NdjsonMalformedLinesAreReportedAndSkipped) {
  AgentStreamParser p(AgentStreamParser::Format::ndjson, 1024);
  Parsed out;
  ASSERT_TRUE(p.feed("not json\n[1,2]\n{\"event\":\"result\"}\n", out.on_event(), out.on_bad()));
  EXPECT_EQ(out.bad.size(), 2u);
  ASSERT_EQ(out.events.size(), 1u);
}

TEST(AgentStreamParser, SseDataLinesEventNamesCommentsAndLineEndings) {
  // CR, LF and CRLF line ends; a comment heartbeat; a two-line data field;
  // `event:` naming an object without "event"; id/retry ignored.
  const std::string body =
      ": keep-alive\r\n"
      "data: {\"event\":\"thought\",\"thought\":\"t\"}\r\n\r\n"
      "event: token\rdata: {\"text\":\r"
      "data: \"hi\"}\r\r"
      "id: 7\nretry: 100\nevent: ignored\ndata: {\"event\":\"result\",\"data\":1}\n\n"
      "data: {\"event\":\"token\",\"text\":\"dropped: no closing blank line\"}\n";
  for (std::size_t cut = 0; cut <= body.size(); ++cut) {
    AgentStreamParser p(AgentStreamParser::Format::sse, 1024);
    Parsed out;
    ASSERT_TRUE(p.feed(std::string_view(body).substr(0, cut), out.on_event(), out.on_bad()));
    ASSERT_TRUE(p.feed(std::string_view(body).substr(cut), out.on_event(), out.on_bad()));
    p.finish(out.on_event(), out.on_bad());
    ASSERT_EQ(out.events.size(), 3u) << "cut at " << cut;
    EXPECT_EQ(ev(out.events[0]), "thought");
    EXPECT_EQ(ev(out.events[1]), "token");
    EXPECT_EQ(out.events[1].at("text").as_string(), "hi");
    EXPECT_EQ(ev(out.events[2]), "result");  // the object's own name wins over `event:`
    EXPECT_TRUE(out.bad.empty());
  }
}

TEST(AgentStreamParser, SseMalformedDataIsReported) {
  AgentStreamParser p(AgentStreamParser::Format::sse, 1024);
  Parsed out;
  ASSERT_TRUE(p.feed("data: nope\n\nevent: x\n\n", out.on_event(), out.on_bad()));
  EXPECT_EQ(out.bad.size(), 1u);  // an event without data is no event at all
  EXPECT_TRUE(out.events.empty());
}

TEST(AgentStreamParser, ALineLongerThanTheBoundStopsTheStream) {
  for (auto f : {AgentStreamParser::Format::ndjson, AgentStreamParser::Format::sse}) {
    AgentStreamParser p(f, 32);
    Parsed out;
    const std::string prefix = f == AgentStreamParser::Format::sse ? "data: " : "";
    ASSERT_TRUE(p.feed(prefix + "{\"event\":\"result\"}\n\n", out.on_event(), out.on_bad()));
    EXPECT_TRUE(p.feed(prefix + std::string(20, ' '), out.on_event(), out.on_bad()));
    EXPECT_FALSE(p.feed(std::string(20, ' '), out.on_event(), out.on_bad()));  // never a newline: no unbounded buffer
    EXPECT_TRUE(p.overflowed());
    EXPECT_FALSE(p.feed("{}\n", out.on_event(), out.on_bad()));
    EXPECT_EQ(out.events.size(), 1u);
  }
  // SSE: many short data lines of one event add up to the bound too.
  AgentStreamParser p(AgentStreamParser::Format::sse, 32);
  Parsed out;
  EXPECT_FALSE(p.feed("data: 0123456789\ndata: 0123456789\ndata: 0123456789\ndata: 0123456789\n", out.on_event(), out.on_bad()));
}

// ---- a loopback HTTP server -------------------------------------------------

// Serves one connection at a time on 127.0.0.1: reads the request head and
// its Content-Length body, then hands the socket to the test's handler.
class LoopbackServer {
 public:
  using Handler = std::function<void(int fd, const std::string& head, const std::string& body)>;
  explicit LoopbackServer(Handler handler) : handler_(std::move(handler)) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    EXPECT_EQ(::listen(fd_, 8), 0);
    socklen_t len = sizeof a;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] { loop(); });
  }
  ~LoopbackServer() {
    stop_ = true;
    ::shutdown(fd_, SHUT_RDWR);
    thread_.join();
    ::close(fd_);
  }
  std::string url(const std::string& path = "/agent") const {
    return "http://127.0.0.1:" + std::to_string(port_) + path;
  }
  int requests() const { return requests_.load(); }

  static void send_all(int fd, const std::string& s) {
    std::size_t off = 0;
    while (off < s.size()) {
      const ssize_t n = ::send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
      if (n <= 0) return;
      off += static_cast<std::size_t>(n);
    }
  }
  static std::string chunk(const std::string& s) {
    char size[32];
    std::snprintf(size, sizeof size, "%zx\r\n", s.size());
    return size + s + "\r\n";
  }
  // Waits up to `limit` for the peer to close; true if it did.
  static bool wait_closed(int fd, std::chrono::milliseconds limit) {
    const auto end = std::chrono::steady_clock::now() + limit;
    char buf[256];
    while (std::chrono::steady_clock::now() < end) {
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, 20) > 0) {
        const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
        if (n <= 0) return true;
      }
    }
    return false;
  }
  static constexpr const char* chunked_head =
      "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n";

 private:
  void loop() {
    while (!stop_) {
      const int c = ::accept(fd_, nullptr, nullptr);
      if (c < 0) return;
      std::string in;
      char buf[4096];
      std::size_t head_end = std::string::npos;
      while ((head_end = in.find("\r\n\r\n")) == std::string::npos) {
        const ssize_t n = ::recv(c, buf, sizeof buf, 0);
        if (n <= 0) break;
        in.append(buf, static_cast<std::size_t>(n));
      }
      if (head_end == std::string::npos) {
        ::close(c);
        continue;
      }
      std::string head = in.substr(0, head_end);
      std::string body = in.substr(head_end + 4);
      std::size_t want = 0;
      if (auto p = head.find("Content-Length: "); p != std::string::npos) want = std::stoul(head.substr(p + 16));
      while (body.size() < want) {
        const ssize_t n = ::recv(c, buf, sizeof buf, 0);
        if (n <= 0) break;
        body.append(buf, static_cast<std::size_t>(n));
      }
      ++requests_;
      handler_(c, head, body);
      ::close(c);
    }
  }

  Handler handler_;
  int fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> requests_{0};
  std::thread thread_;
};

// Collects a stream's callbacks for a test to wait on.
struct StreamLog {
  std::mutex mu;
  std::condition_variable cv;
  int status = 0;
  std::string type;
  std::string body;
  std::vector<std::string> pieces;
  bool ended = false;
  hooks::StreamEnd end;

  hooks::StreamCallbacks callbacks() {
    hooks::StreamCallbacks cb;
    cb.headers = [this](int s, std::string t) {
      std::lock_guard l(mu);
      status = s;
      type = std::move(t);
      cv.notify_all();
      return true;
    };
    cb.data = [this](std::string_view b) {
      std::lock_guard l(mu);
      body.append(b);
      pieces.emplace_back(b);
      cv.notify_all();
      return true;
    };
    cb.end = [this](hooks::StreamEnd e) {
      std::lock_guard l(mu);
      EXPECT_FALSE(ended) << "end ran twice";
      ended = true;
      end = std::move(e);
      cv.notify_all();
    };
    return cb;
  }
  bool wait(const std::function<bool()>& pred, std::chrono::milliseconds limit = 3000ms) {
    std::unique_lock l(mu);
    return cv.wait_for(l, limit, pred);
  }
};

hooks::StreamRequest post_to(const std::string& url, std::string body = "{}") {
  hooks::StreamRequest r;
  r.url = *hooks::parse_http_url(url);
  r.body = std::move(body);
  return r;
}

TEST(HttpClientStream, ChunkedBodyArrivesAsItIsSent) {
  std::promise<void> first_seen;
  auto seen = first_seen.get_future();
  std::string got_body;
  LoopbackServer server([&](int fd, const std::string&, const std::string& body) {
    got_body = body;
    LoopbackServer::send_all(fd, LoopbackServer::chunked_head);
    LoopbackServer::send_all(fd, LoopbackServer::chunk("first\n"));
    // The client must hand "first" over before the response is complete.
    EXPECT_EQ(seen.wait_for(3s), std::future_status::ready);
    LoopbackServer::send_all(fd, LoopbackServer::chunk("second\n") + "0\r\n\r\n");
  });
  hooks::HttpClient client;
  StreamLog log;
  auto cb = log.callbacks();
  auto data = cb.data;
  bool signalled = false;
  cb.data = [&, data](std::string_view b) {
    const bool r = data(b);
    if (!signalled && b.find("first") != std::string_view::npos) {
      signalled = true;
      first_seen.set_value();
    }
    return r;
  };
  auto h = client.stream(post_to(server.url(), "{\"q\":1}"), std::move(cb));
  ASSERT_TRUE(log.wait([&] { return log.ended; }));
  EXPECT_EQ(log.status, 200);
  EXPECT_EQ(log.type, "application/x-ndjson");
  EXPECT_EQ(log.body, "first\nsecond\n");
  EXPECT_EQ(log.end.why, hooks::StreamEnd::Why::complete);
  EXPECT_EQ(got_body, "{\"q\":1}");
}

TEST(HttpClientStream, CancelClosesTheConnectionAtOnce) {
  std::promise<bool> closed;
  auto closed_f = closed.get_future();
  LoopbackServer server([&](int fd, const std::string&, const std::string&) {
    LoopbackServer::send_all(fd, LoopbackServer::chunked_head);
    LoopbackServer::send_all(fd, LoopbackServer::chunk("hello\n"));
    closed.set_value(LoopbackServer::wait_closed(fd, 3000ms));
  });
  hooks::HttpClient client;
  StreamLog log;
  auto h = client.stream(post_to(server.url()), log.callbacks());
  ASSERT_TRUE(log.wait([&] { return !log.body.empty(); }));
  const auto t0 = std::chrono::steady_clock::now();
  h->cancel();
  ASSERT_EQ(closed_f.wait_for(3s), std::future_status::ready);
  EXPECT_TRUE(closed_f.get());
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 500ms);
  ASSERT_TRUE(log.wait([&] { return log.ended; }));
  EXPECT_EQ(log.end.why, hooks::StreamEnd::Why::cancelled);
  h->cancel();  // a second cancel, after the end, does nothing
}

TEST(HttpClientStream, RefusedConnectionEndsWithConnect) {
  int port = 0;
  {
    LoopbackServer gone([](int, const std::string&, const std::string&) {});
    port = std::stoi(gone.url("").substr(std::string("http://127.0.0.1:").size()));
  }
  hooks::HttpClient client;
  StreamLog log;
  auto h = client.stream(post_to("http://127.0.0.1:" + std::to_string(port) + "/"), log.callbacks());
  ASSERT_TRUE(log.wait([&] { return log.ended; }));
  EXPECT_EQ(log.end.why, hooks::StreamEnd::Why::connect);
  EXPECT_EQ(log.status, 0);  // no headers callback
}

TEST(HttpClientStream, IdleTimeoutAndBodyLimit) {
  LoopbackServer server([&](int fd, const std::string& head, const std::string&) {
    LoopbackServer::send_all(fd, LoopbackServer::chunked_head);
    if (head.find("/big") != std::string::npos) {
      for (int i = 0; i < 10; ++i) LoopbackServer::send_all(fd, LoopbackServer::chunk(std::string(1000, 'x')));
    }
    LoopbackServer::wait_closed(fd, 3000ms);
  });
  hooks::HttpClient client;
  {
    StreamLog log;
    auto r = post_to(server.url("/silent"));
    r.idle_timeout = 150ms;
    const auto t0 = std::chrono::steady_clock::now();
    auto h = client.stream(std::move(r), log.callbacks());
    ASSERT_TRUE(log.wait([&] { return log.ended; }));
    EXPECT_EQ(log.end.why, hooks::StreamEnd::Why::timeout);
    EXPECT_GE(std::chrono::steady_clock::now() - t0, 140ms);
  }
  {
    StreamLog log;
    auto r = post_to(server.url("/big"));
    r.max_body_bytes = 4000;
    auto h = client.stream(std::move(r), log.callbacks());
    ASSERT_TRUE(log.wait([&] { return log.ended; }));
    EXPECT_EQ(log.end.why, hooks::StreamEnd::Why::too_large);
    EXPECT_LE(log.body.size(), 4000u);
  }
}

// ---- the backend, on real runs ----------------------------------------------

struct RunWatch {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::pair<std::string, json::object>> events;
  bool ended = false;

  void attach(const cortex::RunPtr& run) {
    run->attach(std::nullopt, [this](const cortex::RunEventPtr& e) {
      std::lock_guard l(mu);
      events.emplace_back(e->event, json::parse(e->payload).as_object());
      if (e->terminal) ended = true;
      cv.notify_all();
    });
  }
  bool wait_end(std::chrono::milliseconds limit = 3000ms) {
    std::unique_lock l(mu);
    return cv.wait_for(l, limit, [&] { return ended; });
  }
  std::string last_event() {
    std::lock_guard l(mu);
    return events.empty() ? "" : events.back().first;
  }
  json::object last() {
    std::lock_guard l(mu);
    return events.back().second;
  }
};

cortex::HttpBackendOptions opts(std::string url, std::size_t max_line = 256 * 1024) {
  cortex::HttpBackendOptions o;
  o.url = std::move(url);
  o.max_line_bytes = max_line;
  return o;
}

struct BackendFixture {
  cortex::RunRegistry runs{cortex::RunOptions{}};
  hooks::HttpClient client;
  cortex::RunPtr run(std::int64_t timeout_ms = 10'000) {
    return runs.start("1", "query", "", "t1", "bot", timeout_ms, nullptr);
  }
  static cortex::AgentRequest query(std::string q = "hello") {
    cortex::AgentRequest r;
    r.kind = "query";
    r.q = std::move(q);
    r.caller = {"t1", "bot"};
    r.deadline_ms = 0;
    return r;
  }
};

TEST(HttpBackend, PostsTheRunAndAppliesNdjsonEventsInOrder) {
  std::string head, body;
  LoopbackServer server([&](int fd, const std::string& h, const std::string& b) {
    head = h;
    body = b;
    LoopbackServer::send_all(fd, LoopbackServer::chunked_head);
    LoopbackServer::send_all(fd, LoopbackServer::chunk("{\"event\":\"thought\",\"thought\":\"thinking\"}\n{\"event\":\"tok"));
    LoopbackServer::send_all(fd, LoopbackServer::chunk("en\",\"text\":\"Hel\"}\n{\"event\":\"token\",\"text\":\"lo\"}\n"));
    LoopbackServer::send_all(fd, LoopbackServer::chunk("{\"event\":\"result\",\"data\":{\"answer\":42}}\n") + "0\r\n\r\n");
  });
  BackendFixture f;
  auto o = opts(server.url());
  o.secret = "s3cret";
  cortex::HttpBackend backend(f.client, o);
  auto run = f.run();
  RunWatch w;
  w.attach(run);
  EXPECT_EQ(backend.start(BackendFixture::query(), run), cortex::AgentBackend::Start::accepted);
  ASSERT_TRUE(w.wait_end());
  ASSERT_EQ(w.events.size(), 4u);
  EXPECT_EQ(w.events[0].first, "thought");
  EXPECT_EQ(w.events[1].second.at("delta").as_string(), "Hel");
  EXPECT_EQ(w.events[2].second.at("delta").as_string(), "lo");
  EXPECT_EQ(w.events[3].first, "result");
  EXPECT_EQ(w.events[3].second.at("data").at("answer").as_int64(), 42);
  for (std::size_t i = 0; i < w.events.size(); ++i) EXPECT_EQ(w.events[i].second.at("seq").to_number<int>(), int(i) + 1);
  EXPECT_NE(head.find("POST /agent HTTP/1.1"), std::string::npos);
  EXPECT_NE(head.find("Content-Type: application/json"), std::string::npos);
  EXPECT_NE(head.find("Accept: application/x-ndjson, text/event-stream"), std::string::npos);
  const std::string sig = "X-Synapse-Signature: sha256=" + core::hex_encode(core::as_view(core::hmac_sha256("s3cret", body)));
  EXPECT_NE(head.find(sig), std::string::npos) << head;
  auto posted = json::parse(body).as_object();
  EXPECT_EQ(posted.at("run_id").as_string(), run->id());
  EXPECT_EQ(posted.at("kind").as_string(), "query");
  EXPECT_EQ(posted.at("q").as_string(), "hello");
  EXPECT_EQ(posted.at("caller").at("tenant").as_string(), "t1");
}

TEST(HttpBackend, SseAnswer) {
  LoopbackServer server([&](int fd, const std::string&, const std::string&) {
    LoopbackServer::send_all(fd, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n");
    LoopbackServer::send_all(fd, ": hi\n\nevent: token\ndata: {\"text\":\"a\"}\n\ndata: {\"event\":\"result\",\"data\":\"ok\"}\n\n");
    LoopbackServer::wait_closed(fd, 3000ms);
  });
  BackendFixture f;
  cortex::HttpBackend backend(opts(server.url()));  // with a client of its own, as main makes it
  auto run = f.run();
  RunWatch w;
  w.attach(run);
  backend.start(BackendFixture::query(), run);
  ASSERT_TRUE(w.wait_end());
  ASSERT_EQ(w.events.size(), 2u);
  EXPECT_EQ(w.events[0].second.at("delta").as_string(), "a");
  EXPECT_EQ(w.events[1].first, "result");
  EXPECT_EQ(w.events[1].second.at("data").as_string(), "ok");
}

TEST(HttpBackend, InterruptClosesTheRequest) {
  std::promise<bool> closed;
  auto closed_f = closed.get_future();
  LoopbackServer server([&](int fd, const std::string&, const std::string&) {
    LoopbackServer::send_all(fd, LoopbackServer::chunked_head);
    LoopbackServer::send_all(fd, LoopbackServer::chunk("{\"event\":\"token\",\"text\":\"a\"}\n"));
    closed.set_value(LoopbackServer::wait_closed(fd, 3000ms));
  });
  BackendFixture f;
  cortex::HttpBackend backend(f.client, opts(server.url()));
  auto run = f.run();
  RunWatch w;
  w.attach(run);
  backend.start(BackendFixture::query(), run);
  {
    std::unique_lock l(w.mu);
    ASSERT_TRUE(w.cv.wait_for(l, 3s, [&] { return !w.events.empty(); }));
  }
  run->finish(cortex::RunEnd::interrupted, json::object{{"reason", "client"}});
  ASSERT_EQ(closed_f.wait_for(3s), std::future_status::ready);
  EXPECT_TRUE(closed_f.get());
  EXPECT_EQ(w.last_event(), "interrupted");
}

struct FailCase {
  const char* name;
  std::string response;  // written after the request; then the server closes
};

TEST(HttpBackend, FailuresEndTheRunWithAgentUnavailable) {
  const std::vector<FailCase> cases = {
      {"http 500", "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops"},
      {"no terminal event", std::string(LoopbackServer::chunked_head) +
                                LoopbackServer::chunk("{\"event\":\"token\",\"text\":\"a\"}\n") + "0\r\n\r\n"},
      {"broken chunking", std::string(LoopbackServer::chunked_head) + "zz\r\n"},
      {"malformed past the budget", std::string(LoopbackServer::chunked_head) +
                                        LoopbackServer::chunk("x\n{}\n{\"event\":\"call_tool\",\"name\":\"memory.search\"}\n"
                                                              "{\"event\":\"token\"}\n{\"event\":\"result\"}\n") +
                                        "0\r\n\r\n"},
      {"line too long", std::string(LoopbackServer::chunked_head) + LoopbackServer::chunk(std::string(300, 'x'))},
  };
  for (const auto& c : cases) {
    LoopbackServer server([&](int fd, const std::string&, const std::string&) {
      LoopbackServer::send_all(fd, c.response);
    });
    BackendFixture f;
    cortex::HttpBackend backend(f.client, opts(server.url(), 200));
    auto run = f.run();
    RunWatch w;
    w.attach(run);
    backend.start(BackendFixture::query(), run);
    ASSERT_TRUE(w.wait_end()) << c.name;
    EXPECT_EQ(w.last_event(), "error") << c.name;
    EXPECT_EQ(w.last().at("reason").as_string(), "agent_unavailable") << c.name;
  }
}

TEST(HttpBackend, MalformedEventsWithinTheBudgetAreSkipped) {
  LoopbackServer server([&](int fd, const std::string&, const std::string&) {
    LoopbackServer::send_all(fd, std::string(LoopbackServer::chunked_head) +
                                     LoopbackServer::chunk("x\n{\"event\":\"nope\"}\n{\"event\":\"result\",\"data\":1}\n") +
                                     "0\r\n\r\n");
  });
  BackendFixture f;
  cortex::HttpBackend backend(f.client, opts(server.url()));
  auto run = f.run();
  RunWatch w;
  w.attach(run);
  backend.start(BackendFixture::query(), run);
  ASSERT_TRUE(w.wait_end());
  EXPECT_EQ(w.last_event(), "result");
}

TEST(HttpBackend, RefusedConnectionAndBadUrl) {
  int port = 0;
  {
    LoopbackServer gone([](int, const std::string&, const std::string&) {});
    port = std::stoi(gone.url("").substr(std::string("http://127.0.0.1:").size()));
  }
  BackendFixture f;
  cortex::HttpBackend backend(f.client, opts("http://127.0.0.1:" + std::to_string(port) + "/agent"));
  auto run = f.run();
  RunWatch w;
  w.attach(run);
  backend.start(BackendFixture::query(), run);
  ASSERT_TRUE(w.wait_end());
  EXPECT_EQ(w.last().at("reason").as_string(), "agent_unavailable");
  EXPECT_THROW(cortex::HttpBackend(f.client, opts("https://example.invalid/")), std::invalid_argument);
}

TEST(HttpBackend, RunTimeoutClosesTheRequest) {
  std::promise<bool> closed;
  auto closed_f = closed.get_future();
  LoopbackServer server([&](int fd, const std::string&, const std::string&) {
    LoopbackServer::send_all(fd, LoopbackServer::chunked_head);
    closed.set_value(LoopbackServer::wait_closed(fd, 3000ms));
  });
  BackendFixture f;
  cortex::HttpBackend backend(f.client, opts(server.url()));
  auto run = f.run(200);
  RunWatch w;
  w.attach(run);
  backend.start(BackendFixture::query(), run);
  ASSERT_EQ(closed_f.wait_for(3s), std::future_status::ready);
  EXPECT_TRUE(closed_f.get());
  ASSERT_TRUE(w.wait_end());
  EXPECT_EQ(w.last().at("reason").as_string(), "timeout");
}

}  // namespace
