// API keys: stored only as hashes, found by id, compared in constant time.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdlib>
#include <filesystem>

#include "auth/key_store.hpp"
#include "store/sqlite.hpp"

using namespace synapse;

namespace {
struct TempDb {
  std::filesystem::path dir = std::filesystem::temp_directory_path() /
                              ("synapse-keys-" + std::to_string(::getpid()) + "-" + std::to_string(rand()));
  TempDb() { std::filesystem::create_directories(dir); }
  ~TempDb() { std::filesystem::remove_all(dir); }
  std::string path() const { return (dir / "synapse.db").string(); }
};
}  // namespace

TEST(KeyStore, CreateAuthenticateListRevoke) {
  TempDb tmp;
  auth::KeyStore store(tmp.path());
  EXPECT_EQ(store.count(), 0);
  auth::NewKey spec;
  spec.name = "worker";
  spec.publish = true;
  spec.rates.msgs_per_min = 5;
  auto [key, secret] = store.create(spec);
  EXPECT_EQ(key.agent_id, "worker");  // defaults to the name
  EXPECT_EQ(key.tenant, "default");
  EXPECT_TRUE(secret.starts_with("syn_" + key.id + "_"));

  auth::ApiKey found;
  ASSERT_EQ(store.authenticate(secret, found), auth::KeyCheck::ok);
  EXPECT_EQ(found.id, key.id);
  EXPECT_TRUE(found.publish);
  EXPECT_EQ(found.rates.msgs_per_min, 5);
  EXPECT_EQ(found.rates.burst, -1);

  std::string wrong = secret;
  wrong.back() = wrong.back() == 'a' ? 'b' : 'a';
  EXPECT_EQ(store.authenticate(wrong, found), auth::KeyCheck::unknown);
  EXPECT_EQ(store.authenticate("syn_nosuchid_xxx", found), auth::KeyCheck::unknown);
  EXPECT_EQ(store.authenticate("garbage", found), auth::KeyCheck::unknown);

  ASSERT_EQ(store.list().size(), 1u);
  EXPECT_TRUE(store.revoke(key.id));
  EXPECT_TRUE(store.revoke(key.id));  // twice is fine
  EXPECT_FALSE(store.revoke("nope"));
  EXPECT_EQ(store.authenticate(secret, found), auth::KeyCheck::revoked);
  EXPECT_EQ(store.revoked_ids(), std::vector<std::string>{key.id});
}

TEST(KeyStore, StoresNoSecret) {
  TempDb tmp;
  std::string secret, id;
  {
    auth::KeyStore store(tmp.path());
    auth::NewKey spec;
    spec.name = "n";
    auto [key, s] = store.create(spec);
    secret = s;
    id = key.id;
  }
  store::Database db(tmp.path());
  store::Statement st(db, "SELECT * FROM api_keys");
  ASSERT_TRUE(st.step());
  // The random part follows "syn_<id>_". Not after the last '_': base64url
  // has '_' too, and a tail of a few characters may occur in a hash by chance.
  const std::string head = "syn_" + id + "_";
  ASSERT_EQ(secret.rfind(head, 0), 0u) << secret;
  const std::string secret_part = secret.substr(head.size());
  ASSERT_GE(secret_part.size(), 40u);
  for (int col = 0; col < 13; ++col) {
    const std::string value = st.is_null(col) ? "" : st.blob(col);
    EXPECT_EQ(value.find(secret_part), std::string::npos) << "column " << col;
    EXPECT_NE(value, secret) << "column " << col;
  }
}

TEST(KeyStore, SeenByASecondConnection) {
  // The `keys` command and the server are separate processes on one file.
  TempDb tmp;
  auth::KeyStore a(tmp.path());
  auth::KeyStore b(tmp.path());
  auth::NewKey spec;
  spec.name = "shared";
  auto [key, secret] = a.create(spec);
  auth::ApiKey found;
  EXPECT_EQ(b.authenticate(secret, found), auth::KeyCheck::ok);
  a.revoke(key.id);
  // b serves the cached record until told the key changed (the server's
  // revocation poll does that)...
  EXPECT_EQ(b.revoked_ids(), std::vector<std::string>{key.id});
  b.evict(b.revoked_ids());
  // ... and then reads the revocation.
  EXPECT_EQ(b.authenticate(secret, found), auth::KeyCheck::revoked);
}

TEST(KeyStore, RevokingInThisProcessTakesEffectAtOnce) {
  TempDb tmp;
  auth::KeyStore s(tmp.path());
  auth::NewKey spec;
  spec.name = "k";
  auto [key, secret] = s.create(spec);
  auth::ApiKey found;
  ASSERT_EQ(s.authenticate(secret, found), auth::KeyCheck::ok);  // now cached
  s.revoke(key.id);
  EXPECT_EQ(s.authenticate(secret, found), auth::KeyCheck::revoked);
}

TEST(KeyStore, KeyIdParsing) {
  EXPECT_EQ(auth::KeyStore::key_id_of("syn_k123_secret"), "k123");
  EXPECT_EQ(auth::KeyStore::key_id_of("syn__secret"), "");
  EXPECT_EQ(auth::KeyStore::key_id_of("xyz_k1_s"), "");
  EXPECT_EQ(auth::KeyStore::key_id_of("syn_k1"), "");
}
