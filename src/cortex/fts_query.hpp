// Builds an FTS5 MATCH expression from user text so that the text is only
// ever data: every term becomes a double-quoted FTS5 string, so operators
// (OR, NEAR, NOT, *, ^, :, parentheses) in the input are searched as words.
// Pure; fuzzed.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace synapse::cortex {

inline constexpr std::size_t max_query_terms = 32;

// The search terms: runs of ASCII letters and digits, or of non-ASCII bytes
// (kept whole so UTF-8 characters stay intact), at most 32, in order.
std::vector<std::string> query_terms(std::string_view text);

// `"t1" OR "t2" ...`, or empty when the text has no terms.
std::string build_fts_query(std::string_view text);

// The terms a search uses under a term budget: the distinct terms of `text`
// (compared with ASCII letters case-folded, as the tokenizer folds them; the
// first spelling is kept), in order, at most `max_terms` of them. `dropped`
// counts the distinct terms past the budget, which are not searched.
struct SearchTerms {
  std::vector<std::string> terms;
  std::size_t dropped = 0;
};
SearchTerms search_terms(std::string_view text, std::size_t max_terms);

// `"t1" OR "t2" ...` over exactly these terms (empty for none).
std::string fts_expression(const std::vector<std::string>& terms);

}  // namespace synapse::cortex
