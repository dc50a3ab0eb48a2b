// A query against the memory engine, reporting each step as a thought:
// processing -> routing -> memory_recall -> ranking, then the result data
// {store, query, results: [{id, content, score, tags, created_at}], partial}.
#pragma once

#include <boost/json.hpp>
#include <functional>
#include <string>

#include "cortex/memory_store.hpp"
#include "cortex/tool.hpp"

namespace synapse::cortex {

struct QueryRequest {
  std::string q;
  std::size_t limit = 10;
};

using ThoughtSink = std::function<void(boost::json::object thought)>;

// Runs on a worker. Throws Cancelled when the token is cancelled between
// steps or while SQLite searches. The recall runs under `budget`: past its
// deadline the result carries `partial: true` (docs/cortex.md, "Query cost").
boost::json::object run_query(MemoryStore& memory, const RankingOptions& ranking, const QueryBudget& budget,
                              const Caller& caller, const QueryRequest& req, const CancelToken& cancel,
                              std::size_t worker, const ThoughtSink& thought);

// The shape of one result, shared by queries and memory.search.
boost::json::object result_json(const Ranked& r);

}  // namespace synapse::cortex
