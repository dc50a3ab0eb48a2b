#include "net/admin_backend.hpp"

#include <boost/asio/post.hpp>
#include <spdlog/spdlog.h>

#include <atomic>
#include <mutex>

#include "core/clock.hpp"
#include "net/io_thread.hpp"
#include "net/ws_connection.hpp"

namespace synapse::net {
namespace asio = boost::asio;

ConnectionView Connection::view() const {
  ConnectionView v;
  v.id = id_;
  v.peer = peer_.to_string();
  v.ip = peer_.ip();
  if (const channels::Session* s = session()) {
    const auto& p = s->principal();
    v.key_id = p.key_id;
    v.agent_id = p.agent_id;
    v.tenant = p.tenant;
    v.via_token = p.via_token;
    v.topics = s->topics();
  }
  v.opened_at_ms = unix_ms() - (mono_ms() - opened_ms_);
  v.thread = thread_.index;
  return v;
}

bool Connection::admin_unsubscribe(std::string_view topic) {
  return state_ == State::open && has_session_ && session_.unsubscribe(topic);
}

namespace {

// Runs `per_thread(thread, partial)` on every I/O thread; the last one to
// finish hands the merged result to `done`. T is merged with `merge`.
template <typename T, typename PerThread, typename Merge>
void gather(IoThreads& threads, PerThread per_thread, Merge merge, std::function<void(T)> done) {
  struct State {
    std::mutex mu;
    T result{};
    std::atomic<std::size_t> left;
    std::function<void(T)> done;
  };
  auto st = std::make_shared<State>();
  st->left = threads.size();
  st->done = std::move(done);
  for (std::size_t i = 0; i < threads.size(); ++i) {
    IoThread& t = threads[i];
    asio::post(t.ioc, [&t, st, per_thread, merge] {
      T part = per_thread(t);
      {
        std::lock_guard lock(st->mu);
        merge(st->result, std::move(part));
      }
      if (st->left.fetch_sub(1) == 1) st->done(std::move(st->result));
    });
  }
}

class ThreadsBackend final : public AdminBackend {
 public:
  explicit ThreadsBackend(IoThreads& threads) : threads_(threads) {}

  void connections(std::function<void(std::vector<ConnectionView>)> done) override {
    gather<std::vector<ConnectionView>>(
        threads_,
        [](IoThread& t) {
          std::vector<ConnectionView> out;
          for (const auto& c : t.connections) {
            if (!c->key_id().empty()) out.push_back(c->view());  // empty once it ended
          }
          return out;
        },
        [](std::vector<ConnectionView>& all, std::vector<ConnectionView> part) {
          for (auto& v : part) all.push_back(std::move(v));
        },
        std::move(done));
  }

  void disconnect(ConnectionMatch match, std::function<void(std::size_t)> done) override {
    gather<std::size_t>(
        threads_,
        [match](IoThread& t) {
          std::size_t n = 0;
          for (auto it = t.connections.begin(); it != t.connections.end();) {
            auto cur = it++;  // close() may remove *cur later, never now; be safe anyway
            if ((*cur)->key_id().empty()) continue;
            const ConnectionView v = (*cur)->view();
            if (!match.matches(v)) continue;
            spdlog::info("conn={} key={} disconnected by an admin", v.id, v.key_id);
            (*cur)->close(wire::close_code::policy_violation, "disconnected by an admin");
            ++n;
          }
          return n;
        },
        [](std::size_t& all, std::size_t part) { all += part; }, std::move(done));
  }

  void unsubscribe(std::uint64_t id, std::string topic, std::function<void(bool)> done) override {
    gather<bool>(
        threads_,
        [id, topic](IoThread& t) {
          for (const auto& c : t.connections) {
            if (c->id() == id) return c->admin_unsubscribe(topic);
          }
          return false;
        },
        [](bool& any, bool part) { any = any || part; }, std::move(done));
  }

 private:
  IoThreads& threads_;
};

}  // namespace

std::unique_ptr<AdminBackend> make_admin_backend(IoThreads& threads) { return std::make_unique<ThreadsBackend>(threads); }

}  // namespace synapse::net
