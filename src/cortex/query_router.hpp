// Classifies a query (or a memory) into one of three stores, by cue words:
//   procedural: how to do something   ("how to", "steps", "install", ...)
//   episodic:   what happened, when   ("when", "yesterday", "last", ...)
//   semantic:   facts and meanings    ("what", "who", "define", ...)
// Each matching cue adds its weight (phrases 2, words 1) to its store; the
// highest score wins, ties and no cues go to semantic. Confidence is
// (1 + winner) / (3 + total): 1/3 with no evidence, towards 1 as cues agree.
// The full cue lists are in query_router.cpp and docs/cortex.md.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace synapse::cortex {

struct Route {
  std::string store;  // "semantic", "episodic" or "procedural"
  double confidence = 0;
  std::vector<std::string> cues;  // the cues that matched, for the thought
};

Route classify(std::string_view text);

}  // namespace synapse::cortex
