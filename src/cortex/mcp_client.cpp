#include "cortex/mcp_client.hpp"

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <boost/json.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <deque>
#include <map>
#include <optional>

#include "cortex/mcp_child.hpp"

namespace synapse::cortex {
namespace asio = boost::asio;
namespace json = boost::json;
using Clock = std::chrono::steady_clock;

namespace {

constexpr std::string_view protocol_version = "2025-06-18";
constexpr std::size_t max_line_bytes = 16u << 20;     // one JSON-RPC message from the child
constexpr std::size_t max_write_backlog = 16u << 20;  // bytes queued to a child that stopped reading
constexpr std::size_t max_list_pages = 100;
constexpr std::size_t max_stderr_line = 2048;
constexpr int stderr_lines_per_window = 50;
constexpr auto stderr_window = std::chrono::seconds(10);
constexpr auto stable_after = std::chrono::seconds(10);  // a child up this long resets the backoff
constexpr auto tick_every = std::chrono::milliseconds(50);
constexpr auto max_ping_wait = std::chrono::milliseconds(5'000);
constexpr auto keepalive_every = std::chrono::seconds(15);  // a ping while nothing else checks the child

std::string clip(std::string_view s, std::size_t n = 200) {
  return s.size() <= n ? std::string(s) : std::string(s.substr(0, n)) + "...";
}

// The text of an MCP result's text content items, for an error message.
std::string text_of(const json::object& result) {
  std::string out;
  if (const json::value* c = result.if_contains("content"); c && c->is_array()) {
    for (const auto& item : c->get_array()) {
      if (!item.is_object()) continue;
      const json::value* t = item.get_object().if_contains("text");
      if (t && t->is_string()) {
        if (!out.empty()) out += "\n";
        out += std::string(t->get_string());
      }
    }
  }
  return out;
}

double number_or(const json::value* v, double fallback) {
  if (!v) return fallback;
  if (v->is_int64()) return static_cast<double>(v->get_int64());
  if (v->is_uint64()) return static_cast<double>(v->get_uint64());
  if (v->is_double()) return v->get_double();
  return fallback;
}

}  // namespace

class McpTool;

struct McpServer::Impl : std::enable_shared_from_this<McpServer::Impl> {
  Impl(McpServerOptions o, ToolRegistry& r)
      : opts(std::move(o)), registry(r), provider("mcp:" + opts.name), work(asio::make_work_guard(io)),
        tick(io), restart_timer(io), backoff(opts.backoff_min) {}

  // --- shared with other threads (atomics only) -----------------------------
  const McpServerOptions opts;
  ToolRegistry& registry;
  const std::string provider;
  std::atomic<bool> ready{false};     // tools listed and the child answering
  std::atomic<bool> stopping{false};  // stop() began: calls are answered unavailable
  std::atomic<std::size_t> in_flight{0};
  std::atomic<int> child_pid{0};
  std::atomic<std::uint64_t> starts{0};

  // --- the client thread's ---------------------------------------------------
  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> work;
  asio::steady_timer tick;
  asio::steady_timer restart_timer;

  enum class Kind { initialize, list, ping, call };
  struct Pending {
    Kind kind;
    Clock::time_point deadline;
    std::shared_ptr<ToolCall> call;  // Kind::call; null once interrupted (the slot is still held)
    std::string tool;
  };

  std::uint64_t generation = 0;  // bumped when a child goes; stale handlers compare it
  ChildProcess child;
  std::optional<asio::posix::stream_descriptor> in, out, err;
  std::string out_buf, err_buf, read_chunk = std::string(64 * 1024, '\0'), err_chunk = std::string(8 * 1024, '\0');
  std::deque<std::string> writes;
  std::size_t write_bytes = 0;
  bool writing = false;
  std::int64_t next_id = 1;
  std::map<std::int64_t, Pending> pending;
  bool ping_out = false;
  bool listing = false, relist = false;
  bool has_tools_capability = true;
  std::vector<json::object> listed;
  std::size_t pages = 0;
  Clock::time_point up_since{};
  Clock::time_point last_ping{};
  std::chrono::milliseconds backoff;
  Clock::time_point stderr_window_start{};
  int stderr_lines = 0, stderr_dropped = 0;

  // --- any thread ------------------------------------------------------------

  StartResult start_call(const std::string& tool, ToolCall call) {
    if (stopping.load() || !ready.load()) {
      call.callbacks.done(ToolOutcome{ToolOutcome::Kind::unavailable, {},
                                      fmt::format("MCP server {} is not running (it is starting or restarting)",
                                                  opts.name)});
      return {};
    }
    if (in_flight.fetch_add(1) >= opts.max_concurrent) {
      in_flight.fetch_sub(1);
      return StartResult{Admit::provider_full};
    }
    asio::post(io, [w = weak_from_this(), tool, c = std::make_shared<ToolCall>(std::move(call))]() mutable {
      if (auto self = w.lock()) self->begin_call(tool, std::move(c));
    });
    return {};
  }

  // --- the client thread -----------------------------------------------------

  void release_slot() { in_flight.fetch_sub(1); }

  void launch() {
    if (stopping.load()) return;
    ChildSpec spec{opts.command, opts.args, opts.env, opts.cwd};
    try {
      child = spawn_child(spec);
    } catch (const std::exception& e) {
      spdlog::error("mcp server {}: {}; retrying in {} ms", opts.name, e.what(), backoff.count());
      schedule_restart();
      return;
    }
    starts.fetch_add(1);
    child_pid.store(child.pid);
    const std::uint64_t gen = generation;
    in.emplace(io, child.stdin_fd);
    out.emplace(io, child.stdout_fd);
    err.emplace(io, child.stderr_fd);
    out_buf.clear();
    err_buf.clear();
    spdlog::info("mcp server {}: started {} (pid {})", opts.name, opts.command, child.pid);
    read_out(gen);
    read_err(gen);
    arm_tick(gen);
    json::object params{{"protocolVersion", protocol_version},
                        {"capabilities", json::object{}},
                        {"clientInfo", json::object{{"name", "synapse"}, {"version", opts.client_version}}}};
    request(Kind::initialize, "initialize", std::move(params));
  }

  void schedule_restart() {
    if (stopping.load()) return;
    restart_timer.expires_after(backoff);
    restart_timer.async_wait([w = weak_from_this()](boost::system::error_code ec) {
      if (ec) return;
      if (auto self = w.lock()) self->launch();
    });
    backoff = std::min(backoff * 2, opts.backoff_max);
  }

  // How long a request may go unanswered: timeout_ms, and at most
  // max_ping_wait for a ping (it only asks "are you alive").
  std::chrono::milliseconds wait_for(Kind kind) const {
    return kind == Kind::ping ? std::min(opts.timeout, std::chrono::milliseconds(max_ping_wait)) : opts.timeout;
  }

  std::int64_t request(Kind kind, std::string_view method, json::object params, std::shared_ptr<ToolCall> call = {},
                       std::string tool = {}) {
    const std::int64_t id = next_id++;
    if (kind == Kind::call) params["_meta"] = json::object{{"progressToken", id}};
    // Recorded before sending: a failed send ends it with the others.
    pending.emplace(id, Pending{kind, Clock::now() + wait_for(kind), std::move(call), std::move(tool)});
    send(json::object{{"jsonrpc", "2.0"}, {"id", id}, {"method", method}, {"params", std::move(params)}});
    return id;
  }

  void notify(std::string_view method, json::object params) {
    json::object msg{{"jsonrpc", "2.0"}, {"method", method}};
    if (!params.empty()) msg["params"] = std::move(params);
    send(std::move(msg));
  }

  void send(const json::object& msg) {
    if (!in) return;
    std::string line = json::serialize(msg);
    line += '\n';
    write_bytes += line.size();
    writes.push_back(std::move(line));
    if (write_bytes > max_write_backlog) {
      fail(generation, fmt::format("stopped reading its input ({} bytes waiting)", write_bytes));
      return;
    }
    if (!writing) write_next(generation);
  }

  void write_next(std::uint64_t gen) {
    if (writes.empty() || !in) {
      writing = false;
      return;
    }
    writing = true;
    asio::async_write(*in, asio::buffer(writes.front()),
                      [w = weak_from_this(), gen](boost::system::error_code ec, std::size_t) {
                        auto self = w.lock();
                        if (!self || gen != self->generation) return;
                        if (ec) {
                          self->fail(gen, "closed its input (" + ec.message() + ")");
                          return;
                        }
                        self->write_bytes -= self->writes.front().size();
                        self->writes.pop_front();
                        self->write_next(gen);
                      });
  }

  void read_out(std::uint64_t gen) {
    out->async_read_some(asio::buffer(read_chunk), [w = weak_from_this(), gen](boost::system::error_code ec,
                                                                               std::size_t n) {
      auto self = w.lock();
      if (!self || gen != self->generation) return;
      if (ec) {
        self->fail(gen, ec == asio::error::eof ? "closed its output" : "output failed: " + ec.message());
        return;
      }
      self->out_buf.append(self->read_chunk.data(), n);
      std::size_t start = 0;
      for (;;) {
        const auto nl = self->out_buf.find('\n', start);
        if (nl == std::string::npos) break;
        std::string_view line(self->out_buf.data() + start, nl - start);
        start = nl + 1;
        if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
        if (line.find_first_not_of(" \t") == std::string_view::npos) continue;
        self->on_line(line);
        if (gen != self->generation) return;  // the line ended this child
      }
      self->out_buf.erase(0, start);
      if (self->out_buf.size() > max_line_bytes) {
        self->fail(gen, fmt::format("wrote a line longer than {} bytes", max_line_bytes));
        return;
      }
      self->read_out(gen);
    });
  }

  // Child stderr goes to the log, at most stderr_lines_per_window lines per
  // window; the rest are counted and the count logged.
  void read_err(std::uint64_t gen) {
    err->async_read_some(asio::buffer(err_chunk), [w = weak_from_this(), gen](boost::system::error_code ec,
                                                                              std::size_t n) {
      auto self = w.lock();
      if (!self || gen != self->generation || ec) return;
      self->err_buf.append(self->err_chunk.data(), n);
      self->consume_stderr(false);
      self->read_err(gen);
    });
  }

  // Logs the complete lines of err_buf (and, with `all`, the rest too).
  void consume_stderr(bool all) {
    std::size_t start = 0;
    for (;;) {
      const auto nl = err_buf.find('\n', start);
      if (nl == std::string::npos) break;
      log_stderr(std::string_view(err_buf.data() + start, nl - start));
      start = nl + 1;
    }
    err_buf.erase(0, start);
    if (err_buf.size() > max_stderr_line || (all && !err_buf.empty())) {
      log_stderr(err_buf);
      err_buf.clear();
    }
  }

  // What a dead child wrote to stderr last (a crash's reason, often) is
  // still in the pipe: read it without waiting, before the pipe closes.
  void drain_stderr() {
    if (!err) return;
    boost::system::error_code ec;
    err->non_blocking(true, ec);
    for (int i = 0; i < 16 && !ec; ++i) {
      const std::size_t n = err->read_some(asio::buffer(err_chunk), ec);
      if (n == 0) break;
      err_buf.append(err_chunk.data(), n);
    }
    consume_stderr(true);
  }

  void log_stderr(std::string_view line) {
    const auto now = Clock::now();
    if (now - stderr_window_start >= stderr_window) {
      if (stderr_dropped > 0) {
        spdlog::warn("mcp server {}: {} stderr lines not logged (at most {} per {} s)", opts.name, stderr_dropped,
                     stderr_lines_per_window, stderr_window.count());
      }
      stderr_window_start = now;
      stderr_lines = 0;
      stderr_dropped = 0;
    }
    if (++stderr_lines > stderr_lines_per_window) {
      if (++stderr_dropped == 1) {
        spdlog::warn("mcp server {}: stderr writes more than {} lines per {} s; the rest of this window is counted, "
                     "not logged",
                     opts.name, stderr_lines_per_window, stderr_window.count());
      }
      return;
    }
    spdlog::info("mcp server {} stderr: {}", opts.name, clip(line, max_stderr_line));
  }

  void arm_tick(std::uint64_t gen) {
    tick.expires_after(tick_every);
    tick.async_wait([w = weak_from_this(), gen](boost::system::error_code ec) {
      auto self = w.lock();
      if (ec || !self || gen != self->generation) return;
      self->on_tick(gen);
      if (gen == self->generation) self->arm_tick(gen);
    });
  }

  // Deadlines. A call past timeout_ms ends unavailable and is cancelled at
  // the server, which is then pinged; any other request past its deadline
  // (initialize, a tools/list page, that ping) means the child is hung.
  void on_tick(std::uint64_t gen) {
    const auto now = Clock::now();
    if (ready.load() && now - up_since >= stable_after) backoff = opts.backoff_min;
    if (ready.load() && !ping_out && now - last_ping >= keepalive_every) {
      // A server hung while idle shows as unavailable before a call finds out.
      ping_out = true;
      last_ping = now;
      request(Kind::ping, "ping", {});
      if (gen != generation) return;
    }
    std::vector<std::int64_t> expired;
    for (const auto& [id, p] : pending) {
      if (p.deadline <= now) expired.push_back(id);
    }
    for (const std::int64_t id : expired) {
      auto it = pending.find(id);
      if (it == pending.end()) continue;
      if (it->second.kind != Kind::call) {
        const Kind k = it->second.kind;
        const char* what = k == Kind::initialize ? "initialize" : k == Kind::list ? "tools/list" : "ping";
        fail(gen, fmt::format("gave no answer to {} within {} ms", what, wait_for(k).count()));
        return;
      }
      Pending p = std::move(it->second);
      pending.erase(it);
      release_slot();
      if (p.call) {
        const std::string reason = fmt::format("no answer within {} ms", opts.timeout.count());
        notify("notifications/cancelled", json::object{{"requestId", id}, {"reason", reason}});
        spdlog::warn("mcp server {}: tools/call {} gave no answer within {} ms", opts.name, p.tool,
                     opts.timeout.count());
        p.call->callbacks.done(ToolOutcome{
            ToolOutcome::Kind::unavailable, {},
            fmt::format("MCP server {} gave no answer to {} within {} ms", opts.name, p.tool, opts.timeout.count())});
      }
      if (!ping_out) {
        ping_out = true;
        last_ping = now;
        request(Kind::ping, "ping", {});
        if (gen != generation) return;
      }
    }
  }

  void on_line(std::string_view line) {
    boost::system::error_code ec;
    json::value v = json::parse(line, ec);
    if (ec || !v.is_object()) {
      fail(generation, "wrote something that is not JSON-RPC: " + clip(line));
      return;
    }
    json::object& msg = v.get_object();
    const json::value* method = msg.if_contains("method");
    const json::value* id = msg.if_contains("id");
    if (method && method->is_string()) {
      if (id) {
        on_server_request(std::string(method->get_string()), *id);
      } else {
        const json::value* params = msg.if_contains("params");
        on_notification(method->get_string(), params && params->is_object() ? params->get_object() : json::object{});
      }
      return;
    }
    if (id && (msg.contains("result") || msg.contains("error"))) {
      if (!id->is_int64()) return;  // not one of ours
      auto it = pending.find(id->get_int64());
      if (it == pending.end()) return;  // a late answer to a call that ended (interrupt, timeout)
      Pending p = std::move(it->second);
      pending.erase(it);
      on_response(p, msg);
      return;
    }
    fail(generation, "wrote a message that is neither a request, a notification nor a response: " + clip(line));
  }

  // Requests from the server. We declare no client capabilities, so the
  // only one we serve is ping; the rest get "method not found".
  void on_server_request(const std::string& method, const json::value& id) {
    if (method == "ping") {
      send(json::object{{"jsonrpc", "2.0"}, {"id", id}, {"result", json::object{}}});
      return;
    }
    send(json::object{{"jsonrpc", "2.0"},
                      {"id", id},
                      {"error", json::object{{"code", -32601}, {"message", "Synapse does not offer " + method}}}});
  }

  void on_notification(std::string_view method, const json::object& params) {
    if (method == "notifications/progress") {
      const json::value* token = params.if_contains("progressToken");
      if (!token || !token->is_int64()) return;
      auto it = pending.find(token->get_int64());
      if (it == pending.end() || it->second.kind != Kind::call || !it->second.call) return;
      // Progress counts as an answer: the call's timeout starts again (MCP
      // allows this; the run's own timeout_ms stays the upper bound).
      it->second.deadline = Clock::now() + opts.timeout;
      std::string message;
      if (const json::value* m = params.if_contains("message"); m && m->is_string()) message = m->get_string();
      it->second.call->callbacks.progress(number_or(params.if_contains("progress"), 0),
                                          number_or(params.if_contains("total"), -1), std::move(message));
    } else if (method == "notifications/tools/list_changed") {
      if (listing) {
        relist = true;
      } else if (ready.load()) {
        list_tools("");
      }
    } else if (method == "notifications/message") {
      spdlog::debug("mcp server {} log: {}", opts.name, clip(json::serialize(params), 1000));
    }
  }

  void on_response(Pending& p, const json::object& msg) {
    const json::value* error = msg.if_contains("error");
    const json::value* result = msg.if_contains("result");
    switch (p.kind) {
      case Kind::initialize: {
        if (error || !result || !result->is_object()) {
          fail(generation, "refused initialize: " + clip(json::serialize(msg), 500));
          return;
        }
        const json::object& r = result->get_object();
        std::string version = "?";
        if (const json::value* pv = r.if_contains("protocolVersion"); pv && pv->is_string()) version = pv->get_string();
        const json::value* caps = r.if_contains("capabilities");
        has_tools_capability = caps && caps->is_object() && caps->get_object().contains("tools");
        if (version != "2025-06-18" && version != "2025-03-26" && version != "2024-11-05") {
          // Tools work alike in the versions we know; an unknown one may not.
          spdlog::warn("mcp server {}: answers with protocol version {}, which Synapse does not know; going on",
                       opts.name, version);
        }
        spdlog::info("mcp server {}: initialized (protocol {})", opts.name, version);
        notify("notifications/initialized", {});
        if (has_tools_capability) {
          list_tools("");
        } else {
          finish_listing();
        }
        return;
      }
      case Kind::list: {
        if (error || !result || !result->is_object()) {
          fail(generation, "refused tools/list: " + clip(json::serialize(msg), 500));
          return;
        }
        const json::object& r = result->get_object();
        if (const json::value* tools = r.if_contains("tools"); tools && tools->is_array()) {
          for (const auto& t : tools->get_array()) {
            if (t.is_object()) listed.push_back(t.get_object());
          }
        }
        const json::value* next = r.if_contains("nextCursor");
        if (next && next->is_string() && !next->get_string().empty()) {
          if (++pages >= max_list_pages) {
            fail(generation, fmt::format("tools/list went past {} pages", max_list_pages));
            return;
          }
          request(Kind::list, "tools/list", json::object{{"cursor", next->get_string()}});
          return;
        }
        finish_listing();
        return;
      }
      case Kind::ping:
        ping_out = false;
        return;
      case Kind::call: {
        release_slot();
        if (!p.call) return;  // interrupted: the run already ended
        ToolOutcome outcome;
        if (error) {
          outcome.kind = ToolOutcome::Kind::tool_error;
          const json::value* m = error->is_object() ? error->get_object().if_contains("message") : nullptr;
          outcome.message = m && m->is_string() ? std::string(m->get_string()) : clip(json::serialize(*error), 500);
        } else if (!result || !result->is_object()) {
          outcome.kind = ToolOutcome::Kind::tool_error;
          outcome.message = fmt::format("MCP server {} answered tools/call without a result object", opts.name);
        } else {
          const json::object& r = result->get_object();
          const json::value* is_error = r.if_contains("isError");
          if (is_error && is_error->is_bool() && is_error->get_bool()) {
            outcome.kind = ToolOutcome::Kind::tool_error;
            outcome.message = text_of(r);
            if (outcome.message.empty()) outcome.message = p.tool + " reported an error";
          } else {
            outcome.data = r;
          }
        }
        p.call->callbacks.done(std::move(outcome));
        return;
      }
    }
  }

  void list_tools(const std::string& cursor) {
    listing = true;
    relist = false;
    listed.clear();
    pages = 0;
    json::object params;
    if (!cursor.empty()) params["cursor"] = cursor;
    request(Kind::list, "tools/list", std::move(params));
  }

  void finish_listing();

  void begin_call(const std::string& tool, std::shared_ptr<ToolCall> call) {
    if (stopping.load() || !ready.load() || !in) {
      release_slot();
      call->callbacks.done(ToolOutcome{ToolOutcome::Kind::unavailable, {},
                                       fmt::format("MCP server {} is not running (it is restarting)", opts.name)});
      return;
    }
    if (call->cancel && call->cancel->cancelled()) {
      release_slot();
      return;
    }
    const std::uint64_t gen = generation;
    json::object params{{"name", tool}, {"arguments", call->args}};
    auto cancel = call->cancel;
    const std::int64_t id = request(Kind::call, "tools/call", std::move(params), std::move(call), tool);
    if (cancel) {
      // Runs on the interrupting thread (an I/O thread): only posts.
      cancel->on_cancel([w = weak_from_this(), gen, id] {
        auto self = w.lock();
        if (!self) return;
        asio::post(self->io, [w, gen, id] {
          if (auto s = w.lock()) s->on_cancelled(gen, id);
        });
      });
    }
  }

  // The run ended (interrupt, the run's timeout, its client gone past the
  // grace): tell the server, forget the callbacks; the slot stays taken
  // until the server answers or the call's deadline passes.
  void on_cancelled(std::uint64_t gen, std::int64_t id) {
    if (gen != generation) return;
    auto it = pending.find(id);
    if (it == pending.end() || !it->second.call) return;
    it->second.call.reset();
    notify("notifications/cancelled", json::object{{"requestId", id}, {"reason", "interrupted by the Synapse client"}});
  }

  // The child is gone or unusable: kill it, end its calls, restart later.
  void fail(std::uint64_t gen, const std::string& why) {
    if (gen != generation || stopping.load()) return;
    ++generation;
    const bool was_ready = ready.exchange(false);
    const int pid = child.pid;
    const std::string how = teardown(false);
    if (was_ready && Clock::now() - up_since >= stable_after) backoff = opts.backoff_min;
    spdlog::warn("mcp server {} (pid {}) {}; {}; its tools are unavailable until it restarts in {} ms", opts.name,
                 pid, why, how, backoff.count());
    end_pending(fmt::format("MCP server {} failed: {}", opts.name, why));
    schedule_restart();
  }

  void end_pending(const std::string& why) {
    auto calls = std::move(pending);
    pending.clear();
    ping_out = false;
    listing = false;
    relist = false;
    for (auto& [id, p] : calls) {
      if (p.kind != Kind::call) continue;
      release_slot();
      if (p.call) p.call->callbacks.done(ToolOutcome{ToolOutcome::Kind::unavailable, {}, why});
    }
  }

  // Closes the pipes and kills the child. `graceful`: stdin closed first and
  // a short wait for it to exit on its own (shutdown).
  std::string teardown(bool graceful) {
    tick.cancel();
    writes.clear();
    write_bytes = 0;
    writing = false;
    std::string how = "gone";
    if (in) {
      boost::system::error_code ec;
      in->close(ec);
      in.reset();
    }
    if (child.pid > 0) {
      how.clear();
      if (graceful) {
        // MCP stdio shutdown: stdin closed, a moment to exit, then SIGKILL.
        for (int i = 0; i < 30 && how.empty(); ++i) {
          how = try_reap(child.pid);
          if (how.empty()) ::usleep(10'000);
        }
      }
      if (how.empty()) how = kill_and_reap(child.pid);
      child.pid = -1;  // reaped: the number is never signalled again
    }
    drain_stderr();
    for (auto* d : {&out, &err}) {
      if (*d) {
        boost::system::error_code ec;
        (*d)->close(ec);
        d->reset();
      }
    }
    child_pid.store(0);
    return how;
  }

  void shutdown() {
    ++generation;
    ready.store(false);
    restart_timer.cancel();
    if (child.pid > 0) {
      const int pid = child.pid;
      const std::string how = teardown(true);
      spdlog::info("mcp server {} (pid {}) stopped: {}", opts.name, pid, how);
    }
    end_pending(fmt::format("MCP server {} stopped", opts.name));
    work.reset();
  }
};

class McpTool final : public Tool {
 public:
  McpTool(std::shared_ptr<McpServer::Impl> impl, ToolSpec spec, std::string remote)
      : impl_(std::move(impl)), spec_(std::move(spec)), remote_(std::move(remote)) {}
  const ToolSpec& spec() const override { return spec_; }
  bool available() const override { return impl_->ready.load() && !impl_->stopping.load(); }
  StartResult start(ToolCall call) const override { return impl_->start_call(remote_, std::move(call)); }

 private:
  std::shared_ptr<McpServer::Impl> impl_;
  ToolSpec spec_;
  std::string remote_;  // the tool's name at the server
};

void McpServer::Impl::finish_listing() {
  listing = false;
  std::vector<std::shared_ptr<const Tool>> tools;
  for (auto& t : listed) {
    const json::value* name = t.if_contains("name");
    if (!name || !name->is_string() || name->get_string().empty()) {
      spdlog::warn("mcp server {}: a listed tool has no name; skipped", opts.name);
      continue;
    }
    ToolSpec spec;
    spec.name = opts.name + "." + std::string(name->get_string());
    if (const json::value* d = t.if_contains("description"); d && d->is_string()) spec.description = d->get_string();
    if (const json::value* s = t.if_contains("inputSchema"); s && s->is_object()) {
      spec.input_schema = s->get_object();
    } else {
      spec.input_schema = json::object{{"type", "object"}};
    }
    tools.push_back(std::make_shared<McpTool>(shared_from_this(), std::move(spec), std::string(name->get_string())));
  }
  listed.clear();
  const std::size_t offered = tools.size();
  const std::size_t n = registry.replace(provider, std::move(tools));
  if (!ready.exchange(true)) {
    up_since = last_ping = Clock::now();
    spdlog::info("mcp server {}: ready with {} tools (pid {})", opts.name, n, child.pid);
  } else {
    spdlog::info("mcp server {}: tool list changed, now {} tools", opts.name, n);
  }
  if (n != offered) spdlog::warn("mcp server {}: {} of its {} tools were refused", opts.name, offered - n, offered);
  if (relist) list_tools("");
}

McpServer::McpServer(McpServerOptions options, ToolRegistry& registry)
    : impl_(std::make_shared<Impl>(std::move(options), registry)) {}

McpServer::~McpServer() { stop(); }

void McpServer::start() {
  if (thread_.joinable()) return;
  if (!impl_->registry.claim(impl_->provider, impl_->opts.name)) {
    spdlog::error("mcp server {}: its name is already a tool namespace; not started", impl_->opts.name);
    return;
  }
  asio::post(impl_->io, [impl = impl_.get()] { impl->launch(); });
  thread_ = std::thread([impl = impl_] { impl->io.run(); });
}

void McpServer::stop() {
  if (!thread_.joinable()) return;
  impl_->stopping.store(true);
  asio::post(impl_->io, [impl = impl_.get()] { impl->shutdown(); });
  thread_.join();
  impl_->registry.remove_provider(impl_->provider);
}

const std::string& McpServer::name() const { return impl_->opts.name; }
int McpServer::pid() const { return impl_->child_pid.load(); }
bool McpServer::ready() const { return impl_->ready.load(); }
std::uint64_t McpServer::starts() const { return impl_->starts.load(); }

}  // namespace synapse::cortex
