#include "cortex/agent_backend.hpp"

#include "core/clock.hpp"

namespace synapse::cortex {
namespace json = boost::json;

namespace {

constexpr std::size_t max_reason_bytes = 64;
constexpr std::size_t max_message_bytes = 4096;

// A worker's error reason reaches the client as given only when it is a
// plain identifier: clients switch on reasons, and free text belongs in
// `message`.
bool plain_reason(std::string_view r) {
  if (r.empty() || r.size() > max_reason_bytes) return false;
  for (char c : r) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) return false;
  }
  return true;
}

bool fail(std::string* why, const char* what) {
  if (why) *why = what;
  return false;
}

}  // namespace

json::object agent_run_payload(std::string_view run_id, const AgentRequest& req) {
  json::object p{{"run_id", run_id},
                 {"kind", req.kind},
                 {"caller", json::object{{"tenant", req.caller.tenant}, {"agent_id", req.caller.agent_id}}},
                 {"deadline_ms", req.deadline_ms}};
  if (req.kind == "query") {
    p["q"] = req.q;
    if (req.limit > 0) p["limit"] = req.limit;
  } else {
    p["name"] = req.tool;
    p["args"] = req.args;
  }
  return p;
}

AgentEventResult apply_agent_event(Run& run, std::string_view event, const json::object& payload, std::string* why) {
  const bool known = event == "thought" || event == "token" || event == "progress" || event == "result" ||
                     event == "error";
  if (!known) {
    if (why) *why = "a worker sends thought, token, progress, result or error for a run";
    return AgentEventResult::bad_event;
  }
  if (!run.running()) return AgentEventResult::run_ended;
  auto bad = [&](const char* what) {
    fail(why, what);
    return AgentEventResult::bad_payload;
  };
  if (event == "thought") {
    const json::value* t = payload.if_contains("thought");
    if (!t || !(t->is_object() || t->is_string())) return bad("thought must be an object or a string");
    json::object thought = t->is_object() ? t->get_object() : json::object{{"type", "thought"}, {"content", *t}};
    run.emit("thought", json::object{{"thought", std::move(thought)}, {"ts", unix_ms()}});
    return AgentEventResult::applied;
  }
  if (event == "token") {
    const json::value* t = payload.if_contains("text");
    if (!t || !t->is_string()) return bad("text must be a string");
    return run.emit_token(t->get_string()) ? AgentEventResult::applied : AgentEventResult::run_ended;
  }
  if (event == "progress") {
    const json::value* v = payload.if_contains("progress");
    if (!v || !v->is_number()) return bad("progress must be a number");
    json::object update{{"progress", *v}};
    if (const json::value* total = payload.if_contains("total")) {
      if (!total->is_number()) return bad("total must be a number");
      update["total"] = *total;
    }
    if (const json::value* m = payload.if_contains("message")) {
      if (!m->is_string()) return bad("message must be a string");
      update["message"] = *m;
    }
    run.emit("progress", std::move(update));
    return AgentEventResult::applied;
  }
  if (event == "result") {
    const json::value* d = payload.if_contains("data");
    run.finish(RunEnd::result, json::object{{"data", d ? *d : json::value(nullptr)}});
    return AgentEventResult::applied;
  }
  // error
  std::string reason = "agent_error";
  if (const json::value* r = payload.if_contains("reason"); r && r->is_string() && plain_reason(r->get_string())) {
    reason = std::string(r->get_string());
  }
  std::string message;
  if (const json::value* m = payload.if_contains("message"); m && m->is_string()) {
    message = std::string(std::string_view(m->get_string()).substr(0, max_message_bytes));
  }
  run.finish(RunEnd::error, json::object{{"reason", reason}, {"message", message}});
  return AgentEventResult::applied;
}

}  // namespace synapse::cortex
