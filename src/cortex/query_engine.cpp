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

json::object run_query(MemoryStore& memory, const RankingOptions& ranking, const QueryBudget& budget,
                       const Caller& caller, const QueryRequest& req, const CancelToken& cancel, std::size_t worker,
                       const ThoughtSink& thought) {
  auto checkpoint = [&] {
    if (cancel.cancelled()) throw Cancelled{};
  };

  // The same term rule the recall applies (it computes them again: a few
  // microseconds, against keeping the thought and the search in step).
  const SearchTerms terms = search_terms(req.q, budget.max_terms);
  json::array term_list;
  for (const auto& t : terms.terms) term_list.emplace_back(t);
  json::object processing{
      {"type", "processing"},
      {"content", terms.dropped == 0
                      ? fmt::format("Parsing the query: {} characters, {} search terms", req.q.size(), terms.terms.size())
                      : fmt::format("Parsing the query: {} characters, {} search terms ({} more dropped: at most {})",
                                    req.q.size(), terms.terms.size(), terms.dropped, budget.max_terms)},
      {"terms", std::move(term_list)}};
  if (terms.dropped > 0) processing["dropped_terms"] = terms.dropped;
  thought(std::move(processing));
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

  Recall recall = memory.recall(worker, caller, req.q, ranking.candidates, budget.start(cancel));
  auto candidates = std::move(recall.candidates);
  const bool literal = !candidates.empty() && candidates.front().literal;
  json::object recalled{{"type", "memory_recall"},
                        {"content", fmt::format("Recalled {} candidate memories{}{}", candidates.size(),
                                                literal ? " by literal match" : " by full-text match",
                                                recall.partial ? fmt::format(" (partial: the {} ms search budget ran out)",
                                                                             budget.time.count())
                                                               : std::string())},
                        {"candidates", candidates.size()},
                        {"method", literal ? "literal" : "fts5_bm25"}};
  if (recall.partial) {
    recalled["partial"] = true;
    recalled["budget_ms"] = budget.time.count();
  }
  thought(std::move(recalled));
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
  return json::object{
      {"store", route.store}, {"query", req.q}, {"results", std::move(results)}, {"partial", recall.partial}};
}

}  // namespace synapse::cortex
