// Fuzzes cortex::build_fts_query against a real SQLite FTS5 table.
//
// The input is the user's search text. Checked:
//   - the terms are exactly the maximal runs of ASCII letters/digits or bytes
//     >= 0x80, at most 32, in order, and the query is `"t1" OR "t2" ...`;
//   - the query never makes FTS5 report an error (`MATCH ?`, bound, as in
//     cortex/memory_store.cpp, on a table with the same tokenizer);
//   - literal search: with the whole text stored as one document and each
//     term as another, each term's own query finds its document and the
//     whole text, and the full query finds the whole text, whenever the term
//     holds something the tokenizer indexes (a term made only of non-ASCII
//     punctuation, like "«»", has no token: its phrase is empty and matches
//     nothing, without an error).
#include <sqlite3.h>

#include <cstdint>
#include <cstdlib>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "cortex/fts_query.hpp"
#include "fuzz_check.hpp"

using namespace synapse::cortex;
using synapse::fuzz::escaped;

namespace {

struct Db {
  sqlite3* db = nullptr;
  sqlite3_stmt* insert = nullptr;
  sqlite3_stmt* match = nullptr;
  sqlite3_stmt* tokens = nullptr;

  Db() {
    if (sqlite3_open(":memory:", &db) != SQLITE_OK) std::abort();
    // The tokenizer of memories_fts in cortex/memory_store.cpp.
    exec("CREATE VIRTUAL TABLE docs USING fts5(content, tokenize='unicode61 remove_diacritics 2');"
         "CREATE VIRTUAL TABLE docs_tokens USING fts5vocab(docs, 'instance');");
    prepare("INSERT INTO docs (rowid, content) VALUES (?1, ?2)", insert);
    prepare("SELECT rowid FROM docs WHERE docs MATCH ?1", match);
    prepare("SELECT count(*) FROM docs_tokens WHERE doc = ?1", tokens);
  }
  void exec(const char* sql) {
    char* err = nullptr;
    if (sqlite3_exec(db, sql, nullptr, nullptr, &err) != SQLITE_OK) {
      std::fprintf(stderr, "%s: %s\n", sql, err ? err : "?");
      std::abort();
    }
  }
  void prepare(const char* sql, sqlite3_stmt*& st) {
    if (sqlite3_prepare_v2(db, sql, -1, &st, nullptr) != SQLITE_OK) {
      std::fprintf(stderr, "%s: %s\n", sql, sqlite3_errmsg(db));
      std::abort();
    }
  }
  void add(std::int64_t rowid, std::string_view text) {
    sqlite3_bind_int64(insert, 1, rowid);
    sqlite3_bind_text(insert, 2, text.data(), static_cast<int>(text.size()), SQLITE_TRANSIENT);
    FUZZ_CHECK(sqlite3_step(insert) == SQLITE_DONE, std::string("insert: ") + sqlite3_errmsg(db));
    sqlite3_reset(insert);
  }
  std::int64_t token_count(std::int64_t rowid) {
    sqlite3_bind_int64(tokens, 1, rowid);
    FUZZ_CHECK(sqlite3_step(tokens) == SQLITE_ROW, sqlite3_errmsg(db));
    const std::int64_t n = sqlite3_column_int64(tokens, 0);
    sqlite3_reset(tokens);
    return n;
  }
  // Rows matching `query`; an FTS5 error fails the run.
  std::set<std::int64_t> search(const std::string& query, std::string_view input) {
    std::set<std::int64_t> rows;
    sqlite3_bind_text(match, 1, query.data(), static_cast<int>(query.size()), SQLITE_TRANSIENT);
    int rc;
    while ((rc = sqlite3_step(match)) == SQLITE_ROW) rows.insert(sqlite3_column_int64(match, 0));
    const std::string err = sqlite3_errmsg(db);
    sqlite3_reset(match);
    FUZZ_CHECK(rc == SQLITE_DONE, "FTS5 refused the query (" + err + ")\n    query: " + escaped(query, 400) +
                                      "\n    input: " + escaped(input, 400));
    return rows;
  }
};

bool term_byte(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c >= 0x80;
}

std::vector<std::string> expected_terms(std::string_view text) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : text) {
    if (term_byte(static_cast<unsigned char>(c))) {
      cur.push_back(c);
    } else if (!cur.empty()) {
      out.push_back(cur);
      cur.clear();
    }
  }
  if (!cur.empty()) out.push_back(cur);
  if (out.size() > max_query_terms) out.resize(max_query_terms);
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static Db db;
  if (size > 8192) return 0;  // the protocol's limit on `q`
  const std::string_view text(reinterpret_cast<const char*>(data), size);

  const std::vector<std::string> terms = query_terms(text);
  const std::string query = build_fts_query(text);
  FUZZ_CHECK(terms == expected_terms(text), "query_terms differs from the maximal runs: " + escaped(text));
  std::string expected_query;
  for (const auto& t : terms) {
    if (!expected_query.empty()) expected_query += " OR ";
    expected_query += "\"" + t + "\"";
  }
  FUZZ_CHECK(query == expected_query, "query is not the quoted terms: " + escaped(query));
  if (query.empty()) return 0;  // the caller scans literally instead (memory_store.cpp)

  // Each input starts from an empty table: the documents live in a
  // transaction that is rolled back (FTS5 queries see its pending rows).
  db.exec("BEGIN;");
  db.add(1, text);
  for (std::size_t i = 0; i < terms.size(); ++i) db.add(static_cast<std::int64_t>(i) + 2, terms[i]);

  const std::set<std::int64_t> all = db.search(query, text);
  bool any_tokens = false;
  for (std::size_t i = 0; i < terms.size(); ++i) {
    const auto rowid = static_cast<std::int64_t>(i) + 2;
    const std::string one = build_fts_query(terms[i]);
    FUZZ_CHECK(one == "\"" + terms[i] + "\"", "a single term is not quoted alone: " + escaped(one));
    const std::set<std::int64_t> rows = db.search(one, text);
    if (db.token_count(rowid) == 0) {
      FUZZ_CHECK(rows.empty(), "a term without tokens matched something: " + escaped(terms[i]));
      continue;
    }
    any_tokens = true;
    FUZZ_CHECK(rows.count(rowid) == 1, "a term does not find itself: " + escaped(terms[i]));
    FUZZ_CHECK(rows.count(1) == 1, "a term does not find the text it came from: " + escaped(terms[i]));
    FUZZ_CHECK(all.count(rowid) == 1, "the full query misses a term's document: " + escaped(terms[i]));
  }
  if (any_tokens) FUZZ_CHECK(all.count(1) == 1, "the full query does not find its own text");
  db.exec("ROLLBACK;");
  return 0;
}
