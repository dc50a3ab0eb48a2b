#include "cortex/cortex.hpp"

namespace synapse::cortex {

Cortex::Cortex(const CortexOptions& options, const std::string& db_path)
    : options_(options), memory_(db_path, options.workers), pool_(options.workers, options.queue_limit, options.tenant_queue_limit) {}

Cortex::~Cortex() { pool_.stop(); }

namespace {

// A blocking built-in tool behind the asynchronous seam. start() queues the
// call on the worker pool, in the caller's fairness lane, and returns; the
// worker that takes it runs the tool and completes the call through its
// callbacks. Cancellation reaches it through the CancelToken the worker
// checks (and sleeps on), so no cancel hook is needed. The pool is the
// built-in provider's concurrency budget: MCP calls never take a worker.
class PooledTool final : public Tool {
 public:
  PooledTool(std::unique_ptr<BlockingTool> tool, WorkerPool& pool) : tool_(std::move(tool)), pool_(pool) {}
  const ToolSpec& spec() const override { return tool_->spec(); }

  StartResult start(ToolCall call) const override {
    const Lane lane{call.caller.tenant, call.caller.key};
    // The job holds a shared_ptr to the call's state; `tool_` outlives it
    // because the pool is stopped before the cortex (and its tools) goes.
    auto job = [tool = tool_.get(), c = std::make_shared<ToolCall>(std::move(call))](std::size_t worker) {
      if (c->cancel->cancelled()) return;
      ToolContext ctx{c->caller, *c->cancel, c->callbacks.progress, worker};
      ToolOutcome out;
      try {
        out.data = tool->run(c->args, ctx);
      } catch (const Cancelled&) {
        return;
      } catch (const std::exception& e) {
        out.kind = ToolOutcome::Kind::tool_error;
        out.message = e.what();
      }
      c->callbacks.done(std::move(out));
    };
    return StartResult{pool_.try_submit(lane, std::move(job))};
  }

 private:
  std::unique_ptr<BlockingTool> tool_;
  WorkerPool& pool_;
};

}  // namespace

void Cortex::add_tool(std::unique_ptr<BlockingTool> tool) {
  const std::string& name = tool->spec().name;
  tools_.claim("builtin", name.substr(0, name.find('.')));
  tools_.add("builtin", std::make_shared<PooledTool>(std::move(tool), pool_));
}

}  // namespace synapse::cortex
