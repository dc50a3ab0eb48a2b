// The Lua scripts of the Redis broker. Each runs atomically in Redis, which
// is what makes offsets global and ordered: the offset is assigned, the
// message stored in the topic's stream and published to every node in one
// step, so every node receives a topic's messages in offset order.
//
// Keys (P = "synapse:<db>:"):
//   P o:<topic>   last offset          P e:<topic>   epoch
//   P h:<topic>   history stream, entry id "<offset>-1", fields m (message
//                 body), t (Redis ms), n (publishing node), c (publishing connection)
//   P p:<topic>   presence hash: phx_ref -> "<node>\n<agent as JSON>\n<meta JSON>"
//   P pv:<topic>  presence version (one per change)
//   P np:<node>   topics where the node has presence entries
//   P nodes       sorted set: node -> expiry (Redis ms)
//   P cc:<node>   the node's connection counts (see cluster/redis_connection_counts)
// Channel P c:<topic> carries
//   "m<epoch>\n<offset>\n<node>\n<connection>\n<body>"           a message
//   "p<version>\n<j|l>\n<node>\n<phx_ref>\n<agent JSON>\n<meta>"  a presence change
// A message body is opaque here: the publishing node encodes it and every
// node frames it for its clients when it delivers it (pubsub/publish_frame.hpp);
// no script knows the Phoenix format. Time always comes from Redis (TIME),
// so node clocks never disagree (the body's own timestamp is the publisher's
// _meta.ts, not used here).
#pragma once

namespace synapse::pubsub::lua {

inline constexpr const char* now_ms = R"(
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
)";

// KEYS o e h; ARGV body node connection history_size stream_ttl_ms
// candidate_epoch channel keep_ms. Returns {offset, epoch}.
inline constexpr const char* publish = R"(
local ep = redis.call('GET', KEYS[2])
if not ep then
  -- A new topic, or its history was lost: a new epoch, offsets from 1.
  ep = ARGV[6]
  redis.call('SET', KEYS[2], ep)
  redis.call('SET', KEYS[1], 0)
  redis.call('DEL', KEYS[3])
end
local off = redis.call('INCR', KEYS[1])
if tonumber(ARGV[4]) > 0 then
  redis.call('XADD', KEYS[3], 'MAXLEN', ARGV[4], off .. '-1', 'm', ARGV[1], 't', string.format('%d', now_ms()),
             'n', ARGV[2], 'c', ARGV[3])
  redis.call('PEXPIRE', KEYS[3], ARGV[5])
end
redis.call('PEXPIRE', KEYS[1], ARGV[8])
redis.call('PEXPIRE', KEYS[2], ARGV[8])
redis.call('PUBLISH', ARGV[7], 'm' .. ep .. '\n' .. off .. '\n' .. ARGV[2] .. '\n' .. ARGV[3] .. '\n' .. ARGV[1])
return {off, ep}
)";

// KEYS o e h; ARGV candidate_epoch recover(0|1) recover_offset
// recover_epoch history_ttl_ms(0 = forever) keep_ms.
// Returns {offset, epoch, recovered(0|1), body...}: when recovered, the
// bodies of offsets recover_offset+1 .. offset, in order, every one present.
inline constexpr const char* join = R"(
local ep = redis.call('GET', KEYS[2])
if not ep then
  ep = ARGV[1]
  redis.call('SET', KEYS[2], ep, 'PX', ARGV[6])
  redis.call('SET', KEYS[1], 0, 'PX', ARGV[6])
  redis.call('DEL', KEYS[3])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
  redis.call('PEXPIRE', KEYS[2], ARGV[6])
end
local off = tonumber(redis.call('GET', KEYS[1]) or '0')
local out = {off, ep, 0}
if ARGV[2] == '1' and ARGV[4] == ep then
  local from = tonumber(ARGV[3])
  if from == off then
    out[3] = 1
  elseif from < off then
    local entries = redis.call('XRANGE', KEYS[3], string.format('%d-1', from + 1), '+')
    if #entries == off - from and entries[1][1] == string.format('%d-1', from + 1) then
      local ttl = tonumber(ARGV[5])
      local oldest = tonumber(entries[1][2][4])
      if ttl <= 0 or now_ms() - oldest <= ttl then
        out[3] = 1
        for _, e in ipairs(entries) do out[#out + 1] = e[2][2] end
      end
    end
  end
end
return out
)";

// KEYS e h o; ARGV epoch first_offset candidate_epoch keep_ms. What a node
// missed while its link was down, read after it subscribed again:
// {epoch, id, body, node, connection, ...} for every stored entry of the
// topic's current epoch from first_offset on, or, when the epoch is no
// longer `epoch` (Redis lost its data and a new epoch began while the node
// was away), every stored entry of the new epoch from offset 1: the node's
// members missed the new epoch's start as well. {''} when the topic has no
// epoch yet (everything of the next one arrives live). A topic whose offset
// went back within its epoch (Redis restarted from older data) gets a new
// epoch here, so that no offset is reused under an epoch clients have seen.
inline constexpr const char* backfill = R"(
local ep = redis.call('GET', KEYS[1])
if not ep then return {''} end
local from = ARGV[2]
if ep ~= ARGV[1] then
  from = '1'
elseif tonumber(redis.call('GET', KEYS[3]) or '0') < tonumber(ARGV[2]) - 1 then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
  redis.call('SET', KEYS[3], 0, 'PX', ARGV[4])
  redis.call('DEL', KEYS[2])
  return {ARGV[3]}
end
local out = {ep}
for _, e in ipairs(redis.call('XRANGE', KEYS[2], from .. '-1', '+')) do
  local f = e[2]
  out[#out + 1] = e[1]
  out[#out + 1] = f[2]
  out[#out + 1] = f[6] or ''
  out[#out + 1] = f[8] or ''
end
return out
)";

// KEYS p pv. Returns {version, ref1, value1, ref2, value2, ...}.
inline constexpr const char* presence_snapshot = R"(
local all = redis.call('HGETALL', KEYS[1])
table.insert(all, 1, tonumber(redis.call('GET', KEYS[2]) or '0'))
return all
)";

// KEYS p pv np; ARGV ref node agent_json meta channel topic.
inline constexpr const char* track = R"(
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. '\n' .. ARGV[3] .. '\n' .. ARGV[4])
redis.call('SADD', KEYS[3], ARGV[6])
local v = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[5], 'p' .. v .. '\nj\n' .. ARGV[2] .. '\n' .. ARGV[1] .. '\n' .. ARGV[3] .. '\n' .. ARGV[4])
return v
)";

// KEYS p pv; ARGV ref node agent_json channel.
inline constexpr const char* untrack = R"(
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then
  local v = redis.call('INCR', KEYS[2])
  redis.call('PUBLISH', ARGV[4], 'p' .. v .. '\nl\n' .. ARGV[2] .. '\n' .. ARGV[1] .. '\n' .. ARGV[3] .. '\n')
end
return 1
)";

// KEYS nodes; ARGV node ttl_ms. Returns 1 when the node was not registered
// (first start, or it was reaped, or Redis lost its data).
inline constexpr const char* heartbeat = R"(
return redis.call('ZADD', KEYS[1], string.format('%d', now_ms() + tonumber(ARGV[2])), ARGV[1])
)";

// KEYS nodes; ARGV prefix. Removes every node whose heartbeat expired: its
// presence entries (publishing the leaves), its connection counts, itself.
// Returns the number of nodes removed.
inline constexpr const char* reap = R"(
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now_ms()))
for _, node in ipairs(dead) do
  local np = ARGV[1] .. 'np:' .. node
  for _, topic in ipairs(redis.call('SMEMBERS', np)) do
    local pk = ARGV[1] .. 'p:' .. topic
    local all = redis.call('HGETALL', pk)
    for i = 1, #all, 2 do
      local v = all[i + 1]
      local a = string.find(v, '\n', 1, true)
      if a and string.sub(v, 1, a - 1) == node then
        local b = string.find(v, '\n', a + 1, true)
        local agent = string.sub(v, a + 1, (b or 0) - 1)
        redis.call('HDEL', pk, all[i])
        local ver = redis.call('INCR', ARGV[1] .. 'pv:' .. topic)
        redis.call('PUBLISH', ARGV[1] .. 'c:' .. topic,
                   'p' .. ver .. '\nl\n' .. node .. '\n' .. all[i] .. '\n' .. agent .. '\n')
      end
    end
  end
  redis.call('DEL', np, ARGV[1] .. 'cc:' .. node)
  redis.call('ZREM', KEYS[1], node)
end
return #dead
)";

}  // namespace synapse::pubsub::lua
