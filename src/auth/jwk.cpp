#include "auth/jwk.hpp"

#include <boost/json.hpp>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>

#include "core/crypto.hpp"

namespace synapse::auth {
namespace json = boost::json;

namespace {

constexpr int min_rsa_bits = 2048;
constexpr std::size_t max_kid_bytes = 256;

std::shared_ptr<evp_pkey_st> own(EVP_PKEY* k) { return std::shared_ptr<evp_pkey_st>(k, EVP_PKEY_free); }

const std::string* text_field(const json::object& o, std::string_view name, std::string& storage) {
  const json::value* v = o.if_contains(name);
  if (!v || !v->is_string()) return nullptr;
  storage = std::string(v->as_string());
  return &storage;
}

std::optional<std::string> b64_field(const json::object& o, std::string_view name) {
  std::string s;
  if (!text_field(o, name, s)) return std::nullopt;
  return core::base64url_decode(s);
}

// EVP_PKEY_fromdata for one key type; null on any failure.
EVP_PKEY* from_params(const char* type, OSSL_PARAM_BLD* bld) {
  OSSL_PARAM* params = OSSL_PARAM_BLD_to_param(bld);
  EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new_from_name(nullptr, type, nullptr);
  EVP_PKEY* key = nullptr;
  if (params && ctx && EVP_PKEY_fromdata_init(ctx) == 1) {
    if (EVP_PKEY_fromdata(ctx, &key, EVP_PKEY_PUBLIC_KEY, params) != 1) key = nullptr;
  }
  EVP_PKEY_CTX_free(ctx);
  OSSL_PARAM_free(params);
  return key;
}

EVP_PKEY* rsa_key(const std::string& n, const std::string& e) {
  BIGNUM* bn_n = BN_bin2bn(reinterpret_cast<const unsigned char*>(n.data()), static_cast<int>(n.size()), nullptr);
  BIGNUM* bn_e = BN_bin2bn(reinterpret_cast<const unsigned char*>(e.data()), static_cast<int>(e.size()), nullptr);
  OSSL_PARAM_BLD* bld = OSSL_PARAM_BLD_new();
  EVP_PKEY* key = nullptr;
  if (bn_n && bn_e && bld && OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn_n) == 1 &&
      OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, bn_e) == 1) {
    key = from_params("RSA", bld);
  }
  OSSL_PARAM_BLD_free(bld);
  BN_free(bn_n);
  BN_free(bn_e);
  return key;
}

EVP_PKEY* p256_key(const std::string& x, const std::string& y) {
  std::string point = "\x04" + x + y;  // uncompressed SEC1 point
  OSSL_PARAM_BLD* bld = OSSL_PARAM_BLD_new();
  EVP_PKEY* key = nullptr;
  if (bld && OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) == 1 &&
      OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, point.data(), point.size()) == 1) {
    // fromdata checks that the point is on the curve.
    key = from_params("EC", bld);
  }
  OSSL_PARAM_BLD_free(bld);
  return key;
}

bool digest_verify(EVP_PKEY* key, const EVP_MD* md, std::string_view input, const unsigned char* sig,
                   std::size_t sig_len) {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  bool ok = ctx && EVP_DigestVerifyInit(ctx, nullptr, md, nullptr, key) == 1 &&
            EVP_DigestVerify(ctx, sig, sig_len, reinterpret_cast<const unsigned char*>(input.data()),
                             input.size()) == 1;
  EVP_MD_CTX_free(ctx);
  return ok;
}

}  // namespace

std::optional<JwsAlg> jws_alg_from_name(std::string_view name) noexcept {
  // Exact, case-sensitive names (RFC 7518): "rs256" or "ES256K" are not these.
  if (name == "RS256") return JwsAlg::rs256;
  if (name == "ES256") return JwsAlg::es256;
  if (name == "EdDSA") return JwsAlg::eddsa;
  return std::nullopt;
}

std::string_view jws_alg_name(JwsAlg a) noexcept {
  switch (a) {
    case JwsAlg::rs256: return "RS256";
    case JwsAlg::es256: return "ES256";
    case JwsAlg::eddsa: return "EdDSA";
  }
  return "?";
}

const Jwk* KeySet::find(std::string_view kid) const {
  auto it = keys.find(std::string(kid));
  return it == keys.end() ? nullptr : &it->second;
}

std::optional<Jwk> parse_jwk(const json::object& o, std::string* why) {
  auto skip = [&](std::string text) -> std::optional<Jwk> {
    if (why) *why = std::move(text);
    return std::nullopt;
  };
  Jwk jwk;
  std::string kty, s;
  if (!text_field(o, "kid", jwk.kid) || jwk.kid.empty() || jwk.kid.size() > max_kid_bytes) {
    return skip("no kid (1..256 bytes)");
  }
  if (!text_field(o, "kty", kty)) return skip("no kty");
  if (o.contains("d") || o.contains("p") || o.contains("k")) return skip("private or symmetric key material");
  if (const json::value* use = o.if_contains("use"); use && !(use->is_string() && use->as_string() == "sig")) {
    return skip("use is not sig");
  }
  std::optional<JwsAlg> declared;
  if (const json::value* alg = o.if_contains("alg")) {
    if (!alg->is_string()) return skip("alg is not a string");
    declared = jws_alg_from_name(std::string_view(alg->as_string().data(), alg->as_string().size()));
    if (!declared) return skip("alg " + std::string(alg->as_string()) + " is not RS256, ES256 or EdDSA");
  }
  EVP_PKEY* key = nullptr;
  if (kty == "RSA") {
    jwk.alg = JwsAlg::rs256;
    auto n = b64_field(o, "n");
    auto e = b64_field(o, "e");
    if (!n || !e || n->empty() || e->empty() || e->size() > 8) return skip("RSA key without valid n and e");
    key = rsa_key(*n, *e);
    if (key && EVP_PKEY_get_bits(key) < min_rsa_bits) {
      EVP_PKEY_free(key);
      return skip("RSA modulus under 2048 bits");
    }
  } else if (kty == "EC") {
    jwk.alg = JwsAlg::es256;
    if (!text_field(o, "crv", s) || s != "P-256") return skip("EC curve is not P-256");
    auto x = b64_field(o, "x");
    auto y = b64_field(o, "y");
    if (!x || !y || x->size() != 32 || y->size() != 32) return skip("P-256 key without 32-byte x and y");
    key = p256_key(*x, *y);
  } else if (kty == "OKP") {
    jwk.alg = JwsAlg::eddsa;
    if (!text_field(o, "crv", s) || s != "Ed25519") return skip("OKP curve is not Ed25519");
    auto x = b64_field(o, "x");
    if (!x || x->size() != 32) return skip("Ed25519 key without a 32-byte x");
    key = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, nullptr, reinterpret_cast<const unsigned char*>(x->data()),
                                      x->size());
  } else {
    return skip("kty " + kty + " is not RSA, EC or OKP");
  }
  if (!key) return skip("OpenSSL refused the key material");
  jwk.key = own(key);
  if (declared && *declared != jwk.alg) return skip("alg does not match the key type");
  return jwk;
}

JwksParse parse_jwks(std::string_view text) {
  JwksParse r;
  json::parse_options opts;
  opts.max_depth = 8;
  boost::system::error_code ec;
  json::value v = json::parse(text, ec, {}, opts);
  if (ec || !v.is_object()) {
    r.error = "the JWKS is not a JSON object";
    return r;
  }
  const json::value* keys = v.as_object().if_contains("keys");
  if (!keys || !keys->is_array()) {
    r.error = "the JWKS has no \"keys\" array";
    return r;
  }
  auto set = std::make_shared<KeySet>();
  for (const auto& k : keys->as_array()) {
    std::string why;
    const json::object* o = k.if_object();
    if (!o) {
      // (Built with append: GCC 12 -O3 warns falsely on a literal here.)
      r.skipped.emplace_back().append("?: the entry is not an object");
      continue;
    }
    auto jwk = parse_jwk(*o, &why);
    if (!jwk) {
      const json::value* kid = o->if_contains("kid");
      r.skipped.push_back((kid && kid->is_string() ? std::string(kid->as_string()) : std::string("?")) + ": " + why);
      continue;
    }
    if (set->keys.contains(jwk->kid)) {
      // Two keys under one kid: which one a token means is ambiguous.
      r.skipped.push_back(jwk->kid + ": duplicate kid, both dropped");
      set->keys.erase(jwk->kid);
      continue;
    }
    std::string kid = jwk->kid;
    set->keys.emplace(std::move(kid), std::move(*jwk));
  }
  r.set = std::move(set);
  return r;
}

bool verify_jws(const Jwk& jwk, std::string_view input, std::string_view sig) {
  EVP_PKEY* key = jwk.key.get();
  if (!key) return false;
  const auto* s = reinterpret_cast<const unsigned char*>(sig.data());
  switch (jwk.alg) {
    case JwsAlg::rs256:
      // PKCS#1 v1.5 is OpenSSL's default RSA padding for DigestVerify.
      if (static_cast<int>(sig.size()) != EVP_PKEY_get_size(key)) return false;
      return digest_verify(key, EVP_sha256(), input, s, sig.size());
    case JwsAlg::es256: {
      if (sig.size() != 64) return false;
      ECDSA_SIG* es = ECDSA_SIG_new();
      BIGNUM* r = BN_bin2bn(s, 32, nullptr);
      BIGNUM* sv = BN_bin2bn(s + 32, 32, nullptr);
      if (!es || !r || !sv || ECDSA_SIG_set0(es, r, sv) != 1) {
        ECDSA_SIG_free(es);
        BN_free(r);
        BN_free(sv);
        return false;
      }
      unsigned char* der = nullptr;
      const int der_len = i2d_ECDSA_SIG(es, &der);
      ECDSA_SIG_free(es);
      bool ok = der_len > 0 && digest_verify(key, EVP_sha256(), input, der, static_cast<std::size_t>(der_len));
      OPENSSL_free(der);
      return ok;
    }
    case JwsAlg::eddsa:
      if (sig.size() != 64) return false;
      return digest_verify(key, nullptr, input, s, sig.size());
  }
  return false;
}

}  // namespace synapse::auth
