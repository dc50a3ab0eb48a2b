// JWK parsing and JWS verification per algorithm, with every trap: keys are
// generated here with OpenSSL, their JWKs built from the public parameters,
// and tokens signed with EVP_DigestSign.
#include <gtest/gtest.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>

#include <boost/json.hpp>

#include "core/crypto.hpp"
#include "auth/jwk.hpp"
#include "auth/jwt.hpp"

using namespace synapse::auth;
using namespace synapse::core;  // the crypto helpers (core/crypto.hpp)
namespace json = boost::json;

namespace {

constexpr std::int64_t now = 1'700'000'000;

std::string bn_bytes(EVP_PKEY* k, const char* name, std::size_t pad = 0) {
  BIGNUM* bn = nullptr;
  EXPECT_EQ(EVP_PKEY_get_bn_param(k, name, &bn), 1);
  std::string out(std::max<std::size_t>(pad, static_cast<std::size_t>(BN_num_bytes(bn))), '\0');
  BN_bn2binpad(bn, reinterpret_cast<unsigned char*>(out.data()), static_cast<int>(out.size()));
  BN_free(bn);
  return out;
}

struct TestKey {
  std::string alg;
  std::shared_ptr<EVP_PKEY> key;
  json::object jwk;

  static TestKey make(const std::string& alg, const std::string& kid) {
    TestKey t;
    t.alg = alg;
    EVP_PKEY* k = nullptr;
    if (alg == "RS256") k = EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", static_cast<size_t>(2048));
    if (alg == "ES256") k = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256");
    if (alg == "EdDSA") k = EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519");
    t.key.reset(k, EVP_PKEY_free);
    if (alg == "RS256") {
      t.jwk = {{"kty", "RSA"}, {"n", base64url_encode(bn_bytes(k, OSSL_PKEY_PARAM_RSA_N))},
               {"e", base64url_encode(bn_bytes(k, OSSL_PKEY_PARAM_RSA_E))}};
    } else if (alg == "ES256") {
      t.jwk = {{"kty", "EC"}, {"crv", "P-256"}, {"x", base64url_encode(bn_bytes(k, OSSL_PKEY_PARAM_EC_PUB_X, 32))},
               {"y", base64url_encode(bn_bytes(k, OSSL_PKEY_PARAM_EC_PUB_Y, 32))}};
    } else {
      unsigned char raw[32];
      size_t len = sizeof raw;
      EVP_PKEY_get_raw_public_key(k, raw, &len);
      t.jwk = {{"kty", "OKP"}, {"crv", "Ed25519"},
               {"x", base64url_encode(std::string_view(reinterpret_cast<char*>(raw), len))}};
    }
    t.jwk["kid"] = kid;
    t.jwk["alg"] = alg;
    return t;
  }

  std::string sign_raw(std::string_view input) const {
    EVP_MD_CTX* ctx = EVP_MD_CTX_new();
    EVP_DigestSignInit(ctx, nullptr, alg == "EdDSA" ? nullptr : EVP_sha256(), nullptr, key.get());
    size_t len = 0;
    EVP_DigestSign(ctx, nullptr, &len, reinterpret_cast<const unsigned char*>(input.data()), input.size());
    std::string sig(len, '\0');
    EVP_DigestSign(ctx, reinterpret_cast<unsigned char*>(sig.data()), &len,
                   reinterpret_cast<const unsigned char*>(input.data()), input.size());
    EVP_MD_CTX_free(ctx);
    sig.resize(len);
    if (alg != "ES256") return sig;
    // DER -> r||s (RFC 7518 3.4)
    const auto* p = reinterpret_cast<const unsigned char*>(sig.data());
    ECDSA_SIG* es = d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(sig.size()));
    std::string rs(64, '\0');
    BN_bn2binpad(ECDSA_SIG_get0_r(es), reinterpret_cast<unsigned char*>(rs.data()), 32);
    BN_bn2binpad(ECDSA_SIG_get0_s(es), reinterpret_cast<unsigned char*>(rs.data()) + 32, 32);
    ECDSA_SIG_free(es);
    return rs;
  }

  std::string token(const json::object& header, const json::object& claims) const {
    std::string input = base64url_encode(json::serialize(header)) + "." + base64url_encode(json::serialize(claims));
    return input + "." + base64url_encode(sign_raw(input));
  }
  std::string token(const json::object& claims) const {
    return token({{"alg", alg}, {"kid", std::string(jwk.at("kid").as_string())}}, claims);
  }
};

json::object claims(std::int64_t exp = now + 600) {
  return {{"sub", "alice"}, {"exp", exp}, {"iss", "https://idp"}, {"aud", "synapse"}};
}

std::shared_ptr<const KeySet> set_of(std::initializer_list<json::object> jwks) {
  json::array keys;
  for (const auto& j : jwks) keys.push_back(j);
  auto p = parse_jwks(json::serialize(json::object{{"keys", keys}}));
  EXPECT_TRUE(p.set) << p.error;
  return p.set;
}

IdpOptions idp() { return {"https://idp", "synapse", 30}; }

class PerAlg : public ::testing::TestWithParam<const char*> {};

}  // namespace

TEST_P(PerAlg, VerifiesAndRefusesTampering) {
  const TestKey k = TestKey::make(GetParam(), "k1");
  auto set = set_of({k.jwk});
  ASSERT_NE(set->find("k1"), nullptr);
  const std::string tok = k.token(claims());
  auto r = verify_token(tok, "", set.get(), idp(), now);
  ASSERT_EQ(r.status, JwtStatus::ok) << describe(r.status);
  EXPECT_EQ(r.claims.sub, "alice");
  EXPECT_TRUE(r.claims.from_idp);
  // A flipped byte in the signature, and a payload changed under it.
  std::string bad = tok;
  bad[bad.size() - 3] = bad[bad.size() - 3] == 'A' ? 'B' : 'A';
  EXPECT_EQ(verify_token(bad, "", set.get(), idp(), now).status, JwtStatus::bad_signature);
  const auto d1 = tok.find('.'), d2 = tok.rfind('.');
  json::object forged = claims();
  forged["sub"] = "admin";
  const std::string swapped =
      tok.substr(0, d1 + 1) + base64url_encode(json::serialize(forged)) + tok.substr(d2);
  EXPECT_EQ(verify_token(swapped, "", set.get(), idp(), now).status, JwtStatus::bad_signature);
  // Truncated and empty signatures.
  EXPECT_EQ(verify_token(tok.substr(0, d2 + 1), "", set.get(), idp(), now).status, JwtStatus::bad_signature);
  EXPECT_EQ(verify_token(tok.substr(0, tok.size() - 4), "", set.get(), idp(), now).status, JwtStatus::bad_signature);
  // Without a key set, the algorithm is not accepted at all (HS256 only).
  EXPECT_EQ(verify_token(tok, "secret-secret-secret-secret-secret", nullptr, idp(), now).status,
            JwtStatus::bad_algorithm);
  EXPECT_EQ(verify_jwt(tok, "secret", now).status, JwtStatus::bad_algorithm);
}

INSTANTIATE_TEST_SUITE_P(Algorithms, PerAlg, ::testing::Values("RS256", "ES256", "EdDSA"));

TEST(Jwk, IssuerAudienceLeeway) {
  const TestKey k = TestKey::make("ES256", "k");
  auto set = set_of({k.jwk});
  auto with = [&](const char* field, json::value v) {
    json::object c = claims();
    if (v.is_null()) {
      c.erase(field);
    } else {
      c[field] = v;
    }
    return verify_token(k.token(c), "", set.get(), idp(), now).status;
  };
  EXPECT_EQ(with("iss", "https://other"), JwtStatus::bad_issuer);
  EXPECT_EQ(with("iss", nullptr), JwtStatus::bad_issuer);
  EXPECT_EQ(with("iss", 5), JwtStatus::bad_issuer);
  EXPECT_EQ(with("aud", "other"), JwtStatus::bad_audience);
  EXPECT_EQ(with("aud", nullptr), JwtStatus::bad_audience);
  EXPECT_EQ(with("aud", json::array{"a", "synapse"}), JwtStatus::ok);
  EXPECT_EQ(with("aud", json::array{"a", 1}), JwtStatus::bad_audience);
  EXPECT_EQ(with("exp", now - 10), JwtStatus::ok);  // within the 30 s leeway
  EXPECT_EQ(with("exp", now - 31), JwtStatus::expired);
  EXPECT_EQ(with("nbf", now + 20), JwtStatus::ok);
  EXPECT_EQ(with("nbf", now + 40), JwtStatus::not_yet_valid);
  EXPECT_EQ(with("sub", ""), JwtStatus::bad_claims);
  EXPECT_EQ(with("caps", "everything"), JwtStatus::bad_claims);
  // A payload kid never names one of our API keys for an IdP token.
  json::object c = claims();
  c["kid"] = "kadmin";
  auto r = verify_token(k.token(c), "", set.get(), idp(), now);
  EXPECT_EQ(r.status, JwtStatus::ok);
  EXPECT_TRUE(r.claims.key_id.empty());
}

TEST(Jwk, AlgorithmTraps) {
  const TestKey rs = TestKey::make("RS256", "rs");
  const TestKey es = TestKey::make("ES256", "es");
  auto set = set_of({rs.jwk, es.jwk});
  const std::string secret(48, 's');
  // alg none / unknown / case variants.
  const std::string payload = base64url_encode(json::serialize(claims()));
  for (const char* alg : {"none", "None", "NONE", "rs256", "RS384", "PS256", "ES384", "ES256K", "Ed25519", "HS512"}) {
    const std::string h = base64url_encode(json::serialize(json::object{{"alg", alg}, {"kid", "rs"}}));
    EXPECT_NE(verify_token(h + "." + payload + ".", secret, set.get(), idp(), now).status, JwtStatus::ok) << alg;
    EXPECT_NE(verify_token(rs.token({{"alg", alg}, {"kid", "rs"}}, claims()), secret, set.get(), idp(), now).status,
              JwtStatus::ok)
        << alg;
  }
  // The header's alg must match its key: an ES256 signature under the RSA kid,
  // an RS256 signature under the EC kid.
  EXPECT_EQ(verify_token(es.token({{"alg", "ES256"}, {"kid", "rs"}}, claims()), "", set.get(), idp(), now).status,
            JwtStatus::bad_algorithm);
  EXPECT_EQ(verify_token(rs.token({{"alg", "RS256"}, {"kid", "es"}}, claims()), "", set.get(), idp(), now).status,
            JwtStatus::bad_algorithm);
  // HS256 is checked with our secret only, never with key material from the JWKS.
  const std::string n = std::string(rs.jwk.at("n").as_string());
  const std::string h = base64url_encode(R"({"alg":"HS256","kid":"rs"})");
  const std::string input = h + "." + payload;
  const std::string forged = input + "." + base64url_encode(as_view(hmac_sha256(n, input)));
  EXPECT_EQ(verify_token(forged, secret, set.get(), idp(), now).status, JwtStatus::bad_signature);
  // kid as a path or URL is only a lookup key; a missing kid is unknown.
  for (const char* kid : {"../../etc/passwd", "/etc/passwd", "http://127.0.0.1/x.json", "file:///etc/passwd", ""}) {
    EXPECT_EQ(verify_token(rs.token({{"alg", "RS256"}, {"kid", kid}}, claims()), "", set.get(), idp(), now).status,
              JwtStatus::unknown_key)
        << kid;
  }
  EXPECT_EQ(verify_token(rs.token({{"alg", "RS256"}}, claims()), "", set.get(), idp(), now).status,
            JwtStatus::unknown_key);
  // jku / x5u / jwk in the header are never used: a key of the attacker's
  // under our kid fails on the signature.
  const TestKey evil = TestKey::make("RS256", "rs");
  for (const char* field : {"jku", "x5u"}) {
    EXPECT_EQ(verify_token(evil.token({{"alg", "RS256"}, {"kid", "rs"}, {field, "http://127.0.0.1:1/evil"}}, claims()),
                           "", set.get(), idp(), now)
                  .status,
              JwtStatus::bad_signature);
  }
  EXPECT_EQ(verify_token(evil.token({{"alg", "RS256"}, {"kid", "rs"}, {"jwk", evil.jwk}}, claims()), "", set.get(),
                         idp(), now)
                .status,
            JwtStatus::bad_signature);
  EXPECT_EQ(verify_token(rs.token({{"alg", "RS256"}, {"kid", "rs"}, {"crit", json::array{"exp"}}}, claims()), "",
                         set.get(), idp(), now)
                .status,
            JwtStatus::bad_algorithm);
}

TEST(Jwk, UnusableKeysAreSkipped) {
  const TestKey rs = TestKey::make("RS256", "good");
  std::string why;
  auto skip = [&](json::object j) {
    why.clear();
    return !parse_jwk(j, &why).has_value();
  };
  json::object j = rs.jwk;
  EXPECT_FALSE(skip(j));
  j.erase("kid");
  EXPECT_TRUE(skip(j));
  EXPECT_TRUE(skip({{"kty", "oct"}, {"kid", "s"}, {"k", base64url_encode("secret")}}));
  j = rs.jwk;
  j["d"] = "AAAA";
  EXPECT_TRUE(skip(j));  // private material
  j = rs.jwk;
  j["use"] = "enc";
  EXPECT_TRUE(skip(j));
  j = rs.jwk;
  j["alg"] = "ES256";
  EXPECT_TRUE(skip(j));  // alg disagrees with kty
  j = rs.jwk;
  j["alg"] = "HS256";
  EXPECT_TRUE(skip(j));
  j = rs.jwk;
  j["n"] = base64url_encode(std::string(128, '\xff'));  // 1024-bit modulus
  EXPECT_TRUE(skip(j));
  EXPECT_NE(why.find("2048"), std::string::npos);
  const TestKey es = TestKey::make("ES256", "ec");
  j = es.jwk;
  j["crv"] = "P-384";
  EXPECT_TRUE(skip(j));
  j = es.jwk;
  j["y"] = j["x"];  // not on the curve
  EXPECT_TRUE(skip(j));
  j = es.jwk;
  j["x"] = base64url_encode(std::string(31, 'a'));
  EXPECT_TRUE(skip(j));
  const TestKey ed = TestKey::make("EdDSA", "ed");
  j = ed.jwk;
  j["crv"] = "Ed448";
  EXPECT_TRUE(skip(j));
  j = ed.jwk;
  j["x"] = "not base64url!";
  EXPECT_TRUE(skip(j));
  // Documents: not an object, no keys array; duplicate kids drop both.
  EXPECT_FALSE(parse_jwks("[]").set);
  EXPECT_FALSE(parse_jwks(R"({"keys": {}})").set);
  EXPECT_FALSE(parse_jwks("garbage").set);
  auto twice = parse_jwks(json::serialize(json::object{{"keys", json::array{rs.jwk, rs.jwk, es.jwk}}}));
  ASSERT_TRUE(twice.set);
  EXPECT_EQ(twice.set->find("good"), nullptr);
  EXPECT_NE(twice.set->find("ec"), nullptr);
}

TEST(Jwk, Hs256Unchanged) {
  TokenClaims c;
  c.sub = "a";
  c.exp = now + 60;
  c.key_id = "k1";
  const std::string secret(48, 'x');
  const std::string tok = sign_jwt(c, secret);
  const TestKey rs = TestKey::make("RS256", "rs");
  auto set = set_of({rs.jwk});
  auto r = verify_token(tok, secret, set.get(), idp(), now);
  EXPECT_EQ(r.status, JwtStatus::ok);
  EXPECT_FALSE(r.claims.from_idp);
  EXPECT_EQ(r.claims.key_id, "k1");  // HS256 tokens keep their minting key
  // No leeway and no iss/aud for HS256, as before.
  c.exp = now - 1;
  EXPECT_EQ(verify_token(sign_jwt(c, secret), secret, set.get(), idp(), now).status, JwtStatus::expired);
}
