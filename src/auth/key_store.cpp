#include "auth/key_store.hpp"

#include <boost/json.hpp>
#include <chrono>
#include <type_traits>

#include "core/crypto.hpp"
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
  // A stored caps text that no longer parses restricts to nothing rather
  // than to everything: a damaged row must not widen a key.
  if (!st.is_null(12)) k.caps = parse_capabilities_text(st.text(12)).value_or(Capabilities{});
  k.worker = st.int64(13) != 0;
  return k;
}

constexpr const char* select_columns =
    "SELECT id, name, agent_id, tenant, admin, publish, unlimited, msgs_per_min, "
    "queries_per_min, burst, created_at, revoked_at, caps, worker FROM api_keys";

void bind_rate(store::Statement& st, int idx, std::int64_t v) {
  if (v < 0) {
    st.bind_null(idx);
  } else {
    st.bind(idx, v);
  }
}

// The INSERT of one key row, with or without OR IGNORE: `create` writes a
// new key, `import` one learnt from another host.
constexpr const char* insert_columns =
    " INTO api_keys (id, name, agent_id, tenant, hash, admin, publish, unlimited, msgs_per_min, "
    "queries_per_min, burst, created_at, caps, revoked_at, worker) "
    "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)";

void bind_key_row(store::Statement& st, const ApiKey& k, std::string_view hash) {
  st.bind(1, k.id).bind(2, k.name).bind(3, k.agent_id).bind(4, k.tenant);
  st.bind_blob(5, hash.data(), hash.size());
  st.bind(6, std::int64_t{k.admin}).bind(7, std::int64_t{k.publish}).bind(8, std::int64_t{k.unlimited});
  bind_rate(st, 9, k.rates.msgs_per_min);
  bind_rate(st, 10, k.rates.queries_per_min);
  bind_rate(st, 11, k.rates.burst);
  st.bind(12, k.created_at);
  if (k.caps) {
    st.bind(13, capabilities_json(*k.caps));
  } else {
    st.bind_null(13);
  }
  if (k.revoked_at) {
    st.bind(14, *k.revoked_at);
  } else {
    st.bind_null(14);
  }
  st.bind(15, std::int64_t{k.worker});
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
  // Databases made before channel capabilities have no caps column.
  bool has_caps = false;
  {
    store::Statement st(*db_, "PRAGMA table_info(api_keys)");
    while (st.step()) has_caps |= st.text(1) == "caps";
  }
  if (!has_caps) db_->exec("ALTER TABLE api_keys ADD COLUMN caps TEXT");
  // ... and databases made before agent workers no worker column.
  bool has_worker = false;
  {
    store::Statement st(*db_, "PRAGMA table_info(api_keys)");
    while (st.step()) has_worker |= st.text(1) == "worker";
  }
  if (!has_worker) db_->exec("ALTER TABLE api_keys ADD COLUMN worker INTEGER NOT NULL DEFAULT 0");
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
  if (!data_version_stmt_) data_version_stmt_ = std::make_unique<store::Statement>(*db_, "PRAGMA data_version");
  store::Statement& st = *data_version_stmt_;
  // Reset whatever happens: a stepped statement keeps its read transaction.
  struct Reset {
    store::Statement& s;
    ~Reset() { s.reset(); }
  } reset{st};
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
  k.id = "k" + core::hex_encode(core::random_bytes(6));
  k.name = spec.name;
  k.agent_id = spec.agent_id.empty() ? spec.name : spec.agent_id;
  k.tenant = spec.tenant.empty() ? "default" : spec.tenant;
  k.admin = spec.admin;
  k.publish = spec.publish;
  k.unlimited = spec.unlimited;
  k.worker = spec.worker;
  k.rates = spec.rates;
  k.caps = spec.caps;
  k.created_at = unix_now();
  std::string secret = std::string(key_prefix) + k.id + "_" + core::base64url_encode(core::random_bytes(32));
  const core::Digest h = core::sha256(secret);

  std::lock_guard lock(mu_);
  store::Statement st(*db_, std::string("INSERT") + insert_columns);
  bind_key_row(st, k, core::as_view(h));
  st.run();
  return {std::move(k), std::move(secret)};
}

std::string KeyStore::hash_of(std::string_view id) {
  return guarded([&] {
    store::Statement q(*db_, "SELECT hash FROM api_keys WHERE id = ?1");
    q.bind(1, id);
    return q.step() ? q.blob(0) : std::string();
  });
}

bool KeyStore::import(const ApiKey& k, std::string_view hash) {
  return guarded([&] {
    store::Statement st(*db_, std::string("INSERT OR IGNORE") + insert_columns);
    bind_key_row(st, k, hash);
    st.run();
    const bool added = db_->changes() > 0;
    // Unknown ids are never cached, so the next handshake reads the new row.
    cache_.erase(k.id);
    return added;
  });
}

std::string KeyStore::row_json(const ApiKey& k, std::string_view hash) {
  namespace json = boost::json;
  json::object o{{"id", k.id},
                 {"name", k.name},
                 {"agent_id", k.agent_id},
                 {"tenant", k.tenant},
                 {"hash", core::hex_encode(hash)},
                 {"admin", k.admin},
                 {"publish", k.publish},
                 {"unlimited", k.unlimited},
                 {"worker", k.worker},
                 {"msgs_per_min", k.rates.msgs_per_min},
                 {"queries_per_min", k.rates.queries_per_min},
                 {"burst", k.rates.burst},
                 {"created_at", k.created_at}};
  if (k.caps) o["caps"] = json::parse(capabilities_json(*k.caps));
  if (k.revoked_at) o["revoked_at"] = *k.revoked_at;
  return json::serialize(o);
}

std::optional<std::pair<ApiKey, std::string>> KeyStore::parse_row(std::string_view text) {
  namespace json = boost::json;
  boost::system::error_code ec;
  json::value v = json::parse(text, ec);
  if (ec || !v.is_object()) return std::nullopt;
  const auto& o = v.as_object();
  auto str = [&](const char* name, std::string& out) {
    const json::value* f = o.if_contains(name);
    if (!f || !f->is_string()) return false;
    out = std::string(f->as_string());
    return true;
  };
  auto flag = [&](const char* name, bool& out) {
    const json::value* f = o.if_contains(name);
    if (f && !f->is_bool()) return false;
    out = f && f->as_bool();
    return true;
  };
  auto num = [&](const char* name, std::int64_t& out, std::int64_t fallback) {
    const json::value* f = o.if_contains(name);
    if (!f) {
      out = fallback;
      return true;
    }
    if (!f->is_int64()) return false;
    out = f->as_int64();
    return true;
  };
  ApiKey k;
  std::string hash_hex;
  if (!str("id", k.id) || !str("name", k.name) || !str("agent_id", k.agent_id) || !str("tenant", k.tenant) ||
      !str("hash", hash_hex)) {
    return std::nullopt;
  }
  if (k.id.empty() || k.id.size() > 32 || k.agent_id.empty() || hash_hex.size() != 64) return std::nullopt;
  if (!flag("admin", k.admin) || !flag("publish", k.publish) || !flag("unlimited", k.unlimited) ||
      !flag("worker", k.worker)) {
    return std::nullopt;
  }
  if (!num("msgs_per_min", k.rates.msgs_per_min, -1) || !num("queries_per_min", k.rates.queries_per_min, -1) ||
      !num("burst", k.rates.burst, -1) || !num("created_at", k.created_at, unix_now())) {
    return std::nullopt;
  }
  if (const json::value* r = o.if_contains("revoked_at")) {
    if (!r->is_int64()) return std::nullopt;
    k.revoked_at = r->as_int64();
  }
  if (const json::value* c = o.if_contains("caps")) {
    k.caps = parse_capabilities(*c);
    if (!k.caps) return std::nullopt;
  }
  std::string hash;
  for (std::size_t i = 0; i < hash_hex.size(); i += 2) {
    auto nib = [](char ch) -> int {
      if (ch >= '0' && ch <= '9') return ch - '0';
      if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
      return -1;
    };
    const int hi = nib(hash_hex[i]), lo = nib(hash_hex[i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    hash.push_back(static_cast<char>(hi * 16 + lo));
  }
  return std::make_pair(std::move(k), std::move(hash));
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
                     "queries_per_min, burst, created_at, revoked_at, caps, worker, hash FROM api_keys WHERE id = ?1");
  q.bind(1, id);
  if (!q.step()) return nullptr;  // unknown ids are not cached: the table stays the bound
  Cached c{read_row(q), q.blob(14)};
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
  const core::Digest h = core::sha256(presented);
  if (id.empty()) return KeyCheck::unknown;
  return guarded([&] {
    sync();
    const Cached* c = load(id);
    if (!c || !core::constant_time_equal(c->hash, core::as_view(h))) return KeyCheck::unknown;
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
  p.worker = key.worker;
  p.rates = key.rates;
  p.key_caps = key.caps;
  return p;
}

}  // namespace synapse::auth
