#include "cortex/query_engine.hpp"

#include <fmt/format.h>

#include "core/clock.hpp"
#include "cortex/fts_query.hpp"
#include "cortex/query_router.hpp"

namespace synapse::cortex {
namespace json = boost::json;

boost::json::object result_json(const Ranked& r) {
  json::array tags;
  for (const auto& t : r.rec.tags) tags.emplace_back(t);
  return json::object{{"id", r.rec.id},
                      {"content", r.rec.content},
                      {"score", std::round(r.score * 10000.0) / 10000.0},
                      {"tags", std::move(tags)},
                      {"created_at", r.rec.created_at_ms},
                      {"scope", r.rec.scope},
                      {"store", r.rec.store}};
}

json::object run_query(MemoryStore& memory, const RankingOptions& ranking, const Caller& caller,
                       const QueryRequest& req, const CancelToken& cancel, std::size_t worker,
                       const ThoughtSink& thought) {
  auto checkpoint = [&] {
    if (cancel.cancelled()) throw Cancelled{};
  };

  const auto terms = query_terms(req.q);
  json::array term_list;
  for (const auto& t : terms) term_list.emplace_back(t);
  thought({{"type", "processing"},
           {"content", fmt::format("Parsing the query: {} characters, {} search terms", req.q.size(), terms.size())},
           {"terms", std::move(term_list)}});
  checkpoint();

  const Route route = classify(req.q);
  json::array cue_list;
  for (const auto& c : route.cues) cue_list.emplace_back(c);
  thought({{"type", "routing"},
           {"content", fmt::format("Routed to the {} store (confidence {:.2f})", route.store, route.confidence)},
           {"store", route.store},
           {"confidence", std::round(route.confidence * 1000.0) / 1000.0},
           {"cues", std::move(cue_list)}});
  checkpoint();

  auto candidates = memory.recall(worker, caller, req.q, ranking.candidates);
  const bool literal = !candidates.empty() && candidates.front().literal;
  thought({{"type", "memory_recall"},
           {"content", fmt::format("Recalled {} candidate memories{}", candidates.size(),
                                   literal ? " by literal match" : " by full-text match")},
           {"candidates", candidates.size()},
           {"method", literal ? "literal" : "fts5_bm25"}});
  checkpoint();

  const std::size_t n = candidates.size();
  auto ranked = rank(std::move(candidates), ranking, route.store, unix_ms(), req.limit);
  thought({{"type", "ranking"},
           {"content", fmt::format("Ranked {} memories by relevance, recency and importance; kept {}", n, ranked.size())},
           {"weights",
            {{"bm25", ranking.bm25_weight},
             {"recency", ranking.recency_weight},
             {"importance", ranking.importance_weight},
             {"store", ranking.store_weight}}},
           {"top_score", ranked.empty() ? 0.0 : std::round(ranked.front().score * 10000.0) / 10000.0}});
  checkpoint();

  json::array results;
  for (const auto& r : ranked) results.push_back(result_json(r));
  return json::object{{"store", route.store}, {"query", req.q}, {"results", std::move(results)}};
}

}  // namespace synapse::cortex
