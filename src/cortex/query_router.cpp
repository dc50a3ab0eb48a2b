#include "cortex/query_router.hpp"

#include <array>
#include <cctype>

namespace synapse::cortex {
namespace {

struct Cue {
  const char* text;
  int store;  // 0 semantic, 1 episodic, 2 procedural
};

constexpr const char* store_names[] = {"semantic", "episodic", "procedural"};

constexpr Cue cues[] = {
    // procedural
    {"how to", 2}, {"how do", 2}, {"how can", 2}, {"how should", 2}, {"step by step", 2}, {"set up", 2},
    {"steps", 2}, {"step", 2}, {"procedure", 2}, {"process", 2}, {"install", 2}, {"configure", 2},
    {"setup", 2}, {"deploy", 2}, {"build", 2}, {"run", 2}, {"fix", 2}, {"guide", 2}, {"instructions", 2},
    {"recipe", 2}, {"command", 2}, {"workflow", 2}, {"tutorial", 2},
    // episodic
    {"last week", 1}, {"last time", 1}, {"this morning", 1}, {"when", 1}, {"yesterday", 1}, {"today", 1},
    {"tonight", 1}, {"last", 1}, {"ago", 1}, {"remember", 1}, {"happened", 1}, {"did", 1}, {"earlier", 1},
    {"meeting", 1}, {"session", 1}, {"conversation", 1}, {"monday", 1}, {"tuesday", 1}, {"wednesday", 1},
    {"thursday", 1}, {"friday", 1}, {"saturday", 1}, {"sunday", 1}, {"recently", 1}, {"before", 1},
    // semantic
    {"what is", 0}, {"what are", 0}, {"who is", 0}, {"what", 0}, {"who", 0}, {"which", 0}, {"define", 0},
    {"definition", 0}, {"meaning", 0}, {"means", 0}, {"explain", 0}, {"fact", 0}, {"facts", 0}, {"why", 0},
    {"concept", 0},
};

std::string lower_words(std::string_view text) {
  // Lower-case ASCII, every other byte run collapsed to one space, padded
  // with spaces so whole-word matching is a substring search.
  std::string out = " ";
  for (char ch : text) {
    const auto c = static_cast<unsigned char>(ch);
    if (std::isalnum(c)) {
      out.push_back(static_cast<char>(std::tolower(c)));
    } else if (c >= 0x80) {
      out.push_back(ch);
    } else if (out.back() != ' ') {
      out.push_back(' ');
    }
  }
  if (out.back() != ' ') out.push_back(' ');
  return out;
}

}  // namespace

Route classify(std::string_view text) {
  const std::string words = lower_words(text);
  std::array<int, 3> score{0, 0, 0};
  Route r;
  for (const auto& cue : cues) {
    const std::string needle = std::string(" ") + cue.text + " ";
    if (words.find(needle) == std::string::npos) continue;
    const bool phrase = std::string_view(cue.text).find(' ') != std::string_view::npos;
    score[static_cast<std::size_t>(cue.store)] += phrase ? 2 : 1;
    r.cues.emplace_back(cue.text);
  }
  std::size_t best = 0;
  for (std::size_t i = 1; i < 3; ++i) {
    if (score[i] > score[best]) best = i;
  }
  const int total = score[0] + score[1] + score[2];
  r.store = store_names[best];
  r.confidence = static_cast<double>(1 + score[best]) / static_cast<double>(3 + total);
  return r;
}

}  // namespace synapse::cortex
