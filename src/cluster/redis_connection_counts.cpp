#include "cluster/redis_connection_counts.hpp"

#include <spdlog/spdlog.h>

#include "redis/link.hpp"

namespace synapse::cluster {

namespace {

// KEYS nodes; ARGV prefix node ip_field ip_limit key_field key_limit.
// Returns 0 (counted), 1 (the IP is at its limit) or 2 (the key is).
constexpr const char* acquire_lua = R"(
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local nodes = redis.call('ZRANGEBYSCORE', KEYS[1], string.format('%d', now), '+inf')
local function total(f)
  local s = 0
  for _, n in ipairs(nodes) do s = s + tonumber(redis.call('HGET', ARGV[1] .. 'cc:' .. n, f) or '0') end
  return s
end
if ARGV[3] ~= '' and tonumber(ARGV[4]) > 0 and total(ARGV[3]) >= tonumber(ARGV[4]) then return 1 end
if ARGV[5] ~= '' and tonumber(ARGV[6]) > 0 and total(ARGV[5]) >= tonumber(ARGV[6]) then return 2 end
local mine = ARGV[1] .. 'cc:' .. ARGV[2]
if ARGV[3] ~= '' then redis.call('HINCRBY', mine, ARGV[3], 1) end
if ARGV[5] ~= '' then redis.call('HINCRBY', mine, ARGV[5], 1) end
return 0
)";

// KEYS cc:<node>; ARGV fields.
constexpr const char* release_lua = R"(
for _, f in ipairs(ARGV) do
  if redis.call('HINCRBY', KEYS[1], f, -1) <= 0 then redis.call('HDEL', KEYS[1], f) end
end
return 1
)";

// KEYS cc:<node>; ARGV field count field count ...
constexpr const char* replace_lua = R"(
redis.call('DEL', KEYS[1])
for i = 1, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
)";

}  // namespace

RedisConnectionCounts::RedisConnectionCounts(redis::Link& link, std::string prefix, std::string node_id,
                                             std::chrono::milliseconds timeout)
    : link_(link),
      prefix_(std::move(prefix)),
      node_id_(std::move(node_id)),
      hash_(prefix_ + "cc:" + node_id_),
      timeout_(timeout),
      acquire_(acquire_lua),
      release_(release_lua),
      replace_(replace_lua) {
  for (const auto* s : {&acquire_, &release_, &replace_}) link_.preload(s->text);
}

namespace {

limits::SharedCounts::Verdict verdict_of(const redis::Reply& r) {
  using Verdict = limits::SharedCounts::Verdict;
  if (!r.ok()) return Verdict::unavailable;
  switch (r.as_int()) {
    case 0:
      return Verdict::ok;
    case 1:
      return Verdict::ip_full;
    case 2:
      return Verdict::key_full;
    default:
      return Verdict::unavailable;
  }
}

}  // namespace

limits::SharedCounts::Verdict RedisConnectionCounts::acquire(const std::string& ip_field, std::int64_t ip_limit,
                                                             const std::string& key_field, std::int64_t key_limit) {
  return verdict_of(redis::eval_call(link_, acquire_, {prefix_ + "nodes"},
                                     {prefix_, node_id_, ip_field, std::to_string(ip_limit), key_field,
                                      std::to_string(key_limit)},
                                     timeout_));
}

void RedisConnectionCounts::acquire_async(const std::string& ip_field, std::int64_t ip_limit,
                                          const std::string& key_field, std::int64_t key_limit, AcquireDone done) {
  // No answer in time: admitted on the local counts (unavailable). The
  // script still runs once Redis reads it and counts the connection; the
  // permit's release takes it off again, as for a timely answer.
  redis::eval(
      link_, acquire_, {prefix_ + "nodes"},
      {prefix_, node_id_, ip_field, std::to_string(ip_limit), key_field, std::to_string(key_limit)},
      [done = std::move(done)](redis::Reply r) { done(verdict_of(r)); }, timeout_);
}

void RedisConnectionCounts::release(const std::string& ip_field, const std::string& key_field) {
  std::vector<std::string> fields;
  if (!ip_field.empty()) fields.push_back(ip_field);
  if (!key_field.empty()) fields.push_back(key_field);
  redis::eval(link_, release_, {hash_}, std::move(fields), {});
}

void RedisConnectionCounts::replace(std::vector<std::pair<std::string, std::int64_t>> counts) {
  std::vector<std::string> args;
  args.reserve(counts.size() * 2);
  for (auto& [field, n] : counts) {
    args.push_back(std::move(field));
    args.push_back(std::to_string(n));
  }
  redis::eval(link_, replace_, {hash_}, std::move(args), [](redis::Reply r) {
    if (!r.ok()) spdlog::warn("could not write this node's connection counts to Redis: {}", r.str);
  });
}

}  // namespace synapse::cluster
