// Lua scripts run by SHA1. The link loads every script on each connection
// (Link::preload), so EVALSHA finds them; a blocking call still falls back
// to EVAL if someone flushed the script cache.
#pragma once

#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include "redis/reply.hpp"

namespace synapse::redis {

class Link;

struct Script {
  explicit Script(std::string lua);
  std::string text;
  std::string sha;  // hex SHA1 of text
};

// EVALSHA. `cb` runs on the link's thread.
void eval(Link& link, const Script& s, std::vector<std::string> keys, std::vector<std::string> args,
          std::function<void(Reply)> cb);
// The same with a deadline (Link::command): `cb` runs once, on the link's
// thread, with the reply or a `lost` reply after `timeout`.
void eval(Link& link, const Script& s, std::vector<std::string> keys, std::vector<std::string> args,
          std::function<void(Reply)> cb, std::chrono::milliseconds timeout);
// The same, waiting for the reply (not on the link's thread, nor on an I/O
// thread: startup only).
Reply eval_call(Link& link, const Script& s, std::vector<std::string> keys, std::vector<std::string> args,
                std::chrono::milliseconds timeout);

}  // namespace synapse::redis
