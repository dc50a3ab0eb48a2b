#include "channels/agent_channel.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "channels/session.hpp"
#include "config/config.hpp"
#include "core/clock.hpp"
#include "cortex/agent_hub.hpp"
#include "cortex/cortex.hpp"
#include "protocol/envelope.hpp"
#include "wire/message.hpp"
#include "wire/ws_frame.hpp"

namespace synapse::channels {
namespace json = boost::json;
namespace reason = protocol::reason;

namespace {

constexpr std::int64_t max_capacity = 1000;
constexpr std::size_t max_tools = 64;
constexpr std::size_t max_tool_name = 64;
constexpr std::size_t max_description = 1024;

class AgentChannel;

// Pushes and tool answers from other threads reach the channel through
// this; leave() clears it, and posted work then finds nothing.
struct Board {
  AgentChannel* channel = nullptr;
};

// `<namespace>.<name>`: a namespace of [a-z0-9_-], a name of [A-Za-z0-9_.-].
bool valid_tool_name(std::string_view n) {
  const auto dot = n.find('.');
  if (n.size() > max_tool_name || dot == std::string_view::npos || dot == 0 || dot + 1 == n.size()) return false;
  for (std::size_t i = 0; i < n.size(); ++i) {
    const char c = n[i];
    const bool lower = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
    const bool ok = i < dot ? lower : (lower || (c >= 'A' && c <= 'Z') || c == '.');
    if (!ok) return false;
  }
  return true;
}

class AgentChannel final : public Channel {
 public:
  AgentChannel(Session& session, const protocol::Envelope& env, cortex::AgentHub& hub)
      : Channel(env), session_(session), hub_(hub), board_(std::make_shared<Board>()) {
    board_->channel = this;
  }
  ~AgentChannel() override { leave(); }

  // Registers the worker; the push handle posts to this connection's thread.
  std::uint64_t register_worker(cortex::WorkerSpec spec) {
    auto push = [poster = session_.socket().poster(), board = std::weak_ptr<Board>(board_)](
                    std::string event, json::object payload) {
      poster([board, event = std::move(event), payload = std::move(payload)] {
        if (auto b = board.lock(); b && b->channel) b->channel->push(event, payload);
      });
    };
    worker_ = hub_.add_worker(std::move(spec), std::move(push));
    return worker_;
  }

  void handle_in(const protocol::Envelope& env) override {
    if (env.event == "call_tool") {
      on_call_tool(env);
      return;
    }
    answer(env, hub_.on_event(worker_, env.event, *env.payload));
  }

  // A worker's tokens, the hot path (protocol.md section 10): read without a
  // JSON tree, answered exactly as handle_in() answers them.
  bool takes_flat(std::string_view event) const override { return event == "token"; }
  bool takes_any_flat() const override { return true; }
  void handle_flat(const protocol::Envelope& env, const protocol::FlatFrame& f) override {
    std::optional<std::string_view> run_id, text;
    if (const protocol::FlatField* v = f.find("run_id")) run_id = protocol::flat_value(*v, id_scratch_);
    if (const protocol::FlatField* v = f.find("text")) text = protocol::flat_value(*v, text_scratch_);
    answer(env, hub_.on_token(worker_, run_id, text));
  }

  // The worker's runs end or move to another worker (AgentHub::remove_worker).
  void leave() override {
    if (!board_->channel) return;
    board_->channel = nullptr;
    if (worker_) hub_.remove_worker(worker_);
    worker_ = 0;
  }

  void push(std::string_view event, const json::object& payload) {
    session_.push(topic(), join_ref(), event, payload);
  }

  // A call_tool answer, on this thread.
  void tool_answer(const std::optional<std::string>& ref, bool ok, const json::object& response) {
    if (!ref) return;
    session_.socket().send(wire::Message::text(protocol::encode_reply(
        join_ref(), std::string_view(*ref), topic(), ok,
        response)));
  }

 private:
  void on_call_tool(const protocol::Envelope& env) {
    std::optional<std::string> ref;
    if (env.ref) ref = std::string(*env.ref);
    auto reply = [poster = session_.socket().poster(), board = std::weak_ptr<Board>(board_), ref](
                     bool ok, json::object response) {
      poster([board, ref, ok, response = std::move(response)] {
        if (auto b = board.lock(); b && b->channel) b->channel->tool_answer(ref, ok, response);
      });
    };
    cortex::HubReply r = hub_.call_tool(worker_, *env.payload, std::move(reply));
    if (r.pending) return;
    answer(env, r);
  }

  // Replies to a worker event (when it carries a ref) and counts errors
  // against the budget: past it the worker is closed with 1008.
  void answer(const protocol::Envelope& env, const cortex::HubReply& r) {
    if (r.reason.empty()) {
      if (env.ref) session_.reply_ok(env, r.dropped ? json::object{{"dropped", true}} : json::object{});
      return;
    }
    if (env.ref) session_.reply_error(env, r.reason, r.message, r.errors);
    spdlog::debug("conn={} agent worker {} {} on {}: {} ({})", session_.socket().id(), worker_, env.event, topic(),
                  r.reason, r.message);
    const std::int64_t budget = session_.services().config.worker_error_budget;
    if (budget <= 0) return;
    const std::int64_t now = mono_ms();
    std::erase_if(errors_at_, [&](std::int64_t t) { return now - t >= 60'000; });
    errors_at_.push_back(now);
    if (static_cast<std::int64_t>(errors_at_.size()) > budget) {
      spdlog::warn("conn={} agent worker {} on {} closed: more than {} errors in a minute", session_.socket().id(),
                   worker_, topic(), budget);
      session_.socket().close(wire::close_code::policy_violation, "too many worker errors");
    }
  }

  Session& session_;
  cortex::AgentHub& hub_;
  std::shared_ptr<Board> board_;
  std::uint64_t worker_ = 0;
  std::vector<std::int64_t> errors_at_;  // ms; only a misbehaving worker grows it
  std::string id_scratch_, text_scratch_;  // handle_flat's unescaped values
};

}  // namespace

std::unique_ptr<Channel> join_agent(Session& session, const protocol::Envelope& env) {
  const auto& principal = session.principal();
  const std::string agent(env.topic.substr(env.topic.find(':') + 1));
  if (!principal.worker) {
    session.reply_error(env, reason::forbidden,
                        "agent topics are for agent workers (a key made with keys create --worker)");
    return nullptr;
  }
  if (principal.agent_id != "*" && agent != principal.agent_id) {
    session.reply_error(env, reason::forbidden, "this worker credential serves agent " + principal.agent_id);
    return nullptr;
  }
  cortex::AgentHub* hub = session.services().hub;
  if (!hub) {
    session.reply_error(env, reason::internal, "agent workers are not enabled on this server");
    return nullptr;
  }
  const json::object& p = *env.payload;
  std::vector<protocol::FieldError> errors;
  std::int64_t capacity = 1;
  if (const json::value* c = p.if_contains("capacity")) {
    if (!c->is_int64() || c->get_int64() < 1 || c->get_int64() > max_capacity) {
      errors.push_back({"capacity", fmt::format("must be an integer from 1 to {}", max_capacity)});
    } else {
      capacity = c->get_int64();
    }
  }
  cortex::WorkerSpec spec;
  spec.tenant = principal.tenant;
  spec.agent = agent;
  spec.capacity = static_cast<std::size_t>(capacity);
  if (const json::value* tv = p.if_contains("tools")) {
    const json::array* arr = tv->if_array();
    if (!arr || arr->size() > max_tools) {
      errors.push_back({"tools", fmt::format("must be an array of at most {} tools", max_tools)});
    } else {
      for (std::size_t i = 0; i < arr->size(); ++i) {
        const std::string field = fmt::format("tools[{}]", i);
        const json::object* t = (*arr)[i].if_object();
        const json::value* name = t ? t->if_contains("name") : nullptr;
        if (!name || !name->is_string() || !valid_tool_name(name->get_string())) {
          errors.push_back({field + ".name", "must be <namespace>.<name> of at most 64 bytes"});
          continue;
        }
        cortex::ToolSpec s;
        s.name = std::string(name->get_string());
        if (session.services().cortex.find_tool(s.name)) {
          errors.push_back({field + ".name", s.name + " is a Synapse tool"});
          continue;
        }
        if (const json::value* d = t->if_contains("description")) {
          if (!d->is_string() || d->get_string().size() > max_description) {
            errors.push_back({field + ".description", "must be a string of at most 1024 bytes"});
            continue;
          }
          s.description = std::string(d->get_string());
        }
        if (const json::value* schema = t->if_contains("input_schema")) {
          if (!schema->is_object()) {
            errors.push_back({field + ".input_schema", "must be an object (a JSON Schema)"});
            continue;
          }
          s.input_schema = schema->get_object();
        } else {
          s.input_schema = json::object{{"type", "object"}};
        }
        spec.tools.push_back(std::move(s));
      }
    }
  }
  if (!errors.empty()) {
    session.reply_error(env, reason::invalid_payload, "the worker's join payload is invalid", errors);
    return nullptr;
  }
  auto channel = std::make_unique<AgentChannel>(session, env, *hub);
  const std::uint64_t id = channel->register_worker(std::move(spec));
  session.reply_ok(env, json::object{{"worker_id", fmt::format("w{}", id)}, {"agent_id", agent},
                                     {"capacity", capacity}});
  return channel;
}

}  // namespace synapse::channels
