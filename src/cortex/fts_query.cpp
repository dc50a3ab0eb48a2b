#include "cortex/fts_query.hpp"

#include <unordered_set>

namespace synapse::cortex {
namespace {
bool term_byte(unsigned char c) noexcept {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c >= 0x80;
}
}  // namespace

std::vector<std::string> query_terms(std::string_view text) {
  std::vector<std::string> terms;
  std::size_t i = 0;
  while (i < text.size() && terms.size() < max_query_terms) {
    while (i < text.size() && !term_byte(static_cast<unsigned char>(text[i]))) ++i;
    const std::size_t start = i;
    while (i < text.size() && term_byte(static_cast<unsigned char>(text[i]))) ++i;
    if (i > start) terms.emplace_back(text.substr(start, i - start));
  }
  return terms;
}

std::string build_fts_query(std::string_view text) { return fts_expression(query_terms(text)); }

SearchTerms search_terms(std::string_view text, std::size_t max_terms) {
  SearchTerms out;
  std::unordered_set<std::string> seen;
  std::size_t i = 0;
  // The whole text is scanned (it is bounded by cortex.max_query_chars or the
  // tool's schema) so that `dropped` is exact.
  while (i < text.size()) {
    while (i < text.size() && !term_byte(static_cast<unsigned char>(text[i]))) ++i;
    const std::size_t start = i;
    while (i < text.size() && term_byte(static_cast<unsigned char>(text[i]))) ++i;
    if (i == start) continue;
    const std::string_view term = text.substr(start, i - start);
    std::string folded(term);
    for (char& c : folded) {
      if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    }
    if (!seen.insert(std::move(folded)).second) continue;
    if (out.terms.size() < max_terms) {
      out.terms.emplace_back(term);
    } else {
      ++out.dropped;
    }
  }
  return out;
}

std::string fts_expression(const std::vector<std::string>& terms) {
  std::string out;
  for (const auto& term : terms) {
    if (!out.empty()) out += " OR ";
    out.push_back('"');
    // Terms hold no quote by construction; doubling keeps that true even if
    // the term rule ever changes.
    for (char c : term) {
      if (c == '"') out.push_back('"');
      out.push_back(c);
    }
    out.push_back('"');
  }
  return out;
}

}  // namespace synapse::cortex
