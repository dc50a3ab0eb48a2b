#include "cortex/fts_query.hpp"

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

std::string build_fts_query(std::string_view text) {
  std::string out;
  for (const auto& term : query_terms(text)) {
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
