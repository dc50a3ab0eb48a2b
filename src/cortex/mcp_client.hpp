// MCP servers as Synapse tools: one client per configured server
// (`[[mcp.servers]]`), speaking newline-delimited JSON-RPC 2.0 to a child
// process over its stdin and stdout (MCP stdio transport, protocol
// 2025-06-18). docs/mcp.md "MCP servers as tools" is the user's view.
//
// Threads and ownership: each McpServer owns one thread running its own
// io_context; the child's pipes are posix::stream_descriptors on it, so no
// I/O thread and no cortex worker ever waits on a child. Everything about
// the child (its pipes, the requests in flight, restarts) lives on that
// thread. The only things other threads touch are McpTool::start() and
// available(), which read atomics and post to the thread.
//
// Tools: after `initialize` / `notifications/initialized` the client lists
// the server's tools (`tools/list`, following `nextCursor`) and registers
// each as `<name>.<tool>` in the ToolRegistry, under provider `mcp:<name>`
// holding the namespace `<name>`; `notifications/tools/list_changed`
// lists them again and replaces them. A tool keeps the client state alive
// (shared_ptr), so a run may outlive a refresh, a restart or the McpServer.
//
// Budget: at most `max_concurrent` calls of one server are in flight;
// start() refuses the next with Admit::provider_full (answered `overloaded`)
// rather than queueing it. A call interrupted by its client keeps its slot
// until the server answers it or `timeout_ms` passes, because the server may
// still be working on it.
//
// Failure: a child that exits, writes something that is not JSON-RPC, or
// gives no answer to initialize / tools/list / ping within `timeout_ms`, is
// killed; its calls in flight end with ToolOutcome::unavailable, its tools
// stay listed with available() false, and it is started again after a
// backoff (backoff_min doubling up to backoff_max; back to backoff_min once
// a child stayed up for 10 s). A tools/call with no answer within
// `timeout_ms` (restarted by each progress notification) ends unavailable
// too, is cancelled at the server, and a ping checks the server is alive (no
// answer: killed and restarted as above); a keepalive ping every 15 s finds
// a server that hung while idle.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "cortex/tool_registry.hpp"

namespace synapse::cortex {

struct McpServerOptions {
  std::string name;  // the tools' namespace
  std::string command;
  std::vector<std::string> args;
  std::vector<std::pair<std::string, std::string>> env;
  std::string cwd;
  std::chrono::milliseconds timeout{30'000};
  std::size_t max_concurrent = 4;
  std::chrono::milliseconds backoff_min{250};
  std::chrono::milliseconds backoff_max{30'000};
  std::string client_version = "dev";  // clientInfo.version
};

class McpServer {
 public:
  McpServer(McpServerOptions options, ToolRegistry& registry);
  ~McpServer();
  McpServer(const McpServer&) = delete;
  McpServer& operator=(const McpServer&) = delete;

  // Starts the thread, which spawns the child and initializes it in the
  // background; returns at once. Its tools appear when the listing is done.
  void start();
  // Kills the child (stdin closed, then SIGKILL to its process group after
  // a short grace), removes the server's tools and joins the thread.
  void stop();

  const std::string& name() const;
  // Observability (any thread): the child's PID (0 while none runs), whether
  // its tools can run, and how many times it was started.
  int pid() const;
  bool ready() const;
  std::uint64_t starts() const;

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
  std::thread thread_;
};

}  // namespace synapse::cortex
