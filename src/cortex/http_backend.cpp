#include "cortex/http_backend.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cctype>
#include <memory>
#include <stdexcept>

#include "core/crypto.hpp"
#include "core/clock.hpp"

namespace synapse::cortex {
namespace json = boost::json;

// ---- AgentStreamParser ------------------------------------------------------

AgentStreamParser::Format AgentStreamParser::format_for(std::string_view content_type) {
  std::string t;
  for (char c : content_type.substr(0, content_type.find(';'))) {
    if (c != ' ' && c != '\t') t.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
  }
  return t == "text/event-stream" ? Format::sse : Format::ndjson;
}

bool AgentStreamParser::feed(std::string_view bytes, const OnEvent& on_event, const OnBad& on_bad) {
  if (overflowed_) return false;
  std::size_t i = 0;
  while (i < bytes.size()) {
    if (format_ == Format::sse && after_cr_) {
      after_cr_ = false;
      if (bytes[i] == '\n') {  // the LF of a CRLF whose CR ended the line
        ++i;
        continue;
      }
    }
    const std::size_t stop = format_ == Format::sse ? bytes.find_first_of("\r\n", i) : bytes.find('\n', i);
    const std::size_t end = stop == std::string_view::npos ? bytes.size() : stop;
    if (partial_.size() + (end - i) > max_line_) {
      overflowed_ = true;
      partial_.clear();
      return false;
    }
    if (stop == std::string_view::npos) {
      partial_.append(bytes.substr(i));
      return true;
    }
    std::string held;  // a line that began in an earlier feed, moved out of partial_
    std::string_view l;
    if (partial_.empty()) {
      l = bytes.substr(i, end - i);
    } else {
      partial_.append(bytes.substr(i, end - i));
      held.swap(partial_);
      l = held;
    }
    if (format_ == Format::sse && bytes[stop] == '\r') after_cr_ = true;
    if (format_ == Format::ndjson && !l.empty() && l.back() == '\r') l.remove_suffix(1);
    line(l, on_event, on_bad);
    if (overflowed_) return false;
    i = stop + 1;
  }
  return true;
}

void AgentStreamParser::finish(const OnEvent& on_event, const OnBad& on_bad) {
  if (overflowed_) return;
  if (format_ == Format::ndjson && !partial_.empty()) {
    std::string l;
    l.swap(partial_);
    if (!l.empty() && l.back() == '\r') l.pop_back();
    line(l, on_event, on_bad);
  }
  partial_.clear();
  data_.clear();
  has_data_ = false;
}

void AgentStreamParser::line(std::string_view l, const OnEvent& on_event, const OnBad& on_bad) {
  if (format_ == Format::ndjson) {
    if (l.find_first_not_of(" \t") == std::string_view::npos) return;  // a heartbeat
    object(l, on_event, on_bad);
    return;
  }
  if (l.empty()) return dispatch_sse(on_event, on_bad);
  if (l.front() == ':') return;  // a comment
  const std::size_t colon = l.find(':');
  std::string_view field = l.substr(0, colon);
  std::string_view value = colon == std::string_view::npos ? std::string_view{} : l.substr(colon + 1);
  if (!value.empty() && value.front() == ' ') value.remove_prefix(1);
  if (field == "data") {
    if (data_.size() + value.size() + 1 > max_line_) {
      overflowed_ = true;
      return;
    }
    if (has_data_) data_.push_back('\n');
    data_.append(value);
    has_data_ = true;
  } else if (field == "event") {
    event_name_ = std::string(value);
  }
  // id, retry and unknown fields: ignored, as the SSE spec says.
}

void AgentStreamParser::dispatch_sse(const OnEvent& on_event, const OnBad& on_bad) {
  std::string data;
  data.swap(data_);
  std::string name;
  name.swap(event_name_);
  const bool had = has_data_;
  has_data_ = false;
  if (!had) return;
  json::error_code ec;
  json::value v = json::parse(data, ec);
  if (ec || !v.is_object()) return on_bad("an SSE event's data is not a JSON object");
  json::object o = std::move(v.get_object());
  if (!o.contains("event") && !name.empty() && name != "message") o["event"] = name;
  on_event(std::move(o));
}

void AgentStreamParser::object(std::string_view text, const OnEvent& on_event, const OnBad& on_bad) {
  json::error_code ec;
  json::value v = json::parse(text, ec);
  if (ec || !v.is_object()) return on_bad("an NDJSON line is not a JSON object");
  on_event(std::move(v.get_object()));
}

// ---- HttpBackend --------------------------------------------------------------

namespace {

// One run's exchange, touched only on the HTTP client's thread (the
// callbacks); the cancel hook touches only `handle`, which is thread-safe.
struct Exchange {
  RunPtr run;
  std::string url;
  std::size_t max_line = 0;
  int budget = 0;
  int bad = 0;
  std::unique_ptr<AgentStreamParser> parser;

  // Ends the run (if it is still running) with agent_unavailable.
  void unavailable(const std::string& message) {
    if (run->finish(RunEnd::error, json::object{{"reason", "agent_unavailable"}, {"message", message}})) {
      spdlog::warn("http agent backend {}: run {}: {}", url, run->id(), message);
    }
  }

  void malformed(const std::string& why) {
    if (!run->running()) return;
    if (++bad > budget) {
      unavailable("the agent backend sent more than " + std::to_string(budget) + " malformed events (last: " + why +
                  ")");
    } else {
      spdlog::debug("http agent backend {}: run {}: skipped a malformed event: {}", url, run->id(), why);
    }
  }

  void event(json::object o) {
    if (!run->running()) return;
    const json::value* e = o.if_contains("event");
    if (!e || !e->is_string()) return malformed("an event object has no \"event\" name");
    const std::string name(e->get_string());
    if (name == "call_tool") return malformed("call_tool is not available to an HTTP backend (no back channel)");
    o.erase("event");
    std::string why;
    switch (apply_agent_event(*run, name, o, &why)) {
      case AgentEventResult::applied:
      case AgentEventResult::run_ended: return;
      case AgentEventResult::bad_event: return malformed("unknown event " + name);
      case AgentEventResult::bad_payload: return malformed(name + ": " + why);
    }
  }

  bool feed(std::string_view bytes) {
    if (!run->running()) return false;
    const bool fits = parser->feed(
        bytes, [this](json::object o) { event(std::move(o)); }, [this](std::string why) { malformed(why); });
    if (!fits) unavailable("the agent backend sent a line longer than " + std::to_string(max_line) + " bytes");
    return run->running();
  }
};

hooks::HttpUrl checked_url(const std::string& url) {
  std::string why;
  auto u = hooks::parse_http_url(url, &why);
  if (!u) throw std::invalid_argument("http agent backend url " + url + ": " + why);
  return std::move(*u);
}

}  // namespace

HttpBackend::HttpBackend(HttpBackendOptions options)
    : own_client_(std::make_unique<hooks::HttpClient>()),
      client_(*own_client_),
      options_(std::move(options)),
      url_(checked_url(options_.url)) {}

HttpBackend::HttpBackend(hooks::HttpClient& client, HttpBackendOptions options)
    : client_(client), options_(std::move(options)), url_(checked_url(options_.url)) {}

AgentBackend::Start HttpBackend::start(const AgentRequest& req, const RunPtr& run) {
  auto ex = std::make_shared<Exchange>();
  ex->run = run;
  ex->url = options_.url;
  ex->max_line = options_.max_line_bytes;
  ex->budget = options_.bad_event_budget;

  hooks::StreamRequest sr;
  sr.method = "POST";
  sr.url = url_;
  sr.headers = options_.headers;
  sr.headers.emplace_back("Accept", "application/x-ndjson, text/event-stream");
  sr.body = json::serialize(agent_run_payload(run->id(), req));
  if (!options_.secret.empty()) {
    sr.headers.emplace_back("X-Synapse-Signature",
                            "sha256=" + core::hex_encode(core::as_view(core::hmac_sha256(options_.secret, sr.body))));
  }
  sr.content_type = "application/json";
  sr.connect_timeout = options_.connect_timeout;
  sr.idle_timeout = options_.idle_timeout;
  sr.max_body_bytes = options_.max_response_bytes;
  // The run's own timeout (the registry) ends it and closes the request;
  // this is only the backstop should that close be lost.
  const std::int64_t left = req.deadline_ms > 0 ? req.deadline_ms - unix_ms() : 0;
  sr.total_timeout = std::chrono::milliseconds(left > 0 ? left + 1000 : 300'000);

  const std::size_t max_line = options_.max_line_bytes;
  hooks::StreamCallbacks cb;
  cb.headers = [ex, max_line](int status, std::string content_type) {
    if (!ex->run->running()) return false;
    if (status < 200 || status > 299) {
      ex->unavailable("the agent backend answered HTTP " + std::to_string(status));
      return false;
    }
    ex->parser = std::make_unique<AgentStreamParser>(AgentStreamParser::format_for(content_type), max_line);
    return true;
  };
  cb.data = [ex](std::string_view bytes) { return ex->feed(bytes); };
  cb.end = [ex](hooks::StreamEnd end) {
    if (!ex->run->running()) return;
    using Why = hooks::StreamEnd::Why;
    switch (end.why) {
      case Why::complete:
        if (ex->parser) {
          ex->parser->finish([&](json::object o) { ex->event(std::move(o)); },
                             [&](std::string why) { ex->malformed(why); });
        }
        ex->unavailable("the agent backend's answer ended without a result or an error");
        return;
      case Why::too_large: return ex->unavailable("the agent backend's answer passed the response size limit");
      case Why::cancelled: return ex->unavailable("the request to the agent backend was closed");
      case Why::connect:
      case Why::timeout:
      case Why::bad_response: return ex->unavailable("agent backend: " + end.error);
    }
  };

  auto handle = client_.stream(std::move(sr), std::move(cb));
  // Interrupt, timeout, detach, or the run's own end: close the request.
  // This hook runs on whichever thread ends the run and only posts.
  run->cancel()->on_cancel([handle] { handle->cancel(); });
  return Start::accepted;
}

}  // namespace synapse::cortex
