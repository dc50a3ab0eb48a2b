// One contract, every broker backend (issue 18 items 2 and 7).
//
// Each case below is a TEST_P run against every backend the server can be
// configured with:
//   LocalMemory  LocalBroker, history in memory (the single-node default);
//   LocalDisk    LocalBroker, history in a HistoryLog in a temp directory
//                (`pubsub.history_store = "disk"`);
//   Redis        RedisBroker through a real redis::Link to a real
//                redis-server this fixture starts on a free loopback port
//                (`redis-server` is installed by scripts/install-deps; when it
//                is missing the Redis cases FAIL, they are never skipped).
// The assertions are the same for every backend. Where a backend legitimately
// differs (a restart keeps the history or not, presence has a byte bound or
// not, there is an external backend to lose), the difference is a field of
// `Traits`, set per backend, that the case branches on explicitly.
//
// Production's threading is kept: members live on fake I/O threads (Loop, one
// event loop thread each) whose Posters the broker gets; join() and leave()
// run on the member's thread, and the recording sink checks that every
// delivery arrives on it. Every join goes through ContractTest::join (one call
// site of Broker::join).
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "core/message_sink.hpp"
#include "core/poster.hpp"
#include "metrics/metrics.hpp"
#include "pubsub/broker.hpp"
#include "pubsub/history_log.hpp"
#include "pubsub/local_broker.hpp"
#include "pubsub/publish_frame.hpp"
#include "pubsub/redis_broker.hpp"
#include "redis/link.hpp"
#include "redis/url.hpp"

namespace {

namespace json = boost::json;
using namespace std::chrono_literals;
using synapse::MessageSink;
using synapse::Poster;
using synapse::Task;
using synapse::pubsub::Broker;
using synapse::pubsub::JoinRequest;
using synapse::pubsub::JoinResult;
using synapse::pubsub::PublishResult;
using synapse::pubsub::Recover;
using synapse::pubsub::Subscriber;
using Reach = PublishResult::Reach;

constexpr std::size_t kHistory = 20;           // history_size of every backend
constexpr std::size_t kPresenceBound = 8192;   // max_presence_bytes_per_topic where there is one
constexpr std::size_t kLoops = 3;              // fake I/O threads
constexpr auto kWait = 10s;                    // how long any expected delivery may take

// ------------------------------------------------------------ fake I/O threads

// One I/O thread: tasks run in posting order on a thread of its own.
class Loop {
 public:
  Loop() : thread_([this] { run(); }) {}
  ~Loop() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  Loop(const Loop&) = delete;
  Loop& operator=(const Loop&) = delete;

  void post(Task t) {
    {
      std::lock_guard lock(mu_);
      tasks_.push_back(std::move(t));
    }
    cv_.notify_one();
  }
  Poster poster() {
    return [this](Task t) { post(std::move(t)); };
  }
  std::thread::id id() const { return thread_.get_id(); }

  // Runs `f` on this thread and returns its result. A task that does not
  // finish in 30 s is a hang: abort with a message rather than wait forever.
  template <class F>
  auto call(F f) -> decltype(f()) {
    using R = decltype(f());
    auto done = std::make_shared<std::promise<R>>();
    auto result = done->get_future();
    post([done, f = std::move(f)]() mutable {
      try {
        if constexpr (std::is_void_v<R>) {
          f();
          done->set_value();
        } else {
          done->set_value(f());
        }
      } catch (...) {
        done->set_exception(std::current_exception());
      }
    });
    if (result.wait_for(30s) != std::future_status::ready) {
      std::fprintf(stderr, "broker_contract_test: a task on a fake I/O thread did not finish in 30 s\n");
      std::abort();
    }
    return result.get();
  }
  // Returns once everything posted before it has run.
  void barrier() {
    call([] {});
  }

 private:
  void run() {
    std::unique_lock lock(mu_);
    for (;;) {
      cv_.wait(lock, [this] { return stop_ || !tasks_.empty(); });
      if (tasks_.empty()) return;  // stop_, and nothing left
      Task t = std::move(tasks_.front());
      tasks_.pop_front();
      lock.unlock();
      t();
      lock.lock();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Task> tasks_;
  bool stop_ = false;
  std::thread thread_;  // last: starts once the rest exists
};

// ------------------------------------------------------------ recording sink

// One frame a member received, decoded.
struct Frame {
  std::string event;
  json::value body;
  std::optional<std::uint64_t> offset;  // _meta.offset of a published message
  std::string epoch;                    // _meta.epoch
  bool local = false;                   // _meta.local: reached this node's members only
  bool backlog = false;                 // came in the join's recovered backlog
  std::string raw;
};

Frame decode(std::string_view payload, bool backlog) {
  Frame f;
  f.raw = std::string(payload);
  f.backlog = backlog;
  const json::array arr = json::parse(payload).as_array();
  f.event = std::string(arr.at(3).as_string());
  f.body = arr.at(4);
  if (const auto* obj = f.body.if_object()) {
    if (const auto* meta = obj->if_contains("_meta")) {
      const auto& m = meta->as_object();
      if (const auto* o = m.if_contains("offset")) f.offset = o->to_number<std::uint64_t>();
      if (const auto* e = m.if_contains("epoch")) f.epoch = std::string(e->as_string());
      if (const auto* l = m.if_contains("local")) f.local = l->as_bool();
    }
  }
  return f;
}

// A connection as the broker sees it: records what is delivered (thread-safe)
// and checks it arrives on the member's own thread and never after its leave.
class RecordingSink final : public MessageSink {
 public:
  std::thread::id owner;
  std::function<void()> before_write;  // Broker::make_durable, as every socket write does first
  std::atomic<int> wrong_thread{0};
  std::atomic<int> after_leave{0};
  std::atomic<bool> left{false};

  void send(synapse::wire::Message msg) override {
    const synapse::wire::Message* one = &msg;
    send_batch(&one, 1);
  }
  void send_batch(const synapse::wire::Message* const* msgs, std::size_t n) override {
    if (std::this_thread::get_id() != owner) ++wrong_thread;
    if (left.load()) after_leave += static_cast<int>(n);
    if (before_write) before_write();
    // Only copied here: decoding waits for a reader, so a slow (sanitized)
    // build's I/O threads keep up with the publishers.
    std::lock_guard lock(mu_);
    for (std::size_t i = 0; i < n; ++i) raw_.emplace_back(std::string(msgs[i]->payload()), false);
  }
  void record_backlog(const std::vector<synapse::wire::Message>& backlog) {
    std::lock_guard lock(mu_);
    for (const auto& m : backlog) raw_.emplace_back(std::string(m.payload()), true);
  }
  // Calls `f` with every frame so far, in arrival order.
  template <class F>
  auto with_frames(F f) const {
    std::lock_guard lock(mu_);
    for (std::size_t i = frames_.size(); i < raw_.size(); ++i) frames_.push_back(decode(raw_[i].first, raw_[i].second));
    return f(frames_);
  }
  std::vector<Frame> frames() const {
    return with_frames([](const std::vector<Frame>& f) { return f; });
  }

 private:
  mutable std::mutex mu_;
  std::vector<std::pair<std::string, bool>> raw_;  // payload, from the backlog
  mutable std::vector<Frame> frames_;              // raw_ decoded so far
};

// A topic member: the broker's Subscriber with its sink and where it lives.
struct Member final : Subscriber {
  RecordingSink out;
  std::size_t loop = 0;
  std::uint64_t conn = 0;
  std::string topic;  // joined, and not left yet
  JoinResult joined;

  std::vector<Frame> frames() const { return out.frames(); }
  // The published messages received ("msg" frames), numbered or local.
  std::vector<Frame> messages() const {
    std::vector<Frame> out_msgs;
    for (auto& f : frames()) {
      if (f.event == "msg") out_msgs.push_back(std::move(f));
    }
    return out_msgs;
  }
  std::vector<std::uint64_t> offsets() const {
    std::vector<std::uint64_t> o;
    for (const auto& f : messages()) {
      if (f.offset) o.push_back(*f.offset);
    }
    return o;
  }
  std::vector<Frame> events(std::string_view event) const {
    std::vector<Frame> out_ev;
    for (auto& f : frames()) {
      if (f.event == event) out_ev.push_back(std::move(f));
    }
    return out_ev;
  }
  bool has(std::string_view epoch, std::uint64_t offset) const {
    return out.with_frames([&](const std::vector<Frame>& all) {
      for (auto it = all.rbegin(); it != all.rend(); ++it) {
        if (it->event == "msg" && it->offset == offset && it->epoch == epoch) return true;
      }
      return false;
    });
  }
};

bool wait_until(const std::function<bool()>& pred, std::chrono::milliseconds timeout = kWait) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(2ms);
  }
  return true;
}

std::vector<std::uint64_t> range(std::uint64_t from, std::uint64_t to) {  // from..to inclusive
  std::vector<std::uint64_t> v;
  for (std::uint64_t o = from; o <= to; ++o) v.push_back(o);
  return v;
}

std::vector<std::uint64_t> backlog_offsets(const JoinResult& r) {
  std::vector<std::uint64_t> v;
  for (const auto& m : r.backlog) v.push_back(decode(m.payload(), true).offset.value_or(0));
  return v;
}

// ------------------------------------------------------------ redis-server

std::uint16_t free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof a;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    ::close(fd);
    return 0;
  }
  ::close(fd);
  return ntohs(a.sin_port);
}

// One command on a fresh connection, the first reply line back ("" if none).
std::string redis_command(std::uint16_t port, const std::vector<std::string>& args) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  timeval tv{2, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  std::string reply;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
    std::string req = "*" + std::to_string(args.size()) + "\r\n";
    for (const auto& s : args) req += "$" + std::to_string(s.size()) + "\r\n" + s + "\r\n";
    if (::send(fd, req.data(), req.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(req.size())) {
      char c;
      while (::recv(fd, &c, 1, 0) == 1 && c != '\n') reply.push_back(c);
      if (!reply.empty() && reply.back() == '\r') reply.pop_back();
    }
  }
  ::close(fd);
  return reply;
}

std::string redis_binary() {
  if (const char* env = std::getenv("REDIS_SERVER_BIN"); env && *env) return ::access(env, X_OK) == 0 ? env : "";
  for (const char* p : {"/usr/bin/redis-server", "/usr/local/bin/redis-server"}) {
    if (::access(p, X_OK) == 0) return p;
  }
  return "";
}

// A private redis-server without persistence, started by fork/exec and killed
// by PID; restart() comes back on the same port with an empty data set.
class RedisProcess {
 public:
  explicit RedisProcess(std::filesystem::path dir) : dir_(std::move(dir)) {}
  ~RedisProcess() { kill(); }

  // "" when it answers PING, else why not.
  std::string start() {
    const std::string bin = redis_binary();
    if (bin.empty()) {
      return "redis-server not found (looked at $REDIS_SERVER_BIN, /usr/bin, /usr/local/bin); "
             "the Redis backend's contract cases need it: install it with scripts/install-deps "
             "(Debian package redis-server)";
    }
    if (port_ == 0) port_ = free_port();
    const std::string log = (dir_ / "redis.log").string();
    std::vector<std::string> args{bin,         "--port",       std::to_string(port_), "--bind", "127.0.0.1",
                                  "--save",    "",             "--appendonly",        "no",     "--dir",
                                  dir_.string(), "--daemonize", "no",                  "--logfile", log};
    std::vector<char*> argv;
    for (auto& s : args) argv.push_back(s.data());
    argv.push_back(nullptr);
    pid_ = ::fork();
    if (pid_ == 0) {
      const int devnull = ::open("/dev/null", O_RDWR);
      if (devnull >= 0) {
        ::dup2(devnull, 0);
        ::dup2(devnull, 1);
        ::dup2(devnull, 2);
      }
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    if (pid_ < 0) return "fork failed";
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    while (redis_command(port_, {"PING"}) != "+PONG") {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return "redis-server exited at start; its log:\n" + read_log();
      }
      if (std::chrono::steady_clock::now() > deadline) {
        kill();
        return "redis-server did not answer PING on port " + std::to_string(port_) + " within 10 s:\n" + read_log();
      }
      std::this_thread::sleep_for(10ms);
    }
    return "";
  }
  void kill() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGCONT);  // a stopped process dies of SIGKILL too, but be plain about it
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }
  void signal(int sig) const {
    if (pid_ > 0) ::kill(pid_, sig);
  }
  std::string command(const std::vector<std::string>& args) const { return redis_command(port_, args); }
  std::uint16_t port() const { return port_; }

 private:
  std::string read_log() const {
    std::ifstream in(dir_ / "redis.log");
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

  std::filesystem::path dir_;
  std::uint16_t port_ = 0;
  pid_t pid_ = -1;
};

// ------------------------------------------------------------ backends

// How a backend legitimately differs; every case that depends on it branches
// on one of these, never on the backend's name.
struct Traits {
  // A node restart (and a crash) keeps each topic's epoch, offsets and
  // recoverable window: disk history, or Redis.
  bool history_survives_restart = false;
  // A topic's presence has a byte bound (presence_full). The cluster's has
  // none yet (docs/protocol.md §9).
  bool presence_bounded = false;
  // The history lives in a separate process that can be lost and come back
  // (Redis): data loss starts a new epoch, members get phx_gap, publishes
  // during an outage are Reach::local or Reach::unknown.
  bool external_backend = false;
};

class Backend {
 public:
  virtual ~Backend() = default;
  // "" when ready, else why it could not start.
  virtual std::string start() = 0;
  virtual Broker& broker() = 0;
  // The node goes away (cleanly: every loop drained, the broker destroyed) ...
  virtual void stop_node() = 0;
  // ... and a new one starts on the same backend and the same I/O threads.
  virtual void start_node() = 0;
  // In a forked child: a node of this backend of its own (no I/O threads:
  // it only publishes). The child exits without any cleanup.
  virtual Broker& child_node() = 0;
  virtual bool backend_up() { return true; }
  // How many times the node's link to the backend came back.
  virtual std::uint64_t reconnects() { return 0; }
  virtual RedisProcess* redis() { return nullptr; }
};

struct Env {
  std::vector<Loop*> loops;
  synapse::metrics::Metrics& metrics;
  std::filesystem::path dir;  // a private temp directory

  std::vector<Poster> posters() const {
    std::vector<Poster> p;
    for (auto* l : loops) p.push_back(l->poster());
    return p;
  }
  void quiesce() const {
    for (auto* l : loops) l->barrier();
  }
};

synapse::pubsub::BrokerOptions local_options() {
  synapse::pubsub::BrokerOptions o;
  o.history_size = kHistory;
  o.max_presence_bytes_per_topic = kPresenceBound;
  return o;
}

class LocalBackend final : public Backend {
 public:
  LocalBackend(Env& env, bool disk) : env_(env), disk_(disk) {}
  ~LocalBackend() override { stop_node(); }

  std::string start() override {
    start_node();
    return "";
  }
  Broker& broker() override { return *broker_; }
  void stop_node() override {
    env_.quiesce();  // no drain task of the old Fanout may run after it is gone
    broker_.reset();
    log_.reset();
    child_broker_.reset();
    child_log_.reset();
  }
  void start_node() override {
    auto o = local_options();
    if (disk_) {
      log_ = std::make_unique<synapse::pubsub::HistoryLog>(path());
      o.log = log_.get();
    }
    broker_ = std::make_unique<synapse::pubsub::LocalBroker>(o, env_.posters(), env_.metrics);
  }
  Broker& child_node() override {
    auto o = local_options();
    if (disk_) {
      child_log_ = std::make_unique<synapse::pubsub::HistoryLog>(path());
      o.log = child_log_.get();
    }
    child_broker_ = std::make_unique<synapse::pubsub::LocalBroker>(o, std::vector<Poster>{}, env_.metrics);
    return *child_broker_;
  }

 private:
  std::string path() const { return (env_.dir / "history.db").string(); }

  Env& env_;
  bool disk_;
  std::unique_ptr<synapse::pubsub::HistoryLog> log_, child_log_;
  std::unique_ptr<synapse::pubsub::LocalBroker> broker_, child_broker_;
};

// A cluster node, wired as main.cpp wires it: the link's handlers call the
// broker, the link starts, the node registers.
struct RedisNode {
  std::unique_ptr<synapse::redis::Link> link;
  std::unique_ptr<synapse::pubsub::RedisBroker> broker;

  std::string start(std::uint16_t port, const std::string& node_id, std::vector<Poster> posters,
                    synapse::metrics::Metrics& metrics) {
    synapse::redis::Url url;
    url.host = "127.0.0.1";
    url.port = port;
    synapse::pubsub::RedisBrokerOptions o;
    o.node_id = node_id;
    o.prefix = synapse::pubsub::redis_prefix(0);
    o.history_size = kHistory;
    o.call_timeout = 1000ms;
    link = std::make_unique<synapse::redis::Link>(url, "synapse:" + node_id);
    broker = std::make_unique<synapse::pubsub::RedisBroker>(o, *link, std::move(posters), metrics);
    auto* b = broker.get();
    link->set_handlers({[b](const std::string& channel, const std::string& payload) { b->on_message(channel, payload); },
                        [b] { b->on_up(); }, [b] { b->on_down(); }});
    const std::string err = link->start(5s);
    if (!err.empty()) return "the link to redis-server did not start: " + err;
    if (!broker->register_node()) return "the node could not register in Redis";
    return "";
  }
  // The link first: nothing calls the broker once it is stopped.
  void stop() {
    if (link) link->stop();
  }
};

class RedisBackend final : public Backend {
 public:
  explicit RedisBackend(Env& env) : env_(env), redis_(env.dir) {}
  ~RedisBackend() override { stop_node(); }

  std::string start() override {
    if (std::string err = redis_.start(); !err.empty()) return err;
    return start_node_checked();
  }
  Broker& broker() override { return *node_.broker; }
  void stop_node() override {
    node_.stop();
    env_.quiesce();
    node_.broker.reset();
    node_.link.reset();
  }
  void start_node() override {
    const std::string err = start_node_checked();
    if (!err.empty()) ADD_FAILURE() << err;
  }
  Broker& child_node() override {
    // A new process is a new node (main.cpp gives each start a fresh id).
    const std::string err = child_.start(redis_.port(), "contract-child", {}, env_.metrics);
    if (!err.empty()) ::_exit(3);
    return *child_.broker;
  }
  bool backend_up() override { return node_.link && node_.link->up(); }
  std::uint64_t reconnects() override { return node_.link ? node_.link->reconnects() : 0; }
  RedisProcess* redis() override { return &redis_; }

 private:
  std::string start_node_checked() {
    return node_.start(redis_.port(), "contract-" + std::to_string(++starts_), env_.posters(), env_.metrics);
  }

  Env& env_;
  RedisProcess redis_;
  RedisNode node_, child_;
  int starts_ = 0;
};

struct BackendSpec {
  const char* name;
  Traits traits;
  std::function<std::unique_ptr<Backend>(Env&)> make;
};

std::ostream& operator<<(std::ostream& os, const BackendSpec& s) { return os << s.name; }

const BackendSpec kLocalMemory{"LocalMemory", Traits{false, true, false},
                               [](Env& e) { return std::make_unique<LocalBackend>(e, false); }};
const BackendSpec kLocalDisk{"LocalDisk", Traits{true, true, false},
                             [](Env& e) { return std::make_unique<LocalBackend>(e, true); }};
const BackendSpec kRedis{"Redis", Traits{true, false, true},
                         [](Env& e) { return std::make_unique<RedisBackend>(e); }};

// ------------------------------------------------------------ the fixture

struct JoinSpec {
  std::string topic;
  std::string agent = "agent";
  bool presence = false;
  bool tracked = true;
  json::object meta;
  std::optional<Recover> recover;
};

class ContractTest : public ::testing::TestWithParam<BackendSpec> {
 protected:
  void SetUp() override {
    for (std::size_t i = 0; i < kLoops; ++i) loops_.push_back(std::make_unique<Loop>());
    static std::atomic<int> n{0};
    dir_ = std::filesystem::temp_directory_path() /
           ("synapse-contract-" + std::to_string(::getpid()) + "-" + std::to_string(n++));
    std::filesystem::create_directories(dir_);
    std::vector<Loop*> raw;
    for (auto& l : loops_) raw.push_back(l.get());
    env_ = std::make_unique<Env>(Env{raw, metrics_, dir_});
    backend_ = GetParam().make(*env_);
    const std::string err = backend_->start();
    ASSERT_TRUE(err.empty()) << "the " << GetParam().name << " backend did not start: " << err;
  }
  void TearDown() override {
    // The node goes first (no more deliveries), then the members it pointed at.
    if (backend_) backend_->stop_node();
    for (auto& m : members_) {
      EXPECT_EQ(m->out.wrong_thread.load(), 0) << "a delivery arrived off the member's I/O thread";
      EXPECT_EQ(m->out.after_leave.load(), 0) << "a delivery arrived after the member's leave returned";
    }
    members_.clear();
    backend_.reset();
    loops_.clear();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  const Traits& traits() const { return GetParam().traits; }
  Broker& broker() { return backend_->broker(); }

  Member& member(std::size_t loop) {
    auto m = std::make_unique<Member>();
    m->sink = &m->out;
    m->loop = loop % kLoops;
    m->out.owner = loops_[m->loop]->id();
    m->out.before_write = [this] { backend_->broker().make_durable(); };
    std::lock_guard lock(members_mu_);
    m->conn = ++next_conn_;
    members_.push_back(std::move(m));
    return *members_.back();
  }

  // Every join of this file goes through here: on the member's thread, as a
  // channel joins; the recovered backlog is "sent" to the member right away,
  // in the same task, as the channel sends it before any live delivery.
  JoinResult join(Member& m, const JoinSpec& s) {
    return loops_[m.loop]->call([this, &m, &s] {
      JoinRequest req;
      req.topic = s.topic;
      req.thread = m.loop;
      req.connection_id = m.conn;
      req.agent_id = s.agent;
      req.presence = s.presence;
      req.tracked = s.tracked;
      req.meta = s.meta;
      req.recover = s.recover;
      JoinResult r = broker().join(m, req);
      if (!r.presence_full) {
        m.topic = s.topic;
        m.joined = r;
        m.out.record_backlog(r.backlog);
      }
      return r;
    });
  }
  JoinResult join(Member& m, const std::string& topic, std::optional<Recover> recover = std::nullopt) {
    JoinSpec s;
    s.topic = topic;
    s.recover = std::move(recover);
    return join(m, s);
  }
  // On the member's thread; nothing may reach it once this returns.
  void leave(Member& m) {
    loops_[m.loop]->call([this, &m] {
      broker().leave(m, m.topic);
      m.out.left = true;
      m.topic.clear();
    });
  }
  // The node restarts: members are gone with it (their connections closed).
  void restart_node() {
    backend_->stop_node();
    for (auto& m : members_) m->topic.clear();
    backend_->start_node();
  }

  static std::string body(int publisher, int i) {
    return "{\"p\":" + std::to_string(publisher) + ",\"i\":" + std::to_string(i) + "}";
  }
  PublishResult publish(const std::string& topic, int publisher, int i, std::uint64_t exclude = 0) {
    return broker().publish(topic, "msg", body(publisher, i), false, "tester", exclude);
  }
  // A burst on `topic` from this thread; all must be numbered.
  std::vector<PublishResult> publish_n(const std::string& topic, int n, int publisher = 0) {
    std::vector<PublishResult> out;
    for (int i = 0; i < n; ++i) {
      out.push_back(publish(topic, publisher, i));
      EXPECT_EQ(out.back().reach, Reach::all);
    }
    return out;
  }
  bool wait_for_offset(const Member& m, const std::string& epoch, std::uint64_t offset) {
    return wait_until([&] { return m.has(epoch, offset); });
  }

  std::vector<std::unique_ptr<Loop>> loops_;
  synapse::metrics::Metrics metrics_;
  std::filesystem::path dir_;
  std::unique_ptr<Env> env_;
  std::unique_ptr<Backend> backend_;
  std::mutex members_mu_;
  std::vector<std::unique_ptr<Member>> members_;
  std::uint64_t next_conn_ = 1000;
};

// Stops and joins a background publisher however the case ends (a failed
// ASSERT returns early).
struct StopAndJoin {
  std::atomic<bool>& stop;
  std::thread& thread;
  ~StopAndJoin() {
    stop = true;
    if (thread.joinable()) thread.join();
  }
};

// (p, i) of a published message, from its payload.
std::pair<int, int> origin(const Frame& f) {
  const auto& o = f.body.as_object();
  return {static_cast<int>(o.at("p").as_int64()), static_cast<int>(o.at("i").as_int64())};
}

// ------------------------------------------------------------ ordering

// N publishes from several threads (half blocking, half through
// publish_async, as the channel uses it) reach every member in offset order:
// offsets strictly increasing by 1, none lost or duplicated, and each
// publisher's own publishes numbered in the order it made them.
TEST_P(ContractTest, PerTopicOrderingFromConcurrentPublishers) {
  constexpr int kPublishers = 4, kEach = 150;
  const std::string topic = "room:order";
  std::vector<Member*> ms;
  for (std::size_t i = 0; i < 6; ++i) ms.push_back(&member(i));
  for (auto* m : ms) join(*m, topic);
  const std::uint64_t base = ms[0]->joined.offset;
  for (auto* m : ms) ASSERT_EQ(m->joined.offset, base) << "no publish yet: every join reads the same offset";

  std::vector<std::vector<PublishResult>> results(kPublishers);
  std::vector<std::thread> threads;
  for (int p = 0; p < kPublishers; ++p) {
    threads.emplace_back([&, p] {
      auto& mine = results[static_cast<std::size_t>(p)];
      if (p % 2 == 0) {
        for (int i = 0; i < kEach; ++i) mine.push_back(publish(topic, p, i));
        return;
      }
      // Pipelined: every publish issued before the first is confirmed. The
      // state is shared with the callbacks, which may outlive a failed wait.
      struct Pending {
        std::mutex mu;
        std::condition_variable cv;
        std::vector<std::optional<PublishResult>> got = std::vector<std::optional<PublishResult>>(kEach);
        int done = 0;
      };
      auto st = std::make_shared<Pending>();
      for (int i = 0; i < kEach; ++i) {
        broker().publish_async(topic, "msg", body(p, i), false, "tester", 0, [st, i](PublishResult r) {
          std::lock_guard lock(st->mu);
          st->got[static_cast<std::size_t>(i)] = std::move(r);
          ++st->done;
          st->cv.notify_all();
        });
      }
      std::unique_lock lock(st->mu);
      ASSERT_TRUE(st->cv.wait_for(lock, kWait, [&] { return st->done == kEach; })) << "publish_async never confirmed";
      for (auto& r : st->got) mine.push_back(*r);
    });
  }
  for (auto& t : threads) t.join();

  std::map<std::uint64_t, std::pair<int, int>> by_offset;
  std::string epoch;
  for (int p = 0; p < kPublishers; ++p) {
    const auto& mine = results[static_cast<std::size_t>(p)];
    ASSERT_EQ(mine.size(), static_cast<std::size_t>(kEach));
    for (int i = 0; i < kEach; ++i) {
      const auto& r = mine[static_cast<std::size_t>(i)];
      ASSERT_EQ(r.reach, Reach::all);
      if (epoch.empty()) epoch = r.epoch;
      EXPECT_EQ(r.epoch, epoch);
      if (i > 0) {
        EXPECT_GT(r.offset, mine[static_cast<std::size_t>(i - 1)].offset) << "publisher " << p;
      }
      EXPECT_TRUE(by_offset.emplace(r.offset, std::make_pair(p, i)).second) << "offset " << r.offset << " twice";
    }
  }
  const std::uint64_t last = base + kPublishers * kEach;
  ASSERT_EQ(by_offset.begin()->first, base + 1);
  ASSERT_EQ(by_offset.rbegin()->first, last);

  for (auto* m : ms) {
    ASSERT_TRUE(wait_for_offset(*m, epoch, last)) << "member " << m->conn << " never got offset " << last;
    const auto msgs = m->messages();
    ASSERT_EQ(msgs.size(), by_offset.size()) << "member " << m->conn;
    for (std::size_t k = 0; k < msgs.size(); ++k) {
      ASSERT_EQ(msgs[k].offset, base + 1 + k) << "member " << m->conn << ", message " << k;
      EXPECT_EQ(msgs[k].epoch, epoch);
      EXPECT_EQ(origin(msgs[k]), by_offset[base + 1 + k]) << "offset " << base + 1 + k << " carries another message";
    }
  }
}

// ------------------------------------------------------------ exactly once

// Publishers run while members join (some recovering from a recent offset):
// each member receives exactly the messages after its position (its recover
// offset when recovered, else its join offset), each once, in order: the
// backlog and the live stream meet without a gap or an overlap.
TEST_P(ContractTest, ExactlyOnceAcrossJoinsRacingPublishes) {
  constexpr int kPublishers = 3, kJoiners = 3, kJoinsEach = 10;
  const std::string topic = "room:race";
  Member& anchor = member(0);  // makes the topic and its epoch exist before the race
  join(anchor, topic);
  const auto first = publish(topic, 9, 0);
  const std::string epoch = first.epoch;
  std::atomic<std::uint64_t> latest{first.offset};
  std::atomic<int> publishes{0};

  // The publishers run until every joiner is done (bounded, should the
  // joins be slow).
  std::atomic<bool> go{false}, stop{false};
  std::vector<std::thread> publishers;
  for (int p = 0; p < kPublishers; ++p) {
    publishers.emplace_back([&, p] {
      while (!go) std::this_thread::yield();
      for (int i = 0; !stop && i < 3000; ++i) {
        const auto r = publish(topic, p, i);
        EXPECT_EQ(r.reach, Reach::all);
        ++publishes;
        std::uint64_t seen = latest.load();
        while (r.offset > seen && !latest.compare_exchange_weak(seen, r.offset)) {
        }
        std::this_thread::sleep_for(100us);
      }
    });
  }
  std::vector<Member*> joined;
  std::mutex joined_mu;
  std::vector<std::optional<Recover>> asked(kJoiners * kJoinsEach);
  std::vector<std::thread> joiners;
  for (int j = 0; j < kJoiners; ++j) {
    joiners.emplace_back([&, j] {
      std::minstd_rand rng(static_cast<unsigned>(j + 1));
      while (!go) std::this_thread::yield();
      for (int k = 0; k < kJoinsEach; ++k) {
        std::this_thread::sleep_for(std::chrono::microseconds(rng() % 2000));
        Member* m = nullptr;
        {
          std::lock_guard lock(joined_mu);
          m = &member(static_cast<std::size_t>(j));
        }
        std::optional<Recover> rec;
        if (k % 2 == 1) {
          // Somewhere near the head: inside the window or (sometimes) past it.
          const std::uint64_t now = latest.load();
          const std::uint64_t back = rng() % (kHistory + 10);
          rec = Recover{now > back ? now - back : 0, epoch};
        }
        join(*m, topic, rec);
        std::lock_guard lock(joined_mu);
        asked[static_cast<std::size_t>(joined.size())] = rec;
        joined.push_back(m);
      }
    });
  }
  go = true;
  for (auto& t : joiners) t.join();
  stop = true;
  for (auto& t : publishers) t.join();
  // One more, after the race: every member's stream ends with it.
  const auto marker = publish(topic, 9, 1);
  const std::uint64_t last = marker.offset;
  ASSERT_EQ(last, first.offset + static_cast<std::uint64_t>(publishes.load()) + 1) << "an offset was skipped or reused";
  ASSERT_EQ(joined.size(), static_cast<std::size_t>(kJoiners * kJoinsEach));
  int recovered = 0, raced = 0;
  for (std::size_t i = 0; i < joined.size(); ++i) {
    Member& m = *joined[i];
    ASSERT_TRUE(wait_for_offset(m, epoch, last)) << "member " << m.conn << " never got " << last;
    EXPECT_EQ(m.joined.epoch, epoch);
    std::uint64_t from = m.joined.offset;
    if (asked[i] && m.joined.recovered) {
      from = asked[i]->offset;
      ++recovered;
      EXPECT_EQ(backlog_offsets(m.joined), range(from + 1, m.joined.offset)) << "member " << m.conn;
    } else {
      EXPECT_TRUE(m.joined.backlog.empty());
      if (asked[i]) {
        // Not recovered: only when the position was past the window.
        EXPECT_LT(asked[i]->offset + kHistory, m.joined.offset) << "member " << m.conn << " was refused recovery";
      }
    }
    raced += m.joined.offset + 1 < last;  // publishes went on after this join
    EXPECT_EQ(m.offsets(), range(from + 1, last)) << "member " << m.conn << " (join offset " << m.joined.offset
                                                  << ", recovered " << m.joined.recovered << ")";
  }
  EXPECT_GT(recovered, 0) << "no joiner recovered: the race did not test the backlog/live boundary";
  EXPECT_GT(raced, kJoiners * kJoinsEach / 2) << "most joins did not race a publish";
  ASSERT_TRUE(wait_for_offset(anchor, epoch, last));
  EXPECT_EQ(anchor.offsets(), range(anchor.joined.offset + 1, last));
}

// ------------------------------------------------------------ recovery

// For every position k of the topic, a join that recovers from {k, epoch}
// gets exactly k+1..latest in its backlog when k is within the window (the
// window holds history_size messages: k >= latest - history_size), then the
// live messages; a position older than the window, past the head, or of
// another epoch gives recovered=false and replays nothing (protocol.md §9:
// "recovered: false replays nothing, even when part of the history is still
// there").
TEST_P(ContractTest, RecoveryFromEveryPosition) {
  const std::string topic = "room:recover";
  const auto published = publish_n(topic, static_cast<int>(kHistory) + 5);
  const std::string epoch = published.back().epoch;
  const std::uint64_t latest = published.back().offset;
  ASSERT_GE(latest, kHistory + 5);

  struct Case {
    Member* m;
    std::optional<Recover> rec;
    bool expect_recovered;
    std::uint64_t from;  // the first offset it must get
  };
  std::vector<Case> cases;
  for (std::uint64_t k = 0; k <= latest + 1; ++k) {
    const bool in_window = k <= latest && k + kHistory >= latest;
    cases.push_back({&member(k), Recover{k, epoch}, in_window, in_window ? k + 1 : latest + 1});
  }
  cases.push_back({&member(0), Recover{latest - 2, "another-epoch"}, false, latest + 1});
  cases.push_back({&member(1), std::nullopt, false, latest + 1});

  for (auto& c : cases) {
    const auto r = join(*c.m, topic, c.rec);
    const std::string what = c.rec ? "recover from " + std::to_string(c.rec->offset) + " of " + c.rec->epoch : "no recover";
    EXPECT_EQ(r.offset, latest) << what;
    EXPECT_EQ(r.epoch, epoch) << what;
    EXPECT_EQ(r.recovered, c.expect_recovered) << what;
    EXPECT_EQ(backlog_offsets(r), c.expect_recovered ? range(c.from, latest) : std::vector<std::uint64_t>{}) << what;
  }
  const auto live = publish_n(topic, 3);
  ASSERT_EQ(live.back().offset, latest + 3);
  for (auto& c : cases) {
    ASSERT_TRUE(wait_for_offset(*c.m, epoch, latest + 3));
    EXPECT_EQ(c.m->offsets(), range(c.from, latest + 3))
        << (c.rec ? "recover from " + std::to_string(c.rec->offset) : std::string("no recover"));
    // The backlog is exactly the frames published, byte for byte.
    for (const auto& f : c.m->frames()) {
      if (f.backlog) {
        ASSERT_TRUE(f.offset);
        const auto& [p, i] = origin(f);
        EXPECT_EQ(p, 0);
        EXPECT_EQ(static_cast<std::uint64_t>(i) + published.front().offset, *f.offset);
      }
    }
  }
}

// ------------------------------------------------------------ epochs

// A node restart: where the history survives it (disk, Redis) the topic keeps
// its epoch and offsets and a recover is exact; where it does not (memory),
// the topic comes back under a new epoch with offsets from 1, and the old
// position gives recovered=false.
TEST_P(ContractTest, EpochAcrossANodeRestart) {
  const std::string topic = "room:epoch";
  Member& before = member(0);
  join(before, topic);
  const auto published = publish_n(topic, 5);
  const std::string epoch = published.back().epoch;
  const std::uint64_t latest = published.back().offset;
  ASSERT_TRUE(wait_for_offset(before, epoch, latest));

  restart_node();

  Member& after = member(1);
  const auto r = join(after, topic, Recover{latest - 2, epoch});
  const auto next = publish_n(topic, 1).back();
  if (traits().history_survives_restart) {
    EXPECT_EQ(r.epoch, epoch);
    EXPECT_EQ(r.offset, latest);
    EXPECT_TRUE(r.recovered);
    EXPECT_EQ(backlog_offsets(r), range(latest - 1, latest));
    EXPECT_EQ(next.epoch, epoch);
    EXPECT_EQ(next.offset, latest + 1) << "an offset was given out twice across the restart";
    ASSERT_TRUE(wait_for_offset(after, epoch, latest + 1));
    EXPECT_EQ(after.offsets(), range(latest - 1, latest + 1));
  } else {
    EXPECT_NE(r.epoch, epoch);
    EXPECT_EQ(r.offset, 0u);
    EXPECT_FALSE(r.recovered);
    EXPECT_TRUE(r.backlog.empty());
    EXPECT_EQ(next.epoch, r.epoch);
    EXPECT_EQ(next.offset, 1u);
    ASSERT_TRUE(wait_for_offset(after, r.epoch, 1));
    EXPECT_EQ(after.offsets(), range(1, 1));
  }
}

// A node that dies (SIGKILL, no cleanup of any kind) after acknowledging
// publishes: what a backend that survives restarts acknowledged comes back
// exactly, and offsets continue after the last one kept; without such a
// backend the topic starts a new epoch. A publish is acknowledged once
// make_durable() returned (the socket write of its ack calls it first);
// the ones after the last make_durable may or may not survive (never sent to
// anyone), but no offset is ever both recovered and given out again.
TEST_P(ContractTest, AcknowledgedPublishesSurviveANodeCrash) {
  constexpr int kAcked = 12, kUnacked = 3;
  const std::string topic = "room:crash";
  backend_->stop_node();
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    // The child: no gtest assertions, only its exit code and the pipe.
    ::close(fds[0]);
    Broker& b = backend_->child_node();
    std::string epoch;
    for (int i = 0; i < kAcked; ++i) {
      const auto r = b.publish(topic, "msg", body(0, i), false, "tester", 0);
      if (r.reach != Reach::all) ::_exit(4);
      b.make_durable();
      epoch = r.epoch;
    }
    const std::string line = epoch + "\n";
    if (::write(fds[1], line.data(), line.size()) != static_cast<ssize_t>(line.size())) ::_exit(5);
    for (int i = kAcked; i < kAcked + kUnacked; ++i) b.publish(topic, "msg", body(0, i), false, "tester", 0);
    ::kill(::getpid(), SIGKILL);
    ::_exit(6);
  }
  ::close(fds[1]);
  std::string epoch;
  char c;
  while (::read(fds[0], &c, 1) == 1 && c != '\n') epoch.push_back(c);
  ::close(fds[0]);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
      << "the child node did not die of SIGKILL (exit " << (WIFEXITED(status) ? WEXITSTATUS(status) : -1) << ")";
  ASSERT_FALSE(epoch.empty());
  backend_->start_node();

  Member& m = member(0);
  const auto r = join(m, topic, Recover{0, epoch});
  if (traits().history_survives_restart) {
    EXPECT_EQ(r.epoch, epoch);
    EXPECT_TRUE(r.recovered);
    EXPECT_GE(r.offset, static_cast<std::uint64_t>(kAcked)) << "an acknowledged publish was lost";
    EXPECT_LE(r.offset, static_cast<std::uint64_t>(kAcked + kUnacked));
    EXPECT_EQ(backlog_offsets(r), range(1, r.offset));
    const auto next = publish_n(topic, 1).back();
    EXPECT_EQ(next.epoch, epoch);
    EXPECT_EQ(next.offset, r.offset + 1);
  } else {
    EXPECT_NE(r.epoch, epoch);
    EXPECT_FALSE(r.recovered);
    EXPECT_TRUE(r.backlog.empty());
    EXPECT_EQ(r.offset, 0u);
  }
}

// The backend loses its data while members are joined (Redis: FLUSHALL): the
// next publish starts a new epoch from offset 1, and each member is told
// before it, in order: phx_gap {"epoch": old, "from": last+1, "to": null,
// "next_epoch": new} (protocol.md §9), then the new epoch's messages. A
// recover from the old epoch gives recovered=false.
TEST_P(ContractTest, BackendDataLossStartsANewEpochAndMembersAreTold) {
  if (!traits().external_backend) {
    GTEST_SKIP() << "in-process backend: it loses its data only with the node (EpochAcrossANodeRestart, "
                    "AcknowledgedPublishesSurviveANodeCrash)";
  }
  const std::string topic = "room:flush";
  Member& a = member(0);
  Member& b = member(1);
  join(a, topic);
  join(b, topic);
  const auto before = publish_n(topic, 4);
  const std::string old_epoch = before.back().epoch;
  ASSERT_TRUE(wait_for_offset(a, old_epoch, 4));
  ASSERT_TRUE(wait_for_offset(b, old_epoch, 4));

  ASSERT_EQ(backend_->redis()->command({"FLUSHALL"}), "+OK");
  const auto after = publish_n(topic, 2);
  const std::string new_epoch = after.back().epoch;
  EXPECT_NE(new_epoch, old_epoch);
  EXPECT_EQ(after.front().offset, 1u);
  for (Member* m : {&a, &b}) {
    ASSERT_TRUE(wait_for_offset(*m, new_epoch, 2));
    std::vector<std::string> seen;
    for (const auto& f : m->frames()) {
      if (f.event == "phx_gap") {
        const auto& g = f.body.as_object();
        EXPECT_EQ(g.at("recovered"), json::value(false));
        EXPECT_EQ(g.at("epoch"), json::value(old_epoch));
        EXPECT_EQ(g.at("from"), json::value(5));
        EXPECT_TRUE(g.at("to").is_null());
        EXPECT_EQ(g.at("next_epoch"), json::value(new_epoch));
        seen.push_back("gap");
      } else {
        seen.push_back(f.epoch == old_epoch ? "old" + std::to_string(*f.offset) : "new" + std::to_string(*f.offset));
      }
    }
    EXPECT_EQ(seen, (std::vector<std::string>{"old1", "old2", "old3", "old4", "gap", "new1", "new2"}));
  }
  Member& late = member(2);
  const auto r = join(late, topic, Recover{2, old_epoch});
  EXPECT_FALSE(r.recovered);
  EXPECT_TRUE(r.backlog.empty());
  EXPECT_EQ(r.epoch, new_epoch);
  EXPECT_EQ(r.offset, 2u);

  // The data is lost again while this node has no member of the topic; a
  // member joins the epoch that followed, then the link drops and returns
  // (data kept): the member gets only what follows its join, not the new
  // epoch's messages from offset 1 again.
  leave(a);
  leave(b);
  leave(late);
  ASSERT_EQ(backend_->redis()->command({"FLUSHALL"}), "+OK");
  const auto third = publish_n(topic, 3);
  Member& d = member(0);
  const auto rd = join(d, topic);
  EXPECT_EQ(rd.epoch, third.back().epoch);
  EXPECT_EQ(rd.offset, 3u);
  const std::uint64_t reconnects = backend_->reconnects();
  EXPECT_NE(backend_->redis()->command({"CLIENT", "KILL", "TYPE", "pubsub"}), "");
  ASSERT_TRUE(wait_until([&] { return backend_->reconnects() > reconnects && backend_->backend_up(); }));
  const auto next = publish_n(topic, 1).back();
  ASSERT_TRUE(wait_for_offset(d, next.epoch, next.offset));
  EXPECT_EQ(d.offsets(), range(4, 4)) << "messages from before the join were delivered after the reconnect";
  EXPECT_TRUE(d.events("phx_gap").empty());
}

// ------------------------------------------------------------ presence

struct PresenceView {
  std::map<std::string, std::set<std::string>> refs;  // agent -> phx_refs

  static std::set<std::string> refs_of(const json::value& entry) {
    std::set<std::string> out;
    for (const auto& meta : entry.at("metas").as_array()) out.insert(std::string(meta.at("phx_ref").as_string()));
    return out;
  }
  static PresenceView state(const json::value& v) {
    PresenceView p;
    for (const auto& [agent, entry] : v.as_object()) p.refs[std::string(agent)] = refs_of(entry);
    return p;
  }
  // phoenix.js syncDiff: joins add metas by phx_ref, leaves remove them.
  void apply(const json::value& diff) {
    for (const auto& [agent, entry] : diff.at("joins").as_object()) {
      for (const auto& r : refs_of(entry)) refs[std::string(agent)].insert(r);
    }
    for (const auto& [agent, entry] : diff.at("leaves").as_object()) {
      auto it = refs.find(std::string(agent));
      if (it == refs.end()) continue;
      for (const auto& r : refs_of(entry)) it->second.erase(r);
      if (it->second.empty()) refs.erase(it);
    }
  }
  std::set<std::string> agents() const {
    std::set<std::string> out;
    for (const auto& [a, r] : refs) out.insert(a);
    return out;
  }
};

std::set<std::string> agents_in(const json::value& v) {
  std::set<std::string> out;
  for (const auto& [a, e] : v.as_object()) out.insert(std::string(a));
  return out;
}

// Tracked members appear in presence_state and, after tick(), in one
// coalesced presence_diff per interval, in order; a member's view (its state
// plus its diffs) ends equal to the topic's presence; an untracked member
// (tracked=false: its credential may not appear) receives presence but is
// listed nowhere; a tick without changes sends nothing.
TEST_P(ContractTest, PresenceStateAndCoalescedDiffs) {
  const std::string topic = "room:presence";
  auto spec = [&](std::string agent, bool presence, bool tracked) {
    JoinSpec s;
    s.topic = topic;
    s.agent = std::move(agent);
    s.presence = presence;
    s.tracked = tracked;
    s.meta = json::object{{"who", s.agent}};
    return s;
  };
  Member& alice = member(0);
  const auto ra = join(alice, spec("alice", true, true));
  EXPECT_EQ(agents_in(json::parse(ra.presence_state_json)), (std::set<std::string>{"alice"}))
      << "presence_state holds the joiner's own meta";
  broker().tick();
  ASSERT_TRUE(wait_until([&] { return alice.events("presence_diff").size() == 1; }));

  Member& bob = member(1);         // tracked, does not receive presence
  Member& carol = member(2);       // receives presence, untracked
  const auto rb = join(bob, spec("bob", false, true));
  EXPECT_TRUE(rb.presence_state_json.empty()) << "no presence asked for";
  const auto rc = join(carol, spec("carol", true, false));
  EXPECT_EQ(agents_in(json::parse(rc.presence_state_json)), (std::set<std::string>{"alice", "bob"}));
  EXPECT_EQ(agents_in(json::parse(broker().presence_state(topic))), (std::set<std::string>{"alice", "bob"}));
  broker().tick();
  ASSERT_TRUE(wait_until([&] { return alice.events("presence_diff").size() == 2; }));
  ASSERT_TRUE(wait_until([&] { return carol.events("presence_diff").size() == 1; }));

  // Within one interval: dave joins twice and one of his joins leaves again,
  // bob leaves. One diff carries all of it, coalesced.
  Member& dave1 = member(0);
  Member& dave2 = member(1);
  join(dave1, spec("dave", false, true));
  join(dave2, spec("dave", false, true));
  const std::string dave2_ref(dave2.presence_ref.view());
  leave(dave2);
  leave(bob);
  broker().tick();
  ASSERT_TRUE(wait_until([&] { return alice.events("presence_diff").size() == 3; }));
  ASSERT_TRUE(wait_until([&] { return carol.events("presence_diff").size() == 2; }));
  // Nothing changed: nothing sent. A message published after the tick
  // follows anything it queued on every thread.
  broker().tick();
  publish_n(topic, 1);
  ASSERT_TRUE(wait_until([&] { return !alice.messages().empty() && !carol.messages().empty(); }));

  const auto alice_diffs = alice.events("presence_diff");
  const auto carol_diffs = carol.events("presence_diff");
  ASSERT_EQ(alice_diffs.size(), 3u) << "one diff per interval with changes, none without";
  ASSERT_EQ(carol_diffs.size(), 2u) << "a member gets no diff older than its presence_state";
  EXPECT_EQ(agents_in(alice_diffs[0].body.at("joins")), (std::set<std::string>{"alice"}));
  EXPECT_EQ(agents_in(alice_diffs[1].body.at("joins")), (std::set<std::string>{"bob"}));
  const auto& last = alice_diffs[2].body;
  EXPECT_EQ(agents_in(last.at("joins")), (std::set<std::string>{"dave"}));
  EXPECT_EQ(PresenceView::refs_of(last.at("joins").at("dave")), (std::set<std::string>{std::string(dave1.presence_ref.view())}))
      << "dave's second join and its leave cancel out within the interval";
  EXPECT_EQ(agents_in(last.at("leaves")), (std::set<std::string>{"bob"}));
  EXPECT_EQ(carol_diffs[1].raw, alice_diffs[2].raw) << "every presence member gets the same diff";

  // Each presence member's view ends equal to the topic's presence.
  const auto now = PresenceView::state(json::parse(broker().presence_state(topic)));
  EXPECT_EQ(now.agents(), (std::set<std::string>{"alice", "dave"}));
  EXPECT_EQ(now.refs.at("dave"), (std::set<std::string>{std::string(dave1.presence_ref.view())}));
  EXPECT_EQ(now.refs.at("alice"), (std::set<std::string>{std::string(alice.presence_ref.view())}));
  auto view_a = PresenceView::state(json::parse(ra.presence_state_json));
  for (const auto& d : alice_diffs) view_a.apply(d.body);
  EXPECT_EQ(view_a.refs, now.refs);
  auto view_c = PresenceView::state(json::parse(rc.presence_state_json));
  for (const auto& d : carol_diffs) view_c.apply(d.body);
  EXPECT_EQ(view_c.refs, now.refs);

  // The untracked member is listed nowhere.
  for (const auto* text : {&ra.presence_state_json, &rc.presence_state_json}) {
    EXPECT_EQ(text->find("carol"), std::string::npos);
  }
  for (const auto& d : alice_diffs) EXPECT_EQ(d.raw.find("carol"), std::string::npos) << d.raw;
  EXPECT_TRUE(carol.presence_ref.empty());
  EXPECT_EQ(broker().presence_state(topic).find("carol"), std::string::npos);
  EXPECT_FALSE(dave2_ref.empty());
}

// The presence byte bound: where there is one, a tracked join past it is
// refused with presence_full and nothing of it is recorded (no delivery, not
// listed), an untracked join is not counted, and a leave makes room again.
// Where there is none (the cluster), the same joins all succeed.
TEST_P(ContractTest, PresenceFullBound) {
  const std::string topic = "room:full";
  const std::string pad(kPresenceBound / 4, 'x');  // each meta about a quarter of the bound
  auto spec = [&](int i, bool tracked) {
    JoinSpec s;
    s.topic = topic;
    s.agent = "agent" + std::to_string(i);
    s.presence = true;
    s.tracked = tracked;
    s.meta = json::object{{"pad", pad}};
    return s;
  };
  std::vector<Member*> in;
  int refused_at = -1;
  for (int i = 0; i < 8; ++i) {
    Member& m = member(static_cast<std::size_t>(i));
    const auto r = join(m, spec(i, true));
    if (r.presence_full) {
      refused_at = i;
      if (in.empty()) break;
      EXPECT_TRUE(r.epoch.empty());
      EXPECT_TRUE(r.presence_state_json.empty());
      EXPECT_TRUE(r.backlog.empty());
      EXPECT_EQ(m.topic_id, 0u) << "a refused join recorded the member";
      // Nothing of it is recorded: not listed, never delivered to.
      EXPECT_EQ(broker().presence_state(topic).find("agent" + std::to_string(i)), std::string::npos);
      const auto p = publish_n(topic, 1).back();
      ASSERT_TRUE(wait_for_offset(*in.front(), p.epoch, p.offset));
      loops_[m.loop]->barrier();
      EXPECT_TRUE(m.frames().empty());
      break;
    }
    in.push_back(&m);
  }
  if (!traits().presence_bounded) {
    EXPECT_EQ(refused_at, -1) << "this backend has no presence bound (protocol.md §9)";
    return;
  }
  ASSERT_GT(refused_at, 0) << "the bound of " << kPresenceBound << " bytes was never reached";
  EXPECT_EQ(in.size(), static_cast<std::size_t>(refused_at));
  // An untracked member is not counted toward the bound.
  Member& untracked = member(0);
  EXPECT_FALSE(join(untracked, spec(100, false)).presence_full);
  // Still full for tracked ones, until a leave makes room.
  EXPECT_TRUE(join(member(1), spec(101, true)).presence_full);
  leave(*in.back());
  EXPECT_FALSE(join(member(2), spec(102, true)).presence_full);
}

// ------------------------------------------------------------ exclusion, leave

// The publisher's own connection (exclude_connection) does not get its
// publish live, everyone else does, and recovery replays it (protocol.md §9:
// recovery replays every message, the client's own included). After leave()
// returns, nothing more reaches the member, even while publishes race it.
TEST_P(ContractTest, PublisherExclusionAndLeave) {
  const std::string topic = "room:exclude";
  Member& pub = member(0);
  Member& other = member(0);  // same thread as the publisher
  Member& far = member(1);
  for (Member* m : {&pub, &other, &far}) join(*m, topic);
  const std::uint64_t base = pub.joined.offset;
  std::vector<std::uint64_t> own;
  std::string epoch;
  for (int i = 0; i < 6; ++i) {
    const auto r = publish(topic, 0, i, i % 2 == 0 ? pub.conn : 0);
    ASSERT_EQ(r.reach, Reach::all);
    epoch = r.epoch;
    if (i % 2 == 0) own.push_back(r.offset);
  }
  ASSERT_TRUE(wait_for_offset(other, epoch, base + 6));
  ASSERT_TRUE(wait_for_offset(far, epoch, base + 6));
  ASSERT_TRUE(wait_for_offset(pub, epoch, base + 6));
  EXPECT_EQ(pub.offsets(), (std::vector<std::uint64_t>{base + 2, base + 4, base + 6}));
  EXPECT_EQ(other.offsets(), range(base + 1, base + 6));
  EXPECT_EQ(far.offsets(), range(base + 1, base + 6));
  Member& again = member(0);
  const auto r = join(again, topic, Recover{base, epoch});
  ASSERT_TRUE(r.recovered);
  EXPECT_EQ(backlog_offsets(r), range(base + 1, base + 6)) << "recovery replays the member's own publishes";

  // Leave while a publisher runs: deliveries stop the moment leave returns
  // (the sink counts any after it; TearDown asserts none came).
  std::atomic<bool> stop{false};
  std::thread publisher([&] {
    for (int i = 0; !stop && i < 20000; ++i) {
      publish(topic, 1, i);
      std::this_thread::sleep_for(100us);
    }
  });
  StopAndJoin stopper{stop, publisher};
  ASSERT_TRUE(wait_until([&] { return far.offsets().size() > 20; }));
  leave(far);
  leave(other);
  const std::size_t far_count = far.frames().size();
  ASSERT_TRUE(wait_until([&] { return pub.offsets().size() > 40; }));
  stop = true;
  publisher.join();
  const auto p = publish_n(topic, 1).back();
  ASSERT_TRUE(wait_for_offset(pub, p.epoch, p.offset));
  for (auto& l : loops_) l->barrier();
  EXPECT_EQ(far.frames().size(), far_count);
  // The left members' received offsets are still a prefix of the stream, in order.
  const auto fo = far.offsets();
  EXPECT_EQ(fo, range(base + 1, base + fo.size()));
}

// ------------------------------------------------------------ backend loss

// Checks one member's stream after outages: numbered messages strictly in
// order, any hole announced by a phx_gap (never silence), every message
// confirmed by the backend (Reach::all) received once unless a gap names it,
// every Reach::local one received once, flagged local, and a Reach::unknown
// one at most once. Only publishes of groups >= `from_group` (the p of
// body(p, i)) are held against the member: those made after it joined.
void check_stream(const Member& m, const std::map<std::pair<int, int>, PublishResult>& published, int from_group) {
  // A join while the backend was down has no position (offset 0): the
  // member's stream starts wherever its first message or gap puts it.
  bool positioned = m.joined.offset > 0;
  std::string epoch = m.joined.epoch;
  std::uint64_t next = m.joined.offset + 1;
  std::map<std::string, std::vector<std::pair<std::uint64_t, std::uint64_t>>> gaps;  // epoch -> [from, to]
  std::map<std::pair<int, int>, int> got;
  for (const auto& f : m.frames()) {
    if (f.event == "phx_gap") {
      const auto& g = f.body.as_object();
      const std::uint64_t from = g.at("from").to_number<std::uint64_t>();
      std::optional<std::uint64_t> to;
      if (!g.at("to").is_null()) to = g.at("to").to_number<std::uint64_t>();
      EXPECT_EQ(g.at("epoch"), json::value(epoch)) << "member " << m.conn << ": a gap of another epoch";
      if (positioned) {
        EXPECT_EQ(from, next) << "member " << m.conn << ": a gap that does not start at the next offset";
      }
      gaps[epoch].push_back({from, to.value_or(~std::uint64_t{0})});
      if (!to) {
        epoch = std::string(g.at("next_epoch").as_string());
        next = 1;
      } else {
        next = *to + 1;
      }
      positioned = true;
      continue;
    }
    if (f.event != "msg") continue;
    ++got[origin(f)];
    if (f.local) {
      EXPECT_FALSE(f.offset) << "a local message carries an offset";
      continue;
    }
    ASSERT_TRUE(f.offset);
    if (!positioned) {
      epoch = f.epoch;
      next = *f.offset;
      positioned = true;
    }
    EXPECT_EQ(f.epoch, epoch) << "member " << m.conn << ": a new epoch without a phx_gap";
    EXPECT_EQ(*f.offset, next) << "member " << m.conn << ": offset " << *f.offset << " of " << f.epoch
                               << " where " << next << " was due (a silent gap or a duplicate)";
    next = *f.offset + 1;
  }
  for (const auto& [id, r] : published) {
    if (id.first < from_group) continue;
    const int n = got.count(id) ? got.at(id) : 0;
    const std::string what = "member " + std::to_string(m.conn) + ", publish (" + std::to_string(id.first) + "," +
                             std::to_string(id.second) + ")";
    if (r.reach == Reach::unknown) {
      EXPECT_LE(n, 1) << what << ": unconfirmed, and received twice";
    } else if (r.reach == Reach::local) {
      EXPECT_EQ(n, 1) << what << ": local";
    } else {
      bool announced = false;
      for (const auto& [from, to] : gaps[r.epoch]) announced |= r.offset >= from && r.offset <= to;
      EXPECT_EQ(n, announced ? 0 : 1) << what << ": offset " << r.offset << " of " << r.epoch
                                      << (announced ? " (announced as a gap)" : "");
    }
  }
}

// The backend is lost and comes back, twice: its connections are dropped with
// the data kept (CLIENT KILL, while a publisher runs), then it dies and
// restarts empty (SIGKILL, same port, no persistence). Publishes while it is
// unreachable are Reach::local (delivered to this node's members, flagged
// `_meta.local`) or, when the backend never answered, Reach::unknown; a join
// during the outage gets offset 0 and the last epoch seen; after each return
// members get what was missed in order, or a phx_gap for it: never silence.
TEST_P(ContractTest, BackendLossAndReturn) {
  if (!traits().external_backend) {
    GTEST_SKIP() << "in-process backend: nothing to lose but the node itself (AcknowledgedPublishesSurviveANodeCrash)";
  }
  RedisProcess& redis = *backend_->redis();
  const std::string topic = "room:loss";
  Member& a = member(0);
  Member& b = member(1);
  join(a, topic);
  join(b, topic);
  std::map<std::pair<int, int>, PublishResult> published;
  auto note = [&](int p, int i, PublishResult r) { published[{p, i}] = std::move(r); };
  for (int i = 0; i < 3; ++i) note(0, i, publish(topic, 0, i));
  const std::string epoch1 = published.begin()->second.epoch;

  // 1. Connections dropped, data kept, while a publisher runs.
  std::atomic<int> count{0};
  std::atomic<bool> stop{false};
  std::mutex mu;
  std::thread publisher([&] {
    for (int i = 0; !stop && i < 20000; ++i) {
      auto r = publish(topic, 1, i);
      {
        std::lock_guard lock(mu);
        note(1, i, std::move(r));
      }
      ++count;
      std::this_thread::sleep_for(300us);
    }
  });
  StopAndJoin stopper{stop, publisher};
  for (const char* type : {"pubsub", "normal"}) {
    const int at = count + 50;
    ASSERT_TRUE(wait_until([&] { return count > at; }));
    const std::uint64_t reconnects = backend_->reconnects();
    EXPECT_NE(redis.command({"CLIENT", "KILL", "TYPE", type}), "");
    ASSERT_TRUE(wait_until([&] { return backend_->reconnects() > reconnects && backend_->backend_up(); }))
        << "the link did not come back after CLIENT KILL TYPE " << type;
  }
  const int at = count + 50;
  ASSERT_TRUE(wait_until([&] { return count > at; }));
  stop = true;
  publisher.join();
  ASSERT_TRUE(wait_until([&] { return backend_->backend_up(); }));
  note(2, 0, publish(topic, 2, 0));
  const auto marker = published[{2, 0}];
  ASSERT_EQ(marker.reach, Reach::all);
  EXPECT_EQ(marker.epoch, epoch1) << "the data was kept: same epoch";
  ASSERT_TRUE(wait_for_offset(a, epoch1, marker.offset));
  ASSERT_TRUE(wait_for_offset(b, epoch1, marker.offset));

  // 2. The backend dies and comes back empty.
  redis.kill();
  ASSERT_TRUE(wait_until([&] { return !backend_->backend_up(); }));
  Member& c = member(2);
  const auto rc = join(c, topic);
  EXPECT_EQ(rc.offset, 0u) << "a join during the outage has no position";
  EXPECT_EQ(rc.epoch, epoch1) << "it gets the last epoch this node saw";
  for (int i = 0; i < 3; ++i) {
    const auto r = publish(topic, 3, i);
    EXPECT_EQ(r.reach, Reach::local);
    EXPECT_EQ(r.offset, 0u);
    note(3, i, r);
  }
  for (Member* m : {&a, &b, &c}) {
    ASSERT_TRUE(wait_until([&] {
      int n = 0;
      for (const auto& f : m->messages()) n += f.local && origin(f).first == 3;
      return n == 3;
    })) << "member " << m->conn << " did not get the local publishes";
  }
  ASSERT_EQ(redis.start(), "");
  ASSERT_TRUE(wait_until([&] { return backend_->backend_up(); }));
  for (int i = 0; i < 3; ++i) note(4, i, publish(topic, 4, i));
  const auto last = published[{4, 2}];
  ASSERT_EQ(last.reach, Reach::all);
  EXPECT_NE(last.epoch, epoch1) << "Redis came back empty: a new epoch";
  EXPECT_EQ(last.offset, 3u);
  for (Member* m : {&a, &b, &c}) {
    ASSERT_TRUE(wait_for_offset(*m, last.epoch, 3)) << "member " << m->conn;
    check_stream(*m, published, m == &c ? 3 : 0);
  }
  // The members that had a position in the old epoch were told it ended.
  for (Member* m : {&a, &b}) {
    const auto gaps = m->events("phx_gap");
    ASSERT_FALSE(gaps.empty());
    const auto& g = gaps.back().body.as_object();
    EXPECT_TRUE(g.at("to").is_null());
    EXPECT_EQ(g.at("epoch"), json::value(epoch1));
    EXPECT_EQ(g.at("next_epoch"), json::value(last.epoch));
  }
}

// The backend stops answering (SIGSTOP) and resumes with its data: a publish
// sent meanwhile is Reach::unknown (it may run when the backend resumes), the
// link is declared down, publishes are then Reach::local; after the return
// the member gets whatever the backend numbered meanwhile, in order.
TEST_P(ContractTest, BackendPauseAndResume) {
  if (!traits().external_backend) {
    GTEST_SKIP() << "in-process backend: it cannot pause apart from the node";
  }
  RedisProcess& redis = *backend_->redis();
  const std::string topic = "room:pause";
  Member& a = member(0);
  join(a, topic);
  std::map<std::pair<int, int>, PublishResult> published;
  for (int i = 0; i < 3; ++i) published[{0, i}] = publish(topic, 0, i);

  redis.signal(SIGSTOP);
  published[{1, 0}] = publish(topic, 1, 0);
  EXPECT_NE(published[std::make_pair(1, 0)].reach, Reach::all) << "a stopped Redis confirmed a publish";
  ASSERT_TRUE(wait_until([&] { return !backend_->backend_up(); }, 8s)) << "the link never noticed the pause";
  published[{2, 0}] = publish(topic, 2, 0);
  EXPECT_EQ(published[std::make_pair(2, 0)].reach, Reach::local);
  redis.signal(SIGCONT);
  ASSERT_TRUE(wait_until([&] { return backend_->backend_up(); }, 15s)) << "the link never came back";
  published[{3, 0}] = publish(topic, 3, 0);
  const auto last = published[{3, 0}];
  ASSERT_EQ(last.reach, Reach::all);
  EXPECT_EQ(last.epoch, published[std::make_pair(0, 0)].epoch) << "Redis kept its data";
  ASSERT_TRUE(wait_for_offset(a, last.epoch, last.offset));
  check_stream(a, published, 0);
}

// Framing at the delivery edge (issue 18 item 1): the backend stores and
// carries the message body, never a Phoenix frame, and the node's framing of
// that stored body is byte for byte the frame its member received.
TEST_P(ContractTest, TheBackendHoldsMessageBodiesAndTheNodeFramesThem) {
  if (!traits().external_backend) GTEST_SKIP() << "in-process backend: no stored bytes to read from outside";
  const std::string topic = "room:bodies";
  Member& a = member(0);
  join(a, topic);
  const auto sent = publish_n(topic, 1);
  ASSERT_TRUE(wait_for_offset(a, sent[0].epoch, sent[0].offset));
  // The stored entry's m field; newlines as '|', to fit a one-line status reply.
  const std::string script =
      "local e = redis.call('XRANGE', KEYS[1], '-', '+') "
      "return redis.status_reply((string.gsub(e[#e][2][2], '\\n', '|')))";
  std::string stored = backend_->redis()->command({"EVAL", script, "1", "synapse:0:h:" + topic});
  ASSERT_FALSE(stored.empty());
  ASSERT_EQ(stored[0], '+') << stored;
  stored.erase(0, 1);
  for (auto& c : stored) c = c == '|' ? '\n' : c;
  EXPECT_EQ(stored.find("[null,null,"), std::string::npos) << stored;
  EXPECT_EQ(stored.find("_meta"), std::string::npos) << stored;
  EXPECT_EQ(stored.find(sent[0].epoch), std::string::npos) << "the epoch is the stream's, not the body's";
  const auto parts = synapse::pubsub::decode_body(stored);
  ASSERT_TRUE(parts) << stored;
  const auto got = a.messages();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(synapse::pubsub::frame_numbered(topic, *parts, sent[0].epoch, sent[0].offset).payload(), got[0].raw);
}

INSTANTIATE_TEST_SUITE_P(Backends, ContractTest, ::testing::Values(kLocalMemory, kLocalDisk, kRedis),
                         [](const ::testing::TestParamInfo<BackendSpec>& p) { return std::string(p.param.name); });

}  // namespace
