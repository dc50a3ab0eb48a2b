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

}  // namespace synapse::cortex
