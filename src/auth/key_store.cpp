#include "auth/key_store.hpp"

#include <chrono>
#include <type_traits>

#include "auth/crypto.hpp"
#include "store/sqlite.hpp"

namespace synapse::auth {
namespace {

constexpr std::string_view key_prefix = "syn_";

std::int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

ApiKey read_row(const store::Statement& st) {
  ApiKey k;
  k.id = st.text(0);
  k.name = st.text(1);
  k.agent_id = st.text(2);
  k.tenant = st.text(3);
  k.admin = st.int64(4) != 0;
  k.publish = st.int64(5) != 0;
  k.unlimited = st.int64(6) != 0;
  k.rates.msgs_per_min = st.is_null(7) ? -1 : st.int64(7);
  k.rates.queries_per_min = st.is_null(8) ? -1 : st.int64(8);
  k.rates.burst = st.is_null(9) ? -1 : st.int64(9);
  k.created_at = st.int64(10);
  if (!st.is_null(11)) k.revoked_at = st.int64(11);
  return k;
}

constexpr const char* select_columns =
    "SELECT id, name, agent_id, tenant, admin, publish, unlimited, msgs_per_min, "
    "queries_per_min, burst, created_at, revoked_at FROM api_keys";

void bind_rate(store::Statement& st, int idx, std::int64_t v) {
  if (v < 0) {
    st.bind_null(idx);
  } else {
    st.bind(idx, v);
  }
}

}  // namespace

KeyStore::KeyStore(const std::string& db_path) : db_(std::make_unique<store::Database>(db_path)) {
  db_->exec(R"sql(
    CREATE TABLE IF NOT EXISTS api_keys (
      id TEXT PRIMARY KEY,
      name TEXT NOT NULL,
      agent_id TEXT NOT NULL,
      tenant TEXT NOT NULL DEFAULT 'default',
      hash BLOB NOT NULL,
      admin INTEGER NOT NULL DEFAULT 0,
      publish INTEGER NOT NULL DEFAULT 0,
      unlimited INTEGER NOT NULL DEFAULT 0,
      msgs_per_min INTEGER,
      queries_per_min INTEGER,
      burst INTEGER,
      created_at INTEGER NOT NULL,
      revoked_at INTEGER
    ))sql");
}

KeyStore::~KeyStore() = default;

template <class F>
auto KeyStore::guarded(F&& f) -> decltype(f()) {
  std::lock_guard lock(mu_);
  try {
    if constexpr (std::is_void_v<decltype(f())>) {
      f();
      healthy_.store(true, std::memory_order_relaxed);
    } else {
      auto r = f();
      healthy_.store(true, std::memory_order_relaxed);
      return r;
    }
  } catch (...) {
    healthy_.store(false, std::memory_order_relaxed);
    throw;
  }
}

void KeyStore::sync() {
  store::Statement st(*db_, "PRAGMA data_version");
  const std::int64_t v = st.step() ? st.int64(0) : -1;
  if (v != data_version_) {
    cache_.clear();
    data_version_ = v;
  }
}

bool KeyStore::probe() {
  try {
    return guarded([&] {
      store::Statement st(*db_, "SELECT COUNT(*) FROM (SELECT 1 FROM api_keys LIMIT 1)");
      st.step();
      return true;
    });
  } catch (const std::exception&) {
    return false;
  }
}

std::string_view KeyStore::key_id_of(std::string_view presented) noexcept {
  if (!presented.starts_with(key_prefix)) return {};
  const auto rest = presented.substr(key_prefix.size());
  const auto sep = rest.find('_');
  if (sep == std::string_view::npos || sep == 0 || sep > 32) return {};
  return rest.substr(0, sep);
}

std::pair<ApiKey, std::string> KeyStore::create(const NewKey& spec) {
  ApiKey k;
  k.id = "k" + hex_encode(random_bytes(6));
  k.name = spec.name;
  k.agent_id = spec.agent_id.empty() ? spec.name : spec.agent_id;
  k.tenant = spec.tenant.empty() ? "default" : spec.tenant;
  k.admin = spec.admin;
  k.publish = spec.publish;
  k.unlimited = spec.unlimited;
  k.rates = spec.rates;
  k.created_at = unix_now();
  std::string secret = std::string(key_prefix) + k.id + "_" + base64url_encode(random_bytes(32));
  const Digest h = sha256(secret);

  std::lock_guard lock(mu_);
  store::Statement st(*db_,
                      "INSERT INTO api_keys (id, name, agent_id, tenant, hash, admin, publish, "
                      "unlimited, msgs_per_min, queries_per_min, burst, created_at) "
                      "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)");
  st.bind(1, k.id).bind(2, k.name).bind(3, k.agent_id).bind(4, k.tenant);
  st.bind_blob(5, h.data(), h.size());
  st.bind(6, std::int64_t{k.admin}).bind(7, std::int64_t{k.publish}).bind(8, std::int64_t{k.unlimited});
  bind_rate(st, 9, k.rates.msgs_per_min);
  bind_rate(st, 10, k.rates.queries_per_min);
  bind_rate(st, 11, k.rates.burst);
  st.bind(12, k.created_at);
  st.run();
  return {std::move(k), std::move(secret)};
}

std::vector<ApiKey> KeyStore::list() {
  std::lock_guard lock(mu_);
  store::Statement st(*db_, std::string(select_columns) + " ORDER BY created_at, id");
  std::vector<ApiKey> out;
  while (st.step()) out.push_back(read_row(st));
  return out;
}

bool KeyStore::revoke(std::string_view id) {
  std::lock_guard lock(mu_);
  cache_.erase(std::string(id));
  store::Statement st(*db_, "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?1) WHERE id = ?2");
  st.bind(1, unix_now()).bind(2, id);
  st.run();
  return db_->changes() > 0;
}

const KeyStore::Cached* KeyStore::load(std::string_view id) {
  if (auto it = cache_.find(std::string(id)); it != cache_.end()) return &it->second;
  store::Statement q(*db_,
                     "SELECT id, name, agent_id, tenant, admin, publish, unlimited, msgs_per_min, "
                     "queries_per_min, burst, created_at, revoked_at, hash FROM api_keys WHERE id = ?1");
  q.bind(1, id);
  if (!q.step()) return nullptr;  // unknown ids are not cached: the table stays the bound
  Cached c{read_row(q), q.blob(12)};
  return &cache_.insert_or_assign(std::string(id), std::move(c)).first->second;
}

std::optional<ApiKey> KeyStore::find(std::string_view id) {
  return guarded([&]() -> std::optional<ApiKey> {
    sync();
    const Cached* c = load(id);
    if (!c) return std::nullopt;
    return c->key;
  });
}

KeyCheck KeyStore::authenticate(std::string_view presented, ApiKey& out) {
  const std::string_view id = key_id_of(presented);
  const Digest h = sha256(presented);
  if (id.empty()) return KeyCheck::unknown;
  return guarded([&] {
    sync();
    const Cached* c = load(id);
    if (!c || !constant_time_equal(c->hash, as_view(h))) return KeyCheck::unknown;
    out = c->key;
    return out.revoked_at ? KeyCheck::revoked : KeyCheck::ok;
  });
}

void KeyStore::evict(const std::vector<std::string>& ids) {
  std::lock_guard lock(mu_);
  for (const auto& id : ids) cache_.erase(id);
}

std::vector<std::string> KeyStore::revoked_ids() {
  return guarded([&] {
    store::Statement st(*db_, "SELECT id FROM api_keys WHERE revoked_at IS NOT NULL");
    std::vector<std::string> out;
    while (st.step()) out.push_back(st.text(0));
    return out;
  });
}

std::int64_t KeyStore::count() {
  std::lock_guard lock(mu_);
  store::Statement st(*db_, "SELECT COUNT(*) FROM api_keys");
  return st.step() ? st.int64(0) : 0;
}

Principal KeyStore::principal_of(const ApiKey& key) {
  Principal p;
  p.agent_id = key.agent_id;
  p.tenant = key.tenant;
  p.key_id = key.id;
  p.admin = key.admin;
  p.publish = key.publish;
  p.unlimited = key.unlimited;
  p.rates = key.rates;
  return p;
}

}  // namespace synapse::auth
