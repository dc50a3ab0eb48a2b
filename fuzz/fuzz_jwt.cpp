// Fuzzes auth::verify_jwt and auth::sign_jwt (HS256 only).
//
// Three modes, chosen by the first byte (the rest of the input is read with
// FuzzedDataProvider, which takes integers from the end):
//   '!' ...          mutation: one of the tokens signed at start-up with the
//                    fuzz secret, edited by 3-byte ops (op, position, value):
//                    flip bits, insert, erase, truncate. It may verify only
//                    if it is byte-identical to a token that was signed.
//   '#' ...          round trip: claims derived from the bytes (sub, exp,
//                    iat, topics, tnt, kid) are signed and verified: ok iff
//                    sub is non-empty and exp is in the future, with the
//                    same claims back; another secret, or any flipped byte,
//                    never verifies.
//   anything else    the whole input is a token. Never crashes, and any
//                    status that means "signature checked" (ok, bad_claims,
//                    expired, not_yet_valid) requires that an independent
//                    HMAC-SHA256 (OpenSSL directly) over the first two parts
//                    with the fuzz secret equals the third part in canonical
//                    base64url, and that the header says alg HS256. A token
//                    that passes that check is never refused as
//                    bad_signature. The same token never verifies under
//                    another secret or an empty one.
#include <fuzzer/FuzzedDataProvider.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <algorithm>
#include <boost/json.hpp>
#include <cstdint>
#include <cstring>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "auth/jwt.hpp"
#include "fuzz_check.hpp"
#include "wire/utf8.hpp"

using namespace synapse::auth;
using synapse::fuzz::escaped;
namespace json = boost::json;

namespace {

// The fuzz secret. The JWT seeds in fuzz/corpus/fuzz_jwt were signed with it
// (fuzz/make_corpus.py); keep the two in step.
constexpr std::string_view secret = "synapse-fuzz-secret-0123456789abcdef";
constexpr std::int64_t now = 1'700'000'000;

std::string b64url(std::string_view data) {
  static constexpr char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string out;
  std::uint32_t acc = 0;
  int bits = 0;
  for (unsigned char c : data) {
    acc = (acc << 8) | c;
    bits += 8;
    while (bits >= 6) {
      bits -= 6;
      out.push_back(alphabet[(acc >> bits) & 63]);
    }
  }
  if (bits > 0) out.push_back(alphabet[(acc << (6 - bits)) & 63]);
  return out;
}

std::string hmac(std::string_view key, std::string_view data) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(data.data()),
       data.size(), out, &len);
  return std::string(reinterpret_cast<const char*>(out), len);
}

// Lenient base64url decoding (leftover bits ignored): enough to read a header.
std::string unb64url(std::string_view text) {
  std::string out;
  std::uint32_t acc = 0;
  int bits = 0;
  for (char c : text) {
    const char* p = std::strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", c);
    if (c == '\0' || !p) return {};
    acc = (acc << 6) | static_cast<std::uint32_t>(p - "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_");
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xFF));
    }
  }
  return out;
}

// Independent judgment: is `token` three parts, {"alg":"HS256"} (and no
// "crit") in the header, signed with `key`?
bool independently_valid(std::string_view token, std::string_view key) {
  if (std::count(token.begin(), token.end(), '.') != 2) return false;
  const auto dot1 = token.find('.');
  const auto dot2 = token.rfind('.');
  if (b64url(hmac(key, token.substr(0, dot2))) != token.substr(dot2 + 1)) return false;
  boost::system::error_code ec;
  const json::value header = json::parse(unb64url(token.substr(0, dot1)), ec);
  if (ec || !header.is_object()) return false;
  const json::value* alg = header.as_object().if_contains("alg");
  return alg && alg->is_string() && alg->as_string() == "HS256" && !header.as_object().contains("crit");
}

bool signature_was_checked(JwtStatus s) {
  return s == JwtStatus::ok || s == JwtStatus::bad_claims || s == JwtStatus::expired ||
         s == JwtStatus::not_yet_valid;
}

const std::vector<std::string>& signed_tokens() {
  static const std::vector<std::string> tokens = [] {
    std::vector<std::string> out;
    TokenClaims c;
    c.sub = "agent-1";
    c.exp = now + 3600;
    c.iat = now;
    out.push_back(sign_jwt(c, secret));
    c.has_topics = true;
    c.topics = {"room:*", "cortex:agent-1"};
    out.push_back(sign_jwt(c, secret));
    c.tenant = "acme";
    c.key_id = "key-42";
    out.push_back(sign_jwt(c, secret));
    c.sub = "\xc3\xa9\xe2\x80\xae\xf0\x9f\x98\x80";  // é, RTL override, emoji
    c.exp = INT64_MAX;
    c.iat = INT64_MIN;
    out.push_back(sign_jwt(c, secret));
    c.exp = now;  // expires exactly now: refused as expired
    out.push_back(sign_jwt(c, secret));
    return out;
  }();
  return tokens;
}

void check_token(std::string_view token) {
  const JwtResult r = verify_jwt(token, secret, now);
  if (signature_was_checked(r.status)) {
    FUZZ_CHECK(independently_valid(token, secret),
               "status " + std::string(describe(r.status)) + " for a token not signed with the secret: " + escaped(token));
  }
  if (r.status == JwtStatus::ok) {
    FUZZ_CHECK(!r.claims.sub.empty(), "ok without sub");
    FUZZ_CHECK(r.claims.exp > now, "ok with exp <= now");
  }
  if (r.status == JwtStatus::bad_signature) {
    FUZZ_CHECK(!independently_valid(token, secret), "a correctly signed HS256 token refused as bad_signature: " + escaped(token));
  }
  FUZZ_CHECK(verify_jwt(token, "", now).status != JwtStatus::ok, "verified with an empty secret");
  FUZZ_CHECK(verify_jwt(token, "another-secret", now).status != JwtStatus::ok, "verified with another secret");
}

void check_mutation(FuzzedDataProvider& in) {
  const auto& tokens = signed_tokens();
  std::string token = tokens[in.ConsumeIntegral<std::uint8_t>() % tokens.size()];
  while (in.remaining_bytes() >= 3 && !token.empty()) {
    const std::uint8_t op = in.ConsumeIntegral<std::uint8_t>();
    const std::size_t pos = in.ConsumeIntegral<std::uint8_t>() % token.size();
    const std::uint8_t val = in.ConsumeIntegral<std::uint8_t>();
    switch (op % 5) {
      case 0: token[pos] = static_cast<char>(token[pos] ^ (val ? val : 1)); break;
      case 1: token.insert(token.begin() + static_cast<std::ptrdiff_t>(pos), static_cast<char>(val)); break;
      case 2: token.erase(pos, 1); break;
      case 3: token.resize(pos); break;
      default: token[pos] = static_cast<char>(val); break;  // may leave it unchanged
    }
  }
  const JwtResult r = verify_jwt(token, secret, now);
  if (r.status == JwtStatus::ok) {
    FUZZ_CHECK(std::find(tokens.begin(), tokens.end(), token) != tokens.end(),
               "a mutated token verified: " + escaped(token));
  }
  check_token(token);
}

std::string utf8_string(FuzzedDataProvider& in, std::size_t max) {
  std::string s = in.ConsumeRandomLengthString(max);
  return synapse::wire::is_valid_utf8(s) ? s : std::string("x");
}

void check_round_trip(FuzzedDataProvider& in) {
  TokenClaims c;
  c.sub = utf8_string(in, 64);
  c.exp = in.ConsumeBool() ? now + in.ConsumeIntegralInRange<std::int64_t>(-10, 10) : in.ConsumeIntegral<std::int64_t>();
  c.iat = in.ConsumeIntegral<std::int64_t>();
  c.has_topics = in.ConsumeBool();
  if (c.has_topics) {
    const int n = in.ConsumeIntegralInRange(0, 4);
    for (int i = 0; i < n; ++i) c.topics.push_back(utf8_string(in, 32));
  }
  c.tenant = utf8_string(in, 16);
  c.key_id = utf8_string(in, 16);

  const std::string token = sign_jwt(c, secret);
  FUZZ_CHECK(independently_valid(token, secret), "sign_jwt made a token that is not HS256 with the secret");
  const JwtResult r = verify_jwt(token, secret, now);
  const JwtStatus expected = c.sub.empty() ? JwtStatus::bad_claims : c.exp <= now ? JwtStatus::expired : JwtStatus::ok;
  FUZZ_CHECK(r.status == expected, "signed token verified as " + std::string(describe(r.status)) + ": " + escaped(token));
  if (r.status == JwtStatus::ok) {
    FUZZ_CHECK(r.claims.sub == c.sub && r.claims.exp == c.exp && r.claims.iat == c.iat, "sub/exp/iat changed");
    FUZZ_CHECK(r.claims.has_topics == c.has_topics && r.claims.topics == c.topics, "topics changed");
    FUZZ_CHECK(r.claims.tenant == c.tenant && r.claims.key_id == c.key_id, "tnt/kid changed");
  }
  FUZZ_CHECK(verify_jwt(token, "another-secret", now).status == JwtStatus::bad_signature, "verified with another secret");
  // Any one byte changed: never ok (a change to an unused bit of the last
  // base64url character included: decoding is canonical).
  if (!token.empty()) {
    std::string bad = token;
    const std::size_t pos = in.ConsumeIntegral<std::uint16_t>() % bad.size();
    bad[pos] = static_cast<char>(bad[pos] ^ in.ConsumeIntegralInRange<std::uint8_t>(1, 255));
    FUZZ_CHECK(verify_jwt(bad, secret, now).status != JwtStatus::ok, "a token with a changed byte verified: " + escaped(bad));
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size > 0 && data[0] == '!') {
    FuzzedDataProvider in(data + 1, size - 1);
    check_mutation(in);
  } else if (size > 0 && data[0] == '#') {
    FuzzedDataProvider in(data + 1, size - 1);
    check_round_trip(in);
  } else {
    check_token(std::string_view(reinterpret_cast<const char*>(data), size));
  }
  return 0;
}
