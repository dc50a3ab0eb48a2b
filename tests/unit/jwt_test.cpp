// HS256 verification: every way a token can be wrong is refused.
#include <gtest/gtest.h>

#include "core/crypto.hpp"
#include "auth/jwt.hpp"

using namespace synapse::auth;
using namespace synapse::core;  // the crypto helpers (core/crypto.hpp)

namespace {
const std::string secret = "0123456789abcdef0123456789abcdef";
constexpr std::int64_t now = 1'800'000'000;

TokenClaims claims() {
  TokenClaims c;
  c.sub = "agent-1";
  c.iat = now;
  c.exp = now + 60;
  return c;
}

std::string forge(std::string_view header, std::string_view payload, std::string_view key) {
  std::string input = base64url_encode(header) + "." + base64url_encode(payload);
  const Digest sig = hmac_sha256(key, input);
  return input + "." + base64url_encode(as_view(sig));
}
}  // namespace

TEST(Jwt, RoundTrip) {
  TokenClaims c = claims();
  c.has_topics = true;
  c.topics = {"room:*"};
  c.tenant = "acme";
  c.key_id = "k1";
  const auto r = verify_jwt(sign_jwt(c, secret), secret, now);
  ASSERT_EQ(r.status, JwtStatus::ok);
  EXPECT_EQ(r.claims.sub, "agent-1");
  EXPECT_EQ(r.claims.exp, now + 60);
  EXPECT_TRUE(r.claims.has_topics);
  EXPECT_EQ(r.claims.topics, std::vector<std::string>{"room:*"});
  EXPECT_EQ(r.claims.tenant, "acme");
  EXPECT_EQ(r.claims.key_id, "k1");
}

TEST(Jwt, RefusesAlgNone) {
  const std::string payload = R"({"sub":"agent-1","exp":1800000060})";
  const std::string token = base64url_encode(R"({"alg":"none","typ":"JWT"})") + "." + base64url_encode(payload) + ".";
  EXPECT_EQ(verify_jwt(token, secret, now).status, JwtStatus::bad_algorithm);
  // ... also with an empty secret, the libjwt trap.
  EXPECT_NE(verify_jwt(token, "", now).status, JwtStatus::ok);
}

TEST(Jwt, RefusesOtherAlgorithmsEvenWhenSignedWithTheKey) {
  const std::string payload = R"({"sub":"agent-1","exp":1800000060})";
  EXPECT_EQ(verify_jwt(forge(R"({"alg":"HS512"})", payload, secret), secret, now).status, JwtStatus::bad_algorithm);
  EXPECT_EQ(verify_jwt(forge(R"({"alg":"RS256"})", payload, secret), secret, now).status, JwtStatus::bad_algorithm);
  EXPECT_EQ(verify_jwt(forge(R"({"typ":"JWT"})", payload, secret), secret, now).status, JwtStatus::bad_algorithm);
  EXPECT_EQ(verify_jwt(forge(R"({"alg":"hs256"})", payload, secret), secret, now).status, JwtStatus::bad_algorithm);
}

TEST(Jwt, RefusesWrongKey) {
  const std::string token = sign_jwt(claims(), "another-secret-another-secret-xx");
  EXPECT_EQ(verify_jwt(token, secret, now).status, JwtStatus::bad_signature);
}

TEST(Jwt, RefusesTamperedClaims) {
  std::string token = sign_jwt(claims(), secret);
  const auto d1 = token.find('.');
  const auto d2 = token.find('.', d1 + 1);
  const std::string other = base64url_encode(R"({"sub":"admin","exp":1800000060,"iat":1800000000})");
  const std::string tampered = token.substr(0, d1 + 1) + other + token.substr(d2);
  EXPECT_EQ(verify_jwt(tampered, secret, now).status, JwtStatus::bad_signature);
  // Flip one signature character.
  std::string flipped = token;
  flipped.back() = flipped.back() == 'A' ? 'B' : 'A';
  EXPECT_EQ(verify_jwt(flipped, secret, now).status, JwtStatus::bad_signature);
}

TEST(Jwt, RefusesExpiredAndNotYetValid) {
  TokenClaims c = claims();
  c.exp = now;  // exp == now is expired
  EXPECT_EQ(verify_jwt(sign_jwt(c, secret), secret, now).status, JwtStatus::expired);
  EXPECT_EQ(verify_jwt(forge(R"({"alg":"HS256"})", R"({"sub":"a","exp":1800000060,"nbf":1800000030})", secret), secret,
                       now)
                .status,
            JwtStatus::not_yet_valid);
}

TEST(Jwt, RequiresSubAndExp) {
  EXPECT_EQ(verify_jwt(forge(R"({"alg":"HS256"})", R"({"exp":1800000060})", secret), secret, now).status,
            JwtStatus::bad_claims);
  EXPECT_EQ(verify_jwt(forge(R"({"alg":"HS256"})", R"({"sub":"a"})", secret), secret, now).status,
            JwtStatus::bad_claims);
  EXPECT_EQ(verify_jwt(forge(R"({"alg":"HS256"})", R"({"sub":"a","exp":"soon"})", secret), secret, now).status,
            JwtStatus::bad_claims);
  EXPECT_EQ(verify_jwt(forge(R"({"alg":"HS256"})", R"({"sub":"","exp":1800000060})", secret), secret, now).status,
            JwtStatus::bad_claims);
  EXPECT_EQ(verify_jwt(forge(R"({"alg":"HS256"})", R"({"sub":"a","exp":1800000060,"topics":"room:*"})", secret),
                       secret, now)
                .status,
            JwtStatus::bad_claims);
}

TEST(Jwt, RefusesMalformed) {
  for (const char* t : {"", "a", "a.b", "a.b.c.d", "!!!.???.***", "e30.e30."}) {
    EXPECT_NE(verify_jwt(t, secret, now).status, JwtStatus::ok) << t;
  }
}

TEST(Jwt, EmptySecretVerifiesNothing) {
  EXPECT_EQ(verify_jwt(sign_jwt(claims(), ""), "", now).status, JwtStatus::bad_signature);
}

TEST(Base64url, RoundTripAndStrictness) {
  for (const std::string& s : std::vector<std::string>{"", "f", "fo", "foo", "foob", "fooba", "foobar", std::string("\x00\xff\x10", 3)}) {
    auto d = base64url_decode(base64url_encode(s));
    ASSERT_TRUE(d.has_value());
    EXPECT_EQ(*d, s);
  }
  EXPECT_FALSE(base64url_decode("Zg==").has_value());  // padding is not base64url here
  EXPECT_FALSE(base64url_decode("Zh").has_value());    // non-zero trailing bits
  EXPECT_FALSE(base64url_decode("a+b/").has_value());
}
