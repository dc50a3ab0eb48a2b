// API keys in SQLite. Only a SHA-256 of each key is stored; a presented key is
// found by its public id and its hash compared in constant time.
//
// Records found are cached in memory (id -> record and hash), so a handshake
// costs a hash, a map lookup and `PRAGMA data_version`, not a query. The
// pragma changes whenever another connection (`synapse keys revoke`, another
// server on the same file) has committed: the cache is then dropped before
// the lookup, so a key revoked anywhere is refused by the first handshake
// after the revoke returned, with no window until the next poll. The
// server's revocation poll (revoked_ids()) still closes live connections.
//
// Thread safety: every method takes the store's mutex; the server's I/O
// threads call authenticate() during handshakes.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "auth/principal.hpp"

namespace synapse::store {
class Database;
class Statement;
}

namespace synapse::auth {

struct ApiKey {
  std::string id;  // public, e.g. "k3f9a0c21d4e7"
  std::string name;
  std::string agent_id;
  std::string tenant;
  bool admin = false;
  bool publish = false;
  bool unlimited = false;
  bool worker = false;  // serves agents (agent: topics) instead of querying them
  RateOverrides rates;
  std::optional<Capabilities> caps;  // channel capabilities; none = unrestricted
  std::int64_t created_at = 0;  // unix seconds
  std::optional<std::int64_t> revoked_at;
};

struct NewKey {
  std::string name;
  std::string agent_id;  // defaults to name
  std::string tenant;    // defaults to "default"
  bool admin = false;
  bool publish = false;
  bool unlimited = false;
  bool worker = false;
  RateOverrides rates;
  std::optional<Capabilities> caps;
};

enum class KeyCheck { ok, unknown, revoked };

class KeyStore {
 public:
  explicit KeyStore(const std::string& db_path);
  ~KeyStore();

  // Returns the stored record and the secret key, which is never stored.
  std::pair<ApiKey, std::string> create(const NewKey& spec);
  std::vector<ApiKey> list();
  // False when no such key; revoking twice is not an error.
  bool revoke(std::string_view id);
  std::optional<ApiKey> find(std::string_view id);
  // The stored SHA-256 of a key's secret (for announcing the row to a
  // cluster: the hash, never the secret), empty if no such key.
  std::string hash_of(std::string_view id);
  // Records a key created elsewhere (another host, through Redis). A row
  // already present is left as it is, except that a revocation is kept.
  // Returns true when the row was new.
  bool import(const ApiKey& key, std::string_view hash);
  KeyCheck authenticate(std::string_view presented, ApiKey& out);
  // Ids of every revoked key (the server polls this to close live connections).
  std::vector<std::string> revoked_ids();
  // Drops cached records, so the next lookup of these ids reads the database.
  // The server calls it for keys it sees revoked (perhaps by another process).
  void evict(const std::vector<std::string>& ids);
  std::int64_t count();
  // Whether the last use of the database worked; probe() tries it now (a
  // cheap read of the keys table) and updates the answer. /health/ready
  // reports the store unhealthy while it fails.
  bool healthy() const noexcept { return healthy_.load(std::memory_order_relaxed); }
  bool probe();

  // `syn_<id>_<secret>` -> id, or empty when `presented` is not of that form.
  static std::string_view key_id_of(std::string_view presented) noexcept;
  static Principal principal_of(const ApiKey& key);
  // A key row as JSON for other hosts: every field of ApiKey and the hash
  // (hex), never the secret. parse_row() refuses anything malformed.
  static std::string row_json(const ApiKey& key, std::string_view hash);
  static std::optional<std::pair<ApiKey, std::string>> parse_row(std::string_view json_text);

 private:
  struct Cached {
    ApiKey key;
    std::string hash;
  };
  // Under mu_. Loads `id` from the database into the cache; null if absent.
  const Cached* load(std::string_view id);
  // Under mu_. Drops the cache if another connection committed since the
  // last call (PRAGMA data_version).
  void sync();
  // Runs `f` under mu_, recording whether the database answered.
  template <class F>
  auto guarded(F&& f) -> decltype(f());

  std::mutex mu_;
  std::atomic<bool> healthy_{true};
  std::int64_t data_version_ = -1;
  std::unique_ptr<store::Database> db_;
  // sync()'s statement, prepared once (every handshake runs it); declared
  // after db_ so that it is finalized first.
  std::unique_ptr<store::Statement> data_version_stmt_;
  std::unordered_map<std::string, Cached> cache_;
};

}  // namespace synapse::auth
